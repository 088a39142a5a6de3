"""The digital twin: one shared core, one readout (and shifter, modulator) per recording, ELU + 1 output.

neuralpredictors' FiringRateEncoder(core, MultipleFullGaussian2d, MLPShifter) as the SENSORIUM
baselines assemble it: responses = ELU(readout[data_key](core(x), shift)) + 1, a positive rate; with a
modulator that rate is multiplied by a per-neuron gain from behaviour. x is the image with the
channels derived from it (inputs.py) and the behaviour planes, as the config asks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.config import ModelConfig
from training.models.core import Core
from training.models.inputs import InputChannels
from training.models.modulator import Modulator
from training.models.readout import GaussianReadout
from training.models.shifter import Shifter
from twin.errors import InvalidInput, ModelNotFound

__all__ = ["RecordingShape", "Twin"]


@dataclass(frozen=True)
class RecordingShape:
    """What the model needs to know of one recording to build its readout.

    coordinates: (N, 3) cortical x, y, z in micrometres (only x, y are used), or None.
    mean_response: (N,) mean training response, or None; the readout bias starts at it when the
    config's readout.bias_init is "mean" (unused with "zero").
    rf_centers: (N, 2) receptive-field centres, (x, y) pixels of the model's input, and rf_clarity (N,)
    in [0, 1], how clearly each was found (training.rf_centers), or None; the readout positions start
    there when the config's readout.position_init is "data" (training gives them; a model built to
    load trained weights needs none).
    """

    n_neurons: int
    coordinates: np.ndarray | None = None
    mean_response: np.ndarray | None = None
    rf_centers: np.ndarray | None = None
    rf_clarity: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.n_neurons
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise InvalidInput(f"n_neurons: {n!r}; expected an integer >= 1")
        if self.coordinates is not None:
            shape = np.shape(self.coordinates)
            if len(shape) != 2 or shape[0] != n or shape[1] not in (2, 3):
                raise InvalidInput(f"coordinates: shape {shape}; expected ({n}, 3) (or ({n}, 2))")
        if self.mean_response is not None and np.shape(self.mean_response) != (n,):
            raise InvalidInput(f"mean_response: shape {np.shape(self.mean_response)}; expected ({n},)")
        if (self.rf_centers is None) != (self.rf_clarity is None):
            raise InvalidInput("rf_centers, rf_clarity: give both or neither")
        if self.rf_centers is not None and np.shape(self.rf_centers) != (n, 2):
            raise InvalidInput(f"rf_centers: shape {np.shape(self.rf_centers)}; expected ({n}, 2)")
        if self.rf_clarity is not None and np.shape(self.rf_clarity) != (n,):
            raise InvalidInput(f"rf_clarity: shape {np.shape(self.rf_clarity)}; expected ({n},)")


class Twin(nn.Module):
    """Shared core + per-data_key readouts (and shifters, modulators), keyed by data key in nn.ModuleDicts."""

    def __init__(self, config: ModelConfig, recordings: dict[str, RecordingShape]):
        super().__init__()
        if not isinstance(recordings, dict) or not recordings:
            raise InvalidInput(
                f"recordings: {recordings!r}; expected a non-empty dict data_key -> RecordingShape"
            )
        for key, shape in recordings.items():
            if not isinstance(key, str) or not key or "." in key or hasattr(nn.ModuleDict(), key):
                raise InvalidInput(
                    f"data_key: {key!r}; expected a non-empty name without '.' that is not a ModuleDict "
                    "attribute"
                )
            if not isinstance(shape, RecordingShape):
                raise InvalidInput(f"recordings[{key!r}]: {shape!r}; expected a RecordingShape")
            if config.readout.use_coordinates and shape.coordinates is None:
                raise InvalidInput(
                    f"recordings[{key!r}].coordinates: None; expected (N, 3) cortical coordinates "
                    "(readout.use_coordinates is True)"
                )
            if config.readout.bias_init == "mean" and shape.mean_response is None:
                raise InvalidInput(
                    f"recordings[{key!r}].mean_response: None; expected (N,) mean responses "
                    "(readout.bias_init is 'mean')"
                )
        self.config = config
        self.inputs = InputChannels(gradients=config.input_gradients, centered=config.input_centered)
        self.core = Core(config.core)
        in_shape = self.core.output_shape(*config.image_shape)  # (C, H', W')
        if min(in_shape[1:]) < 1:
            raise InvalidInput(
                f"image_shape: {config.image_shape}; too small for the first conv "
                f"(kernel {config.core.input_kernel}, stride {config.core.input_stride})"
            )
        self.readouts = nn.ModuleDict()
        self.shifters = nn.ModuleDict() if config.shifter else None
        self.modulators = nn.ModuleDict() if config.modulator else None
        for key, shape in recordings.items():
            coordinates = shape.coordinates if config.readout.use_coordinates else None
            readout = GaussianReadout(in_shape, coordinates, config.readout, n_neurons=shape.n_neurons)
            if config.readout.bias_init == "mean":
                readout.initialize_bias(shape.mean_response)
            if config.readout.position_init == "data" and shape.rf_centers is not None:
                readout.initialize_positions(
                    self.core.feature_position(shape.rf_centers, config.image_shape), shape.rf_clarity
                )
            self.readouts[key] = readout
            if self.shifters is not None:
                self.shifters[key] = Shifter()
            if self.modulators is not None:
                self.modulators[key] = Modulator(shape.n_neurons, config.modulator_hidden)

    @property
    def data_keys(self) -> list[str]:
        return list(self.readouts.keys())

    def _check_key(self, data_key: str) -> None:
        if data_key not in self.readouts:
            raise ModelNotFound(f"data_key: {data_key!r}; expected one of {self.data_keys}")

    def forward(
        self,
        images: Tensor,
        data_key: str,
        *,
        behavior: Tensor | None = None,
        pupil_center: Tensor | None = None,
    ) -> Tensor:
        """images (B, 1, H, W) -> responses (B, N) of recording data_key.

        behavior (B, 3) is required when the config uses behaviour channels or a modulator, pupil_center
        (B, 2) when it has a shifter; each is ignored by a model that does not use it.
        """
        self._check_key(data_key)
        height, width = self.config.image_shape
        if images.ndim != 4 or images.shape[1] != 1 or tuple(images.shape[2:]) != (height, width):
            raise InvalidInput(f"images: shape {tuple(images.shape)}; expected (B, 1, {height}, {width})")
        if self.config.behavior_channels or self.modulators is not None:
            if behavior is None:
                raise InvalidInput(f"behavior: None; model {self.config.name!r} needs (B, 3) behaviour")
            if behavior.ndim != 2 or behavior.shape[1] != 3:
                raise InvalidInput(f"behavior: shape {tuple(behavior.shape)}; expected (B, 3)")
            behavior = behavior.to(images.dtype)
        x = self.inputs(images)  # (B, 1 + derived, H, W)
        if self.config.behavior_channels:
            planes = behavior[:, :, None, None].expand(-1, -1, height, width)  # (B, 3, H, W)
            x = torch.cat([x, planes], dim=1)  # (B, in_channels, H, W)
        shift = None
        if self.shifters is not None:
            if pupil_center is None:
                raise InvalidInput(
                    f"pupil_center: None; model {self.config.name!r} needs (B, 2) eye positions"
                )
            shift = self.shifters[data_key](pupil_center.to(images.dtype))  # (B, 2)
        features = self.core(x)  # (B, C, H', W')
        rate = F.elu(self.readouts[data_key](features, shift)) + 1  # (B, N)
        if self.modulators is not None:
            rate = rate * self.modulators[data_key](behavior)  # (B, N) gain * rate, still > 0
        return rate

    def regularizer(self, data_key: str) -> Tensor:
        """Core + this recording's readout (+ shifter, modulator) penalties, summed as Encoder.regularizer."""
        self._check_key(data_key)
        penalty = self.core.regularizer() + self.readouts[data_key].regularizer()
        if self.shifters is not None:
            penalty = penalty + self.shifters[data_key].regularizer()
        if self.modulators is not None:
            penalty = penalty + self.modulators[data_key].regularizer()
        return penalty
