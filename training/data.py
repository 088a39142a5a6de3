"""Recordings as preprocessed tensors in memory, and the multi-mouse batch schedule of the reference trainer.

Preprocessing is the SENSORIUM baseline's (SENSORIUM.md §2): images z-scored with the recording's image
statistics and downscaled by bilinear interpolation without anti-aliasing to the model's resolution (or,
a model's choice, by area averaging: twin.resize);
responses divided by their per-neuron std (neurons below 1% of the mean std use that threshold instead);
behaviour divided by its std (not centred); pupil centre z-scored. Metrics are computed on the
standardized responses. Everything is read once; a training step never touches the disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from twin.data import Recording
from twin.errors import InvalidInput
from twin.resize import RESIZE_MODES, interpolation_matrix

__all__ = ["MODEL_IMAGE_SIZE", "Preprocessing", "RecordingTensors", "batches", "preprocess_images"]

MODEL_IMAGE_SIZE = (36, 64)  # the baseline's input resolution: 144x256 scaled by 0.25


@dataclass(frozen=True)
class Preprocessing:
    """Constants that map a recording's raw units to model units (stored with every model)."""

    image_mean: float
    image_std: float
    image_size: tuple[int, int]  # model input (H, W)
    response_std: np.ndarray  # (N,) divisor per neuron, thresholded
    behavior_std: np.ndarray  # (3,) divisor (1 where the behaviour is zeroed)
    pupil_mean: np.ndarray  # (2,)
    pupil_std: np.ndarray  # (2,)
    # (3,) the trials' mean behaviour in raw units: not an input constant (behaviour is not centred) but
    # the condition an in-silico experiment shows stimuli in; None in descriptions written without it
    behavior_mean: np.ndarray | None = None
    resize: str = "bilinear"  # how images at another resolution reach image_size (twin.resize's modes)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise InvalidInput(f"resize: {self.resize!r}; expected one of {list(RESIZE_MODES)}")

    @classmethod
    def from_recording(
        cls, recording: Recording, image_size: tuple[int, int] = MODEL_IMAGE_SIZE, resize: str = "bilinear"
    ) -> Preprocessing:
        stats = recording.statistics
        if not stats:
            raise InvalidInput(f"recording {recording.data_key}: no statistics; expected meta/statistics")

        def stat(variable: str, name: str) -> np.ndarray:
            return np.asarray(stats[variable]["all"][name], dtype=np.float64)

        response_std = stat("responses", "std")
        threshold = 0.01 * response_std.mean()
        return cls(
            image_mean=float(stat("images", "mean")),
            image_std=float(stat("images", "std")),
            image_size=image_size,
            response_std=np.where(response_std > threshold, response_std, threshold).astype(np.float32),
            behavior_std=_safe(stat("behavior", "std")),
            pupil_mean=stat("pupil_center", "mean").astype(np.float32),
            pupil_std=_safe(stat("pupil_center", "std")),
            behavior_mean=stat("behavior", "mean").astype(np.float32),
            resize=resize,
        )

    def to_dict(self) -> dict:
        mean = {} if self.behavior_mean is None else {"behavior_mean": self.behavior_mean.tolist()}
        return {
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "image_size": list(self.image_size),
            "response_std": self.response_std.tolist(),
            "behavior_std": self.behavior_std.tolist(),
            "pupil_mean": self.pupil_mean.tolist(),
            "pupil_std": self.pupil_std.tolist(),
            **mean,
            "resize": self.resize,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            image_mean=float(d["image_mean"]),
            image_std=float(d["image_std"]),
            image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
            response_std=np.asarray(d["response_std"], np.float32),
            behavior_std=np.asarray(d["behavior_std"], np.float32),
            pupil_mean=np.asarray(d["pupil_mean"], np.float32),
            pupil_std=np.asarray(d["pupil_std"], np.float32),
            behavior_mean=None if d.get("behavior_mean") is None else np.asarray(d["behavior_mean"], "f4"),
            resize=str(d.get("resize", "bilinear")),  # descriptions written before the choice: bilinear
        )


def _safe(std: np.ndarray) -> np.ndarray:
    """A std to divide by: zeroed variables (image-only track) keep their zeros."""
    return np.where(std > 0, std, 1.0).astype(np.float32)


def preprocess_images(
    images: torch.Tensor, mean: float, std: float, size: tuple[int, int], resize: str = "bilinear"
) -> torch.Tensor:
    """Raw images (B, 1, H, W) -> z-scored float32 (B, 1, h, w), rescaled to `size` in twin.resize's
    `resize` mode: "bilinear" as the baseline (F.interpolate, no anti-aliasing), "area" by the very
    matrices the served twin resizes with."""
    x = (images.to(torch.float32) - mean) / std
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if resize == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    rows = torch.from_numpy(interpolation_matrix(x.shape[-2], size[0], resize).astype(np.float32))
    cols = torch.from_numpy(interpolation_matrix(x.shape[-1], size[1], resize).astype(np.float32))
    return rows.to(x.device) @ x @ cols.to(x.device).T


@dataclass
class RecordingTensors:
    """One recording in model units, resident in memory (or on a device)."""

    data_key: str
    images: torch.Tensor  # (n, 1, h, w)
    responses: torch.Tensor  # (n, N) standardized
    behavior: torch.Tensor  # (n, 3)
    pupil_center: torch.Tensor  # (n, 2)
    tiers: np.ndarray  # (n,)
    image_ids: np.ndarray  # (n,)
    coordinates: np.ndarray  # (N, 3) cortical positions (um), for the readout's position predictor
    preprocessing: Preprocessing

    @classmethod
    def from_recording(
        cls,
        recording: Recording,
        responses: np.ndarray | None = None,
        image_size: tuple[int, int] = MODEL_IMAGE_SIZE,
        chunk: int = 1024,
        resize: str = "bilinear",
    ) -> RecordingTensors:
        """Preprocess every trial. `responses` replaces the recording's (e.g. with held-out ones restored);
        `resize`: how images reach image_size (twin.resize's modes)."""
        pre = Preprocessing.from_recording(recording, image_size, resize)
        parts = [
            preprocess_images(
                torch.from_numpy(np.array(recording.images[s : s + chunk])),
                pre.image_mean,
                pre.image_std,
                image_size,
                resize,
            )
            for s in range(0, recording.n_trials, chunk)
        ]
        raw = recording.responses if responses is None else responses
        return cls(
            data_key=recording.data_key,
            images=torch.cat(parts),
            responses=torch.from_numpy(np.asarray(raw, np.float32) / pre.response_std),
            behavior=torch.from_numpy(np.asarray(recording.behavior, np.float32) / pre.behavior_std),
            pupil_center=torch.from_numpy(
                (np.asarray(recording.pupil_center, np.float32) - pre.pupil_mean) / pre.pupil_std
            ),
            tiers=np.asarray(recording.tiers),
            image_ids=np.asarray(recording.image_ids),
            coordinates=np.asarray(recording.cell_motor_coordinates, np.float32),
            preprocessing=pre,
        )

    @property
    def n_neurons(self) -> int:
        return int(self.responses.shape[1])

    def indices(self, tier: str) -> np.ndarray:
        idx = np.flatnonzero(self.tiers == tier)
        if idx.size == 0:
            raise InvalidInput(f"tier: recording {self.data_key} has no {tier!r} trials")
        return idx

    def to(self, device: torch.device | str) -> RecordingTensors:
        """A copy with the tensors on `device` (like torch's .to, this one is left as it is)."""
        tensors = ("images", "responses", "behavior", "pupil_center")
        return dataclasses.replace(self, **{name: getattr(self, name).to(device) for name in tensors})

    def batch(self, idx: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """The trials `idx` (row numbers; best a tensor already on the data's device)."""
        rows = torch.as_tensor(idx, device=self.images.device)
        return {
            "images": self.images[rows],
            "responses": self.responses[rows],
            "behavior": self.behavior[rows],
            "pupil_center": self.pupil_center[rows],
        }


def batches(
    data: dict[str, RecordingTensors], tier: str, batch_size: int, rng: np.random.Generator
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """One epoch of steps; each step holds one shuffled batch per recording (the reference's schedule).

    The epoch has as many steps as the largest recording has batches; smaller ones start over.
    """
    # Each recording's order goes to its data's device once per epoch: a step then indexes on the device,
    # and the host never waits for a per-batch copy of indices (on a GPU, torch's blocking copy from
    # host memory synchronizes the stream: the host would wait for every queued kernel at every step).
    orders = {
        key: torch.as_tensor(rng.permutation(d.indices(tier)), device=d.images.device)
        for key, d in data.items()
    }
    steps = max(int(np.ceil(len(o) / batch_size)) for o in orders.values())
    for step in range(steps):
        out = []
        for key, order in orders.items():
            n_batches = int(np.ceil(len(order) / batch_size))
            b = step % n_batches
            out.append((key, order[b * batch_size : (b + 1) * batch_size]))
        yield out
