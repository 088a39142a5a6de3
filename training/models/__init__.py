"""Model components: input channels, core, readout, shifter, modulator, the Twin, configs and a registry."""

from training.models.config import CoreConfig, ModelConfig, ReadoutConfig
from training.models.core import Core
from training.models.inputs import InputChannels
from training.models.model import RecordingShape, Twin
from training.models.modulator import Modulator
from training.models.readout import GaussianReadout
from training.models.registry import available, build, get_config, register
from training.models.shifter import Shifter

__all__ = [
    "Core",
    "CoreConfig",
    "GaussianReadout",
    "InputChannels",
    "ModelConfig",
    "Modulator",
    "ReadoutConfig",
    "RecordingShape",
    "Shifter",
    "Twin",
    "available",
    "build",
    "get_config",
    "register",
]
