"""`Recording`: one mouse's SENSORIUM recording in memory, one row per trial (image presentation).

Arrays follow the on-disk layout of SENSORIUM 2022: trial `i` is file
`data/*/{i}.npy` and row `i` of every `meta/trials/*.npy` array. Images keep their on-disk dtype and are
usually memory-mapped from the loader's cache; everything else is float32 or the metadata's own dtype.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from twin.errors import InvalidInput

__all__ = ["BEHAVIOR_NAMES", "HELD_OUT_TIERS", "TIERS", "Recording", "data_key_from_name"]

TIERS = ("train", "validation", "test", "final_test")
HELD_OUT_TIERS = ("test", "final_test")
BEHAVIOR_NAMES = ("pupil_dilation", "pupil_dilation_derivative", "running_speed")

_FOLDER_RE = re.compile(r"^static(\d+)-(\d+)-(\d+)(?:-|$)")


def data_key_from_name(name: str) -> str | None:
    """`static26872-17-20-GrayImageNet-<hash>` -> `26872-17-20`; None for any other name."""
    match = _FOLDER_RE.match(name)
    return "-".join(match.groups()) if match else None


Statistics = dict[str, dict[str, dict[str, np.ndarray]]]


@dataclass(frozen=True, eq=False)
class Recording:
    """One recording. Shapes: n trials, N neurons, images (n, 1, H, W)."""

    data_key: str
    images: np.ndarray  # (n, 1, H, W) raw pixel units, on-disk dtype
    responses: np.ndarray  # (n, N) float32, >= 0
    behavior: np.ndarray  # (n, 3) pupil dilation, its derivative, running speed
    pupil_center: np.ndarray  # (n, 2) horizontal, vertical eye position
    tiers: np.ndarray  # (n,) str, one of TIERS
    image_ids: np.ndarray  # (n,) int64, shared by every repeat of one image
    trial_ids: np.ndarray  # (n,) presentation order (hashed in competition recordings)
    neuron_ids: np.ndarray  # (N,) unit ids
    cell_motor_coordinates: np.ndarray  # (N, 3) x, y, z in micrometres
    statistics: Statistics = field(default_factory=dict)
    trials_meta: dict[str, np.ndarray] = field(default_factory=dict)  # every meta/trials array
    neurons_meta: dict[str, np.ndarray] = field(default_factory=dict)  # every meta/neurons array
    source: str | None = None  # the folder or zip it was read from

    def __post_init__(self) -> None:
        n = _rows(self.images, "images")
        checks = {
            "images": (self.images, (n, 1, None, None)),
            "responses": (self.responses, (n, None)),
            "behavior": (self.behavior, (n, 3)),
            "pupil_center": (self.pupil_center, (n, 2)),
            "tiers": (self.tiers, (n,)),
            "image_ids": (self.image_ids, (n,)),
            "trial_ids": (self.trial_ids, (n,)),
        }
        for name, (array, expected) in checks.items():
            _check_shape(array, expected, name)
        neurons = self.responses.shape[1]
        _check_shape(self.neuron_ids, (neurons,), "neuron_ids")
        _check_shape(self.cell_motor_coordinates, (neurons, 3), "cell_motor_coordinates")
        unknown = sorted(set(np.unique(self.tiers).tolist()) - set(TIERS))
        if unknown:
            raise InvalidInput(f"tiers: unknown tier names {unknown}; expected only {list(TIERS)}")
        if not self.data_key:
            raise InvalidInput("data_key: empty; expected e.g. '26872-17-20'")

    @property
    def n_trials(self) -> int:
        return int(self.responses.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.responses.shape[1])

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the images as stored."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def tier_indices(self, tier: str) -> np.ndarray:
        """Trial indices of one tier, in file order."""
        if tier not in TIERS:
            raise InvalidInput(f"tier: {tier!r} is not a tier; expected one of {list(TIERS)}")
        return np.flatnonzero(self.tiers == tier)

    def tier_counts(self) -> dict[str, int]:
        return {tier: int(np.sum(self.tiers == tier)) for tier in TIERS if np.any(self.tiers == tier)}

    def subset(self, indices: np.ndarray) -> Recording:
        """A new in-memory recording of the given trials (in that order); statistics are dropped."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iub":
            raise InvalidInput(f"indices: expected a non-empty 1-D integer or boolean array, got {idx.shape}")
        return Recording(
            data_key=self.data_key,
            images=np.asarray(self.images[idx]),
            responses=np.asarray(self.responses[idx]),
            behavior=np.asarray(self.behavior[idx]),
            pupil_center=np.asarray(self.pupil_center[idx]),
            tiers=self.tiers[idx],
            image_ids=self.image_ids[idx],
            trial_ids=self.trial_ids[idx],
            neuron_ids=self.neuron_ids,
            cell_motor_coordinates=self.cell_motor_coordinates,
            trials_meta={k: v[idx] for k, v in self.trials_meta.items()},
            neurons_meta=self.neurons_meta,
            source=self.source,
        )

    @property
    def has_behavior(self) -> bool:
        """False when behaviour and pupil centre are all zero (the image-only track zeroes them)."""
        return bool(np.any(self.behavior != 0) or np.any(self.pupil_center != 0))

    def responses_zeroed(self, tier: str) -> bool:
        """True when a tier's responses are all zero on disk (held out, as in competition recordings)."""
        idx = self.tier_indices(tier)
        return idx.size > 0 and not np.any(self.responses[idx])


def _rows(array: np.ndarray, name: str) -> int:
    if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise InvalidInput(
            f"{name}: expected a numpy array with one row per trial, got {type(array).__name__}"
        )
    return int(array.shape[0])


def _check_shape(array: object, expected: tuple[int | None, ...], name: str) -> None:
    if not isinstance(array, np.ndarray):
        raise InvalidInput(f"{name}: expected a numpy array, got {type(array).__name__}")
    ok = array.ndim == len(expected) and all(
        e is None or e == s for e, s in zip(expected, array.shape, strict=False)
    )
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise InvalidInput(f"{name}: shape {tuple(array.shape)}, expected {want}")
