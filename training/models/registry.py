"""Named model configurations, registered explicitly; `build` turns a name or a config into a Twin.

The baselines follow the SENSORIUM 2022 reference configs (sinzlab/sensorium notebooks, model_fn
stacked_core_full_gauss_readout): 64 channels, 9x9 input conv unpadded, 7x7 depth-separable hidden
layers, Laplace weight 6.3831, readout L1 0.0076, init_sigma 0.1, init_mu_range 0.3, cortex position
MLP with 30 hidden units and final tanh, readout from the last layer only (stack=-1).
`twin` and `twin_behavior` keep that readout and add the SENSORIUM winners' ingredients (SENSORIUM.md §5),
each a config field so that an ablation can switch it off.
"""

from __future__ import annotations

from collections.abc import Callable

from training.models.config import CoreConfig, ModelConfig, ReadoutConfig
from training.models.model import RecordingShape, Twin
from twin.errors import InvalidInput

__all__ = ["available", "build", "get_config", "register"]

_REGISTRY: dict[str, Callable[[], ModelConfig]] = {}

# The reference passes momentum=0.9 straight to torch.nn.BatchNorm2d (stacked_core_full_gauss_readout's
# default; Stacked2dCore does not convert it), i.e. 0.9 in PyTorch's convention: the running statistics
# follow the latest batches closely.
REFERENCE_BN_MOMENTUM = 0.9


def register(name: str) -> Callable[[Callable[[], ModelConfig]], Callable[[], ModelConfig]]:
    """Decorator adding a config factory under `name`; a name can be registered once."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"name: {name!r}; expected a non-empty string")

    def decorator(factory: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        if name in _REGISTRY:
            raise InvalidInput(f"name: {name!r} is already registered; expected a new name")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    """The config registered under `name`."""
    if name not in _REGISTRY:
        raise InvalidInput(f"model: {name!r} is not registered; expected one of {available()}")
    return _REGISTRY[name]()


def build(model: str | ModelConfig, recordings: dict[str, RecordingShape]) -> Twin:
    """A freshly initialized Twin from a registered name or a config."""
    config = get_config(model) if isinstance(model, str) else model
    if not isinstance(config, ModelConfig):
        raise InvalidInput(f"model: {model!r}; expected a registered name or a ModelConfig")
    return Twin(config, recordings)


@register("ln")
def ln() -> ModelConfig:
    """SENSORIUM LN baseline: the baseline with a linear 3-layer core (no ELUs), ELU + 1 output."""
    core = CoreConfig(kind="linear", layers=3, batch_norm_momentum=REFERENCE_BN_MOMENTUM)
    return ModelConfig(name="ln", core=core, readout=ReadoutConfig())


@register("cnn")
def cnn() -> ModelConfig:
    """SENSORIUM CNN baseline (Lurz et al. 2021): 4-layer core, images only."""
    core = CoreConfig(kind="cnn", layers=4, batch_norm_momentum=REFERENCE_BN_MOMENTUM)
    return ModelConfig(name="cnn", core=core, readout=ReadoutConfig())


@register("cnn_behavior")
def cnn_behavior() -> ModelConfig:
    """SENSORIUM+ CNN baseline: behaviour as 3 extra input channels, pupil centre drives a shifter."""
    core = CoreConfig(kind="cnn", in_channels=4, layers=4, batch_norm_momentum=REFERENCE_BN_MOMENTUM)
    return ModelConfig(
        name="cnn_behavior", core=core, readout=ReadoutConfig(), behavior_channels=True, shifter=True
    )


def _twin_core(in_channels: int) -> CoreConfig:
    """The twin's core: the baseline's 9x9 first layer (Laplace-smoothed), then 4 full-conv residual blocks.

    Winner ingredients, each a field: kind "resnet" (ResNet-style core with ELU), dropout 0.1, full 3x3
    convs (depthwise False); input_stride 1 because our images are already 36 x 64 (the winners' strided
    first conv replaced that resize). 64 channels keep a training step CPU-sized; the winners went to
    128-256 on GPUs (set channels). Batch norm momentum is PyTorch's default 0.1, not the reference's 0.9.
    Divisive normalization of the first layer's responses (normalization True): +0.003 to +0.006
    correlation to average in each of three paired trainings on `small` (bench/core_form.py,
    bench/README.md "Core form"), at +13% time per training step on the CPU.
    """
    return CoreConfig(
        kind="resnet",
        in_channels=in_channels,
        channels=64,
        layers=5,
        input_kernel=9,
        hidden_kernel=3,
        depthwise=False,
        dropout=0.1,
        normalization=True,
    )


@register("twin")
def twin() -> ModelConfig:
    """Our SENSORIUM (image-only) model: resnet core fed the image, a centred copy and Sobel gradients, the
    image downscaled by area averaging (anti-aliased) instead of the baseline's bilinear resize, readout
    positions starting at receptive-field centres estimated from the training trials."""
    return ModelConfig(
        name="twin",
        core=_twin_core(4),
        readout=ReadoutConfig(position_init="data"),
        input_gradients=True,
        input_centered=True,
        correlation_weight=1.0,
        input_resize="area",
    )


@register("twin_behavior")
def twin_behavior() -> ModelConfig:
    """Our SENSORIUM+ model: `twin` plus behaviour channels and shifter (baseline) and a gain modulator."""
    return ModelConfig(
        name="twin_behavior",
        core=_twin_core(7),
        readout=ReadoutConfig(position_init="data"),
        input_gradients=True,
        input_centered=True,
        behavior_channels=True,
        shifter=True,
        modulator=True,
        correlation_weight=1.0,
        input_resize="area",
    )
