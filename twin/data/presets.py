"""Sizes and roles of the simulated mouse's recordings, per preset.

Roles follow SENSORIUM 2022: `image_only` is the SENSORIUM track's competition recording (behaviour and
pupil centre zeroed, test and final_test responses held out), `behavior` the SENSORIUM+ track's
(responses held out, behaviour kept), `pretrain` the fully released recordings.
"""

from __future__ import annotations

from dataclasses import dataclass

from twin.errors import InvalidInput

__all__ = ["PRESETS", "ROLES", "Preset", "RecordingSpec", "get_preset"]

ROLES = ("image_only", "behavior", "pretrain")


@dataclass(frozen=True)
class RecordingSpec:
    data_key: str
    role: str
    n_neurons: int
    n_train: int
    n_validation: int

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidInput(f"role: {self.role!r}; expected one of {list(ROLES)}")
        for name in ("n_neurons", "n_train", "n_validation"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name}: {getattr(self, name)}; expected >= 1")

    @property
    def competition(self) -> bool:
        return self.role != "pretrain"


@dataclass(frozen=True)
class Preset:
    name: str
    image_size: tuple[int, int]  # (H, W) of the stored images
    recordings: tuple[RecordingSpec, ...]
    n_test_images: int = 100
    repeats: int = 10
    description: str = ""


def _sensorium() -> tuple[RecordingSpec, ...]:
    neurons = (7776, 7538, 8372, 7344, 7334, 8107, 8098)  # the real benchmark's recordings
    roles = ("image_only", "behavior") + ("pretrain",) * 5
    return tuple(
        RecordingSpec(f"{90001 + i}-1-1", role, n, n_train=4470, n_validation=530)
        for i, (role, n) in enumerate(zip(roles, neurons, strict=False))
    )


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        (36, 64),
        (
            RecordingSpec("90001-1-1", "image_only", 150, n_train=720, n_validation=80),
            RecordingSpec("90002-1-1", "behavior", 150, n_train=720, n_validation=80),
        ),
        description="2 recordings x 150 neurons, 36x64 images; seconds, for unit tests",
    ),
    "small": Preset(
        "small",
        (144, 256),
        (
            RecordingSpec("90001-1-1", "image_only", 1000, n_train=4500, n_validation=500),
            RecordingSpec("90002-1-1", "behavior", 1000, n_train=4500, n_validation=500),
        ),
        description="2 recordings (one per track) x 1,000 neurons, 5,000 train/validation trials",
    ),
    "sensorium": Preset(
        "sensorium",
        (144, 256),
        _sensorium(),
        description="7 recordings at the real benchmark's scale and roles",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InvalidInput(f"preset: {name!r} is not a preset; expected one of {sorted(PRESETS)}")
    return PRESETS[name]
