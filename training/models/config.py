"""Frozen, validated configs of the model components, composed into one ModelConfig.

A ModelConfig is stored in every checkpoint (`to_dict`) so that a model can be rebuilt from its own
artifact (`from_dict`). Every field is checked on construction; errors name the field and the value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from twin.errors import InvalidInput
from twin.resize import RESIZE_MODES

__all__ = ["BIAS_INITS", "CORE_KINDS", "POSITION_INITS", "CoreConfig", "ModelConfig", "ReadoutConfig"]

CORE_KINDS = ("cnn", "linear", "resnet")
BIAS_INITS = ("zero", "mean")
POSITION_INITS = ("random", "data")


def check_int(obj: object, name: str, minimum: int) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{name}: {value!r}; expected an integer >= {minimum}")


def check_correlation_rounds(value: object) -> None:
    """correlation_rounds (a model's or a training config's): None, or an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidInput(f"correlation_rounds: {value!r}; expected an integer >= 1, or None (throughout)")


def check_float(obj: object, name: str, low: float, high: float, *, open_low: bool = False) -> None:
    """A finite number in [low, high] (or (low, high] with open_low; a high of inf is open, so infinity
    is refused, which as a weight, scale or spread would make the loss or a step infinite); ints are
    accepted and stored as floats."""
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name}: {value!r}; expected a number")
    above = value > low if open_low else value >= low
    if not (above and value <= high and math.isfinite(value)):
        bracket = "(" if open_low else "["
        close = ")" if math.isinf(high) else "]"
        raise InvalidInput(f"{name}: {value!r}; expected a number in {bracket}{low}, {high}{close}")
    object.__setattr__(obj, name, float(value))


def _check_bool(obj: object, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name}: {value!r}; expected True or False")


def _input_channels(centered: bool, gradients: bool, behavior: bool) -> int:
    """The image, its centred copy (1), its gradients (2), the behaviour planes (3): see ModelConfig."""
    return 1 + int(centered) + 2 * int(gradients) + 3 * int(behavior)


def _from_mapping(cls: type, data: Any, where: str) -> Any:
    """cls(**data), refusing unknown keys (never silently dropped) and non-mappings."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{where}: {data!r}; expected a mapping of {cls.__name__} fields")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(f"{where}: unknown fields {unknown}; expected some of {sorted(known)}")
    return cls(**data)


@dataclass(frozen=True)
class CoreConfig:
    """The shared feature extractor: the SENSORIUM baseline core (Lurz et al. 2021), a linear twin, a ResNet.

    Every kind starts with conv input_kernel (stride input_stride, unpadded unless pad_input), batch norm
    (and ELU unless linear); the Laplace penalty (laplace_weight) smooths this first conv's kernels.
    kind "cnn": then layers-1 hidden_kernel convs with 'same' padding (depthwise-separable if depthwise);
    batch norm and ELU after each.
    kind "linear": the same layers without any nonlinearity (the LN baseline's core).
    kind "resnet": then layers-1 residual blocks conv-BN-ELU-dropout-conv-BN, + skip, ELU (the
    SENSORIUM winners' ResNet-style cores with ELU and dropout; convs as in "cnn").
    residual: identity skips around the hidden layers / blocks; None (the default) means True for
    "resnet" and False otherwise, so a stored config always holds the resolved bool.
    input_stride: the winners used a strided 4x4 first conv on the 144 x 256 images instead of resizing;
    on our 36 x 64 images stride 1 keeps the baseline's feature resolution.
    normalization: divide the first layer's linear responses (after batch norm, before ELU) by the
    energy of all its channels pooled over a normalization_kernel x normalization_kernel window
    (core.DivisiveNormalization; not in the baseline).
    """

    kind: str = "cnn"
    in_channels: int = 1
    channels: int = 64
    layers: int = 4
    input_kernel: int = 9
    hidden_kernel: int = 7
    depthwise: bool = True
    input_stride: int = 1
    pad_input: bool = False
    dropout: float = 0.0
    residual: bool | None = None
    laplace_weight: float = 6.3831
    batch_norm_momentum: float = 0.1
    normalization: bool = False
    normalization_kernel: int = 13

    def __post_init__(self) -> None:
        if self.kind not in CORE_KINDS:
            raise InvalidInput(f"kind: {self.kind!r}; expected one of {list(CORE_KINDS)}")
        if self.residual is None:
            object.__setattr__(self, "residual", self.kind == "resnet")
        for name in (
            "in_channels",
            "channels",
            "layers",
            "input_kernel",
            "hidden_kernel",
            "input_stride",
            "normalization_kernel",
        ):
            check_int(self, name, 1)
        for name in ("hidden_kernel", "normalization_kernel"):
            if getattr(self, name) % 2 == 0:
                raise InvalidInput(f"{name}: {getattr(self, name)}; expected an odd size ('same' padding)")
        for name in ("depthwise", "pad_input", "residual", "normalization"):
            _check_bool(self, name)
        if self.pad_input and self.input_kernel % 2 == 0:
            raise InvalidInput(f"input_kernel: {self.input_kernel}; expected an odd size with pad_input=True")
        check_float(self, "dropout", 0.0, 1.0)
        if self.dropout == 1.0:
            raise InvalidInput("dropout: 1.0; expected a probability in [0, 1)")
        check_float(self, "laplace_weight", 0.0, float("inf"))
        check_float(self, "batch_norm_momentum", 0.0, 1.0, open_low=True)


@dataclass(frozen=True)
class ReadoutConfig:
    """The per-recording full Gaussian readout (neuralpredictors FullGaussian2d, gauss_type 'full').

    use_coordinates: predict each neuron's position from its cortical (x, y) with a shared MLP
    2 -> position_hidden -> 2 (the 'cortex' grid_mean_predictor); otherwise learn positions directly.
    bias_init: "zero" as the SENSORIUM 2022 baseline (it passes no mean activity, so neuralpredictors
    fills the bias with 0: predictions start at ELU(0) + 1 = 1), or "mean": bias = the recording's mean
    response, neuralpredictors' initialize_bias(mean_activity) (no inverse of ELU + 1).
    position_init: "random" as the baseline (neuralpredictors' initialisation: a random position map,
    or U(-init_mu_range, init_mu_range)), or "data": the positions start at the receptive-field centres
    estimated from the recording's training trials (training.rf_centers), through the map of cortical
    coordinates when use_coordinates (a robust fit of the MLP to them), else directly.
    offset_weight: None (the default) -> with use_coordinates, each position is the map's alone; a weight
    w >= 0 -> each neuron's position is the map's plus its own offset (start 0, or the clarity-weighted
    residual of the map's fit with position_init "data"), and w * sum(offset^2) joins the regularizer: a
    Gaussian prior that keeps the map for neurons whose own trials cannot place them and lets the others
    leave it (w = 0: free positions starting on the map). Needs use_coordinates.
    position_warmup: the first this many epochs train with the positions held where they started (the
    map's MLP, the offsets, or the free positions; the Gaussians' spread still learns): the gradient a
    still-random core sends them says nothing of where a neuron looks, and would move positions estimated
    from the data (position_init "data") before the core can confirm them. 0 (the baseline): from the start.
    position_lr_scale: the learning rate of those position parameters as a multiple of the trainer's (their
    own Adam parameter group; learning-rate decay scales it alike). The map's MLP moves every neuron at
    once by up to a step of every weight, a free position one neuron by up to a step; below 1 the map moves
    more slowly than the core and features it is placed by. 1 (the baseline): one learning rate for all.
    """

    l1_weight: float = 0.0076
    init_sigma: float = 0.1
    init_mu_range: float = 0.3
    position_hidden: int = 30
    use_coordinates: bool = True
    bias_init: str = "zero"
    position_init: str = "random"
    offset_weight: float | None = None
    position_warmup: int = 0
    position_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        check_float(self, "l1_weight", 0.0, float("inf"))
        check_int(self, "position_warmup", 0)
        check_float(self, "position_lr_scale", 0.0, float("inf"), open_low=True)
        check_float(self, "init_sigma", 0.0, float("inf"), open_low=True)
        check_float(self, "init_mu_range", 0.0, 1.0, open_low=True)
        check_int(self, "position_hidden", 1)
        _check_bool(self, "use_coordinates")
        if self.bias_init not in BIAS_INITS:
            raise InvalidInput(f"bias_init: {self.bias_init!r}; expected one of {list(BIAS_INITS)}")
        if self.position_init not in POSITION_INITS:
            raise InvalidInput(
                f"position_init: {self.position_init!r}; expected one of {list(POSITION_INITS)}"
            )
        if self.offset_weight is not None:
            check_float(self, "offset_weight", 0.0, float("inf"))
            if not self.use_coordinates:
                raise InvalidInput(
                    f"offset_weight: {self.offset_weight!r}; expected None with use_coordinates False "
                    "(offsets are added to the positions of the cortical map)"
                )


@dataclass(frozen=True)
class ModelConfig:
    """A whole model: core, readout, which derived and behavioural inputs it uses, and its input resolution.

    The model takes only images (B, 1, H, W) (+ behaviour, pupil centre); extra core channels are
    computed inside it, in this order after the image (so core.in_channels must count them):
    input_centered: + 1, the image minus its own mean, divided by its own std (winners' "centred copy").
    input_gradients: + 2, Sobel x / y gradients of the image (winners' gradient channels).
    behavior_channels: + 3, the behaviour values as constant planes (the SENSORIUM+ baseline).
    shifter: the pupil centre moves every readout position (the SENSORIUM+ baseline).
    modulator: a per-recording MLP behaviour (3) -> modulator_hidden -> one gain per neuron multiplies
    the predicted rate (the winners' modulator, from behaviour only: our trials carry no time order).
    image_shape: (H, W) of the images the model takes (the baseline's 36 x 64).
    input_resize: how a recording's images reach image_shape (twin.resize): "bilinear" without
    anti-aliasing as the baseline (SENSORIUM.md §2), or "area", averaging each output pixel's footprint so
    that detail finer than the model's pixels does not alias into it (the winners' reason for a strided
    first conv on the full-resolution images instead of the baseline's resize).
    correlation_weight: its loss, Poisson + correlation_weight * (1 - per-neuron correlation over the
    batch) (the winners' loss; 0: the baselines' Poisson loss alone). A training config may override it.
    correlation_rounds: how long the correlation term stays in the loss, in learning-rate rounds (round 1
    runs until the first decay of the learning rate, round 2 until the second, ...); None: throughout. The
    term costs at the end (bench/README.md "Core form"), so 1 keeps it until the validation correlation first
    plateaus and trains on the Poisson loss alone from there.
    """

    name: str
    core: CoreConfig
    readout: ReadoutConfig
    behavior_channels: bool = False
    shifter: bool = False
    modulator: bool = False
    image_shape: tuple[int, int] = (36, 64)
    input_gradients: bool = False
    input_centered: bool = False
    modulator_hidden: int = 16
    correlation_weight: float = 0.0
    input_resize: str = "bilinear"
    correlation_rounds: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInput(f"name: {self.name!r}; expected a non-empty string")
        if not isinstance(self.core, CoreConfig):
            raise InvalidInput(f"core: {self.core!r}; expected a CoreConfig")
        if not isinstance(self.readout, ReadoutConfig):
            raise InvalidInput(f"readout: {self.readout!r}; expected a ReadoutConfig")
        for name in ("behavior_channels", "shifter", "modulator", "input_gradients", "input_centered"):
            _check_bool(self, name)
        check_int(self, "modulator_hidden", 1)
        check_float(self, "correlation_weight", 0.0, float("inf"))
        check_correlation_rounds(self.correlation_rounds)
        if self.input_resize not in RESIZE_MODES:
            raise InvalidInput(f"input_resize: {self.input_resize!r}; expected one of {list(RESIZE_MODES)}")
        shape = self.image_shape
        if (
            not isinstance(shape, tuple | list)
            or len(shape) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)
        ):
            raise InvalidInput(f"image_shape: {shape!r}; expected (height, width), two integers >= 1")
        object.__setattr__(self, "image_shape", (int(shape[0]), int(shape[1])))
        if self.core.in_channels != self.in_channels:
            parts = ["1 image channel"]
            parts += ["1 centred copy"] if self.input_centered else []
            parts += ["2 gradient channels"] if self.input_gradients else []
            parts += ["3 behaviour channels"] if self.behavior_channels else []
            raise InvalidInput(
                f"core.in_channels: {self.core.in_channels}; "
                f"expected {self.in_channels} ({' + '.join(parts)})"
            )

    @property
    def in_channels(self) -> int:
        """Channels the core receives: the image, its derived channels, and the behaviour planes."""
        return _input_channels(self.input_centered, self.input_gradients, self.behavior_channels)

    def with_inputs(self, **inputs: bool) -> ModelConfig:
        """This model with some of input_centered, input_gradients, behavior_channels changed and its
        core's in_channels following them (`replace` alone refuses the mismatch)."""
        known = ("input_centered", "input_gradients", "behavior_channels")
        for name, value in inputs.items():
            if name not in known:
                raise InvalidInput(f"{name}: not an input channel field; expected one of {list(known)}")
            if not isinstance(value, bool):
                raise InvalidInput(f"{name}: {value!r}; expected True or False")
        flags = [inputs.get(name, getattr(self, name)) for name in known]
        core = replace(self.core, in_channels=_input_channels(*flags))
        return replace(self, core=core, **inputs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (nested dicts for core and readout)."""
        out = asdict(self)
        out["image_shape"] = list(self.image_shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown fields raise rather than being dropped, missing ones default.

        Dicts stored before a field existed load with its default (which keeps their model unchanged).
        """
        if not isinstance(data, dict):
            raise InvalidInput(f"model config: {data!r}; expected a mapping")
        values = dict(data)
        if "core" in values:
            values["core"] = _from_mapping(CoreConfig, values["core"], "core")
        if "readout" in values:
            values["readout"] = _from_mapping(ReadoutConfig, values["readout"], "readout")
        if isinstance(values.get("image_shape"), list):
            values["image_shape"] = tuple(values["image_shape"])
        return _from_mapping(cls, values, "model config")
