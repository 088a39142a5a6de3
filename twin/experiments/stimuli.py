"""Parametric stimuli for in-silico experiments, in raw pixel units on a twin's input grid.

Conventions match the simulated mouse's ground truth (twin.data.population): x runs right and y down in
pixels; a grating of orientation theta varies along the direction (cos theta, sin theta), so theta is the
orientation of its wave vector (0: luminance changes along x, i.e. vertical bars), in [0, pi); its period
is in pixels per cycle and its phase in radians at pixel (0, 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from twin.errors import InvalidInput

__all__ = ["SparseNoise", "grating_patches", "gratings", "sparse_noise"]


def _size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or min(image_size) < 1:
        raise InvalidInput(f"image_size: {tuple(image_size)}; expected (height, width) >= 1")
    return int(image_size[0]), int(image_size[1])


def gratings(
    image_size: Sequence[int],
    orientations: Sequence[float] | np.ndarray,
    periods: Sequence[float] | np.ndarray,
    phases: Sequence[float] | np.ndarray,
    *,
    gray: float,
    amplitude: float,
) -> np.ndarray:
    """Full-field sinusoidal gratings, (O, P, F, H, W) float32: gray + amplitude * cos(2 pi d / period +
    phase), d the position along the orientation's direction."""
    height, width = _size(image_size)
    theta, period, phase = (np.asarray(v, np.float64).ravel() for v in (orientations, periods, phases))
    for name, values in (("orientations", theta), ("periods", period), ("phases", phase)):
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise InvalidInput(f"{name}: {values.tolist()}; expected at least one finite value")
    if np.any(period <= 0):
        raise InvalidInput(f"periods: {period.tolist()}; expected pixels per cycle > 0")
    if not amplitude >= 0:
        raise InvalidInput(f"amplitude: {amplitude}; expected >= 0 (raw pixel units)")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    along = xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None]  # (O, H, W)
    argument = (
        2 * np.pi * along[:, None, None] / period[None, :, None, None, None]
        + phase[None, None, :, None, None]
    )
    return (gray + amplitude * np.cos(argument)).astype(np.float32)


def grating_patches(
    image_size: Sequence[int],
    centers: np.ndarray,
    orientations: np.ndarray,
    periods: np.ndarray,
    diameters: Sequence[float] | np.ndarray,
    phases: Sequence[float] | np.ndarray,
    *,
    gray: float,
    amplitude: float,
) -> np.ndarray:
    """Gratings in circular apertures on gray, (n, S, F, H, W) float32: for each of n (centre (x, y),
    orientation, period), each of S diameters and F phases (at the centre), gray + amplitude * cos(...)
    inside the aperture, whose edge is antialiased over one pixel."""
    height, width = _size(image_size)
    centers = np.asarray(centers, np.float64).reshape(-1, 2)
    theta, period = (np.asarray(v, np.float64).ravel() for v in (orientations, periods))
    size, phase = (np.asarray(v, np.float64).ravel() for v in (diameters, phases))
    n = centers.shape[0]
    if theta.size != n or period.size != n:
        raise InvalidInput(
            f"orientations, periods: {theta.size} and {period.size} values; expected one per centre ({n})"
        )
    if np.any(period <= 0) or np.any(size <= 0) or size.size == 0 or phase.size == 0:
        raise InvalidInput("periods, diameters: expected values > 0 and at least one diameter and phase")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dx = xx[None] - centers[:, 0, None, None]  # (n, H, W)
    dy = yy[None] - centers[:, 1, None, None]
    along = dx * np.cos(theta)[:, None, None] + dy * np.sin(theta)[:, None, None]
    wave = np.cos(
        2 * np.pi * along[:, None] / period[:, None, None, None] + phase[None, :, None, None]
    )  # (n, F, H, W)
    distance = np.hypot(dx, dy)  # (n, H, W)
    aperture = np.clip(size[None, :, None, None] / 2 - distance[:, None] + 0.5, 0.0, 1.0)  # (n, S, H, W)
    return (gray + amplitude * aperture[:, :, None] * wave[:, None]).astype(np.float32)


@dataclass(frozen=True)
class SparseNoise:
    """Sparse-noise frames: one square of `high` (ON) or `low` (OFF) luminance on gray per frame."""

    images: np.ndarray  # (2, Y, X, H, W) float32: [ON, OFF] x square rows x square columns
    x: np.ndarray  # (X,) centre column of each square position, pixels
    y: np.ndarray  # (Y,) centre row, pixels
    square: int


def sparse_noise(
    image_size: Sequence[int], *, square: int, stride: int, gray: float, low: float, high: float
) -> SparseNoise:
    """Every position of a `square`-pixel square on a `stride` grid covering the image, in both
    polarities; positions are square centres in pixel coordinates."""
    height, width = _size(image_size)
    if not 1 <= square <= min(height, width):
        raise InvalidInput(f"square: {square}; expected 1 to {min(height, width)} pixels")
    if stride < 1:
        raise InvalidInput(f"stride: {stride}; expected >= 1 pixel")
    if not low < gray < high:
        raise InvalidInput(f"low, gray, high: {low}, {gray}, {high}; expected low < gray < high")
    rows = np.arange(0, height - square + 1, stride)
    cols = np.arange(0, width - square + 1, stride)
    images = np.full((2, rows.size, cols.size, height, width), gray, np.float32)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            images[0, i, j, top : top + square, left : left + square] = high
            images[1, i, j, top : top + square, left : left + square] = low
    offset = (square - 1) / 2
    return SparseNoise(images, (cols + offset).astype(np.float32), (rows + offset).astype(np.float32), square)
