"""Bilinear image resizing as the training pipeline does it, in numpy, and its adjoint for gradients.

torch's F.interpolate(mode="bilinear", align_corners=False, antialias=False) is separable: each output
row (column) mixes two input rows (columns). Written as interpolation matrices Ry (h, H) and Rx (w, W),
resize(X) = Ry X Rx^T, so the gradient of anything computed from the resized image, taken with respect
to the original image, is Ry^T G Rx (`resize_adjoint`). One function here serves every client, so a
twin given images at the recording's resolution sees exactly what the model was trained on.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from twin.errors import InvalidInput

__all__ = ["interpolation_matrix", "resize", "resize_adjoint"]


@lru_cache(maxsize=64)
def _matrix(n_in: int, n_out: int) -> np.ndarray:
    scale = n_in / n_out
    source = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)  # (n_out,) as torch: clamped at 0
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    frac = source - low
    out = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(out, (rows, low), 1.0 - frac)
    np.add.at(out, (rows, high), frac)  # at the last input index low == high: weights add up to 1
    out.setflags(write=False)
    return out


def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of 1-D linear interpolation, align_corners=False, no anti-aliasing."""
    for name, n in (("n_in", n_in), ("n_out", n_out)):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise InvalidInput(f"{name}: {n!r}; expected an integer >= 1")
    return _matrix(int(n_in), int(n_out))


def _check(images: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim < 2:
        raise InvalidInput(f"{name}: shape {a.shape}; expected (..., H, W)")
    if a.dtype.kind not in "iuf":
        raise InvalidInput(f"{name}: dtype {a.dtype}; expected real numbers")
    if len(size) != 2:
        raise InvalidInput(f"size: {size!r}; expected (height, width)")
    return a


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """images (..., H, W) -> (..., h, w) float32, bilinear as F.interpolate(align_corners=False)."""
    a = _check(images, size, "images")
    ry = interpolation_matrix(a.shape[-2], size[0]).astype(np.float32)  # (h, H)
    rx = interpolation_matrix(a.shape[-1], size[1]).astype(np.float32)  # (w, W)
    return (ry @ a.astype(np.float32, copy=False) @ rx.T).astype(np.float32, copy=False)  # (..., h, w)


def resize_adjoint(gradient: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """gradient (..., h, w) w.r.t. resized images -> (..., H, W) w.r.t. the originals of size (H, W)."""
    g = _check(gradient, size, "gradient")
    ry = interpolation_matrix(size[0], g.shape[-2]).astype(np.float32)  # (h, H)
    rx = interpolation_matrix(size[1], g.shape[-1]).astype(np.float32)  # (w, W)
    return (ry.T @ g.astype(np.float32, copy=False) @ rx).astype(np.float32, copy=False)  # (..., H, W)
