"""Receptive fields mapped with sparse noise, as in mouse V1 experiments (e.g. Niell & Stryker 2008).

One small black or white square on gray per frame, at every position of a grid. A neuron's map is the
sum of how much each polarity changes its response from gray at each position, so it finds the receptive
fields of complex cells (which respond to both polarities everywhere) as well as simple cells'; the ON
minus OFF map shows a simple cell's subregions. The centre is the centroid of the map above half its
maximum. Only predictions are needed, so it runs on any twin, the ground truth included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from twin.experiments.common import Result, Subject, responses_and_gray
from twin.experiments.stimuli import sparse_noise

__all__ = ["ReceptiveFields", "receptive_fields"]


@dataclass(frozen=True)
class ReceptiveFields(Result):
    """Sparse-noise maps of n neurons on a Y x X grid of square positions."""

    neuron_ids: np.ndarray  # (n,)
    x: np.ndarray  # (X,) square centres, pixels of the twin's input grid
    y: np.ndarray  # (Y,)
    on: np.ndarray  # (n, Y, X) response to a white square minus the response to gray
    off: np.ndarray  # (n, Y, X) the same for a black square
    square: int
    image_size: np.ndarray  # (2,) height, width of the grid the stimuli were built on

    @property
    def maps(self) -> np.ndarray:
        """(n, Y, X) |ON| + |OFF|: where a square of either polarity changes the response."""
        return np.abs(self.on) + np.abs(self.off)

    @property
    def centers(self) -> np.ndarray:
        """(n, 2) (x, y) in pixels: centroid of each map above half its maximum (NaN for a flat map)."""
        maps = self.maps
        peak = maps.max(axis=(1, 2), keepdims=True)
        weights = np.maximum(maps - 0.5 * peak, 0)
        total = weights.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = (weights.sum(axis=1) * self.x[None]).sum(axis=1) / total
            cy = (weights.sum(axis=2) * self.y[None]).sum(axis=1) / total
        centers = np.stack([cx, cy], axis=1)
        centers[total <= 0] = np.nan
        return centers

    @property
    def strength(self) -> np.ndarray:
        """(n,) the map's peak: the largest response change one square causes."""
        return self.maps.max(axis=(1, 2))

    def summary(self) -> dict[str, Any]:
        centers = self.centers
        return {
            "neuron_ids": self.neuron_ids.tolist(),
            "center_x_px": [None if np.isnan(v) else round(float(v), 3) for v in centers[:, 0]],
            "center_y_px": [None if np.isnan(v) else round(float(v), 3) for v in centers[:, 1]],
            "strength": self.strength.round(6).tolist(),
        }


def receptive_fields(
    twin: Any,
    neurons: Sequence[int] | np.ndarray | None = None,
    *,
    square: int = 4,
    stride: int = 2,
    low: float = 0.0,
    high: float = 255.0,
    behavior: Any = None,
    pupil_center: Any = None,
    batch: int = 256,
) -> ReceptiveFields:
    """Map receptive fields with black (`low`) and white (`high`) squares of `square` pixels every
    `stride` pixels on the training images' mean luminance, on the twin's input grid."""
    subject = Subject.of(twin, neurons, behavior, pupil_center)
    noise = sparse_noise(
        subject.image_size, square=square, stride=stride, gray=subject.gray, low=low, high=high
    )
    measured, gray = responses_and_gray(subject, noise.images, batch=batch)
    change = measured - gray  # (2, Y, X, n)
    change = np.moveaxis(change, -1, 1)  # (2, n, Y, X)
    return ReceptiveFields(
        subject.neuron_ids, noise.x, noise.y, change[0], change[1], square, np.asarray(subject.image_size)
    )
