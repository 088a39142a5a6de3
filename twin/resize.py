"""Image resizing as the training pipeline does it, in numpy, and its adjoint for gradients.

Two modes, both separable linear maps: "bilinear" is torch's F.interpolate(mode="bilinear",
align_corners=False, antialias=False), the SENSORIUM baseline's (each output row or column mixes two input
rows or columns, so a downscale by 4 aliases what lies above the new Nyquist frequency); "area" averages
the input cells each output cell overlaps (anti-aliased; fractional overlaps for non-integer factors).
Written as matrices Ry (h, H) and Rx (w, W), resize(X) = Ry X Rx^T, so the gradient of anything computed
from the resized image, taken with respect to the original image, is Ry^T G Rx (`resize_adjoint`). One
function here serves every client and the training pipeline's own preprocessing, so a twin given images
at the recording's resolution sees exactly what the model was trained on.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from twin.errors import InvalidInput

__all__ = ["RESIZE_MODES", "interpolation_matrix", "resize", "resize_adjoint"]

RESIZE_MODES = ("bilinear", "area")


@lru_cache(maxsize=64)
def _matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    if mode == "area":
        edges = np.linspace(0.0, n_in, n_out + 1)  # output cell i covers [edges[i], edges[i + 1])
        cells = np.arange(n_in)[None, :]
        overlap = np.minimum(edges[1:, None], cells + 1) - np.maximum(edges[:-1, None], cells)
        out = np.clip(overlap, 0.0, None) / (n_in / n_out)
    else:
        out = np.zeros((n_out, n_in), np.float64)
        scale = n_in / n_out
        source = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)  # (n_out,) as torch: clamped at 0
        low = np.floor(source).astype(np.int64)
        high = np.minimum(low + 1, n_in - 1)
        frac = source - low
        rows = np.arange(n_out)
        np.add.at(out, (rows, low), 1.0 - frac)
        np.add.at(out, (rows, high), frac)  # at the last input index low == high: weights add up to 1
    out.setflags(write=False)
    return out


def _mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise InvalidInput(f"resize: {mode!r}; expected one of {list(RESIZE_MODES)}")
    return mode


def interpolation_matrix(n_in: int, n_out: int, mode: str = "bilinear") -> np.ndarray:
    """(n_out, n_in) float64 weights of 1-D resizing in `mode`; every row sums to 1."""
    for name, n in (("n_in", n_in), ("n_out", n_out)):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise InvalidInput(f"{name}: {n!r}; expected an integer >= 1")
    return _matrix(int(n_in), int(n_out), _mode(mode))


def _check(images: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim < 2:
        raise InvalidInput(f"{name}: shape {a.shape}; expected (..., H, W)")
    if a.dtype.kind not in "iuf":
        raise InvalidInput(f"{name}: dtype {a.dtype}; expected real numbers")
    if len(size) != 2:
        raise InvalidInput(f"size: {size!r}; expected (height, width)")
    return a


def resize(images: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """images (..., H, W) -> (..., h, w) float32, resized in `mode` (see the module's docstring)."""
    a = _check(images, size, "images")
    ry = interpolation_matrix(a.shape[-2], size[0], mode).astype(np.float32)  # (h, H)
    rx = interpolation_matrix(a.shape[-1], size[1], mode).astype(np.float32)  # (w, W)
    return (ry @ a.astype(np.float32, copy=False) @ rx.T).astype(np.float32, copy=False)  # (..., h, w)


def resize_adjoint(gradient: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """gradient (..., h, w) w.r.t. resized images -> (..., H, W) w.r.t. the originals of size (H, W)."""
    g = _check(gradient, size, "gradient")
    ry = interpolation_matrix(size[0], g.shape[-2], mode).astype(np.float32)  # (h, H)
    rx = interpolation_matrix(size[1], g.shape[-1], mode).astype(np.float32)  # (w, W)
    return (ry.T @ g.astype(np.float32, copy=False) @ rx).astype(np.float32, copy=False)  # (..., H, W)
