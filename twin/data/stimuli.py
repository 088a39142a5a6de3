"""Synthetic grayscale stimuli with natural-image statistics, standing in for SENSORIUM's ImageNet images.

The model is "dead leaves": opaque shapes (disks, rotated ellipses, rectangles, convex polygons) dropped
one over another on a background, the way near objects occlude far ones in a photograph.
- Radii follow a power law, density ~ r^-3 between 1.5% and 60% of the image height: every octave of size
  covers the same area, the scale invariance that gives natural images their ~1/f amplitude spectrum.
- Shapes land in clumps (a smooth random field sets where), so cluttered regions alternate with open
  background, and shapes that sit near each other share light or shadow.
- Shapes are not flat: each has its own mean luminance and a contrast times texture fields made per image
  by FFT (smooth 1/f^2 shading plus one of 1/f grain, oriented streaks, thresholded sharp-edged patches).
  Fields are full-frame, so a texture runs on within a shape and breaks at its occluding edge.
- Luminances and contrasts are bounded so almost no pixel clips; a slight blur models the eye's optics.
Every image depends only on (seed, image id): shared test images are regenerated from their ids, and long
id lists can be made in any chunks. Images are made one at a time (memory stays at one image's worth) with
fixed-shape arrays, which keeps each one bitwise identical however the ids are batched.
"""

from __future__ import annotations

import functools

import numpy as np

from twin.errors import InvalidInput

__all__ = ["natural_images", "radial_amplitude_spectrum"]

_MIN_SIZE = 16
_N_SHAPES = 1000  # candidate occluders per image; clumping keeps about half
_R_MIN, _R_MAX = 0.015, 0.6  # radius range as a fraction of the image height (at least 0.5 pixel)
_R_SPLIT = 0.04  # shapes up to this radius are drawn all at once, larger ones one by one
_N_RADII, _N_ASPECTS, _N_ANGLES, _N_POLYGONS = 32, 4, 12, 8  # quantization of the cached stamps
_ASPECTS = (1.0, 0.75, 0.5, 0.3)  # minor / major axis
_KIND_P = (0.55, 0.25, 0.2)  # ellipse, rectangle, polygon
_CLUMP = (0.55, 0.45)  # keep probability = a + b * (smooth unit-variance field at the centre)
_LUM = (190.0, 30.0)  # luminance spread of shape means (Beta) and of the shared light field
_WEBER = (0.1, 0.5)  # texture contrast as a fraction of the shape's mean luminance
_BLUR = 0.12  # weight of each neighbour in the separable [a, 1 - 2a, a] optics kernel


def natural_images(image_ids, height: int = 144, width: int = 256, seed: int = 0) -> np.ndarray:
    """Return uint8 images (len(image_ids), height, width); image i depends only on (seed, image_ids[i])."""
    ids = _check_ids(image_ids)
    height = _check_int("height", height, _MIN_SIZE)
    width = _check_int("width", width, _MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    images = np.empty((len(ids), height, width), dtype=np.uint8)  # (N, H, W)
    for i, image_id in enumerate(ids):
        images[i] = _render(np.random.default_rng([seed, image_id]), height, width)
    return images


def radial_amplitude_spectrum(images) -> tuple[np.ndarray, np.ndarray]:
    """Mean over images of the radially averaged |FFT| of each mean-subtracted image.

    images: (N, H, W) or (H, W). Returns (frequencies in cycles/pixel, amplitude), one value per ring of
    width 1 / min(H, W) up to 0.5 cycles/pixel, DC excluded.
    """
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or len(x) == 0 or min(x.shape[1:]) < 2 or x.dtype.kind not in "iuf":
        raise InvalidInput(
            f"images: expected a non-empty real array (N, H, W) or (H, W) with H, W >= 2, "
            f"got dtype {x.dtype} shape {x.shape}"
        )
    x = x.astype(np.float64)
    x -= x.mean(axis=(1, 2), keepdims=True)
    amplitude = np.abs(np.fft.rfft2(x)).mean(axis=0)  # (H, W // 2 + 1)
    f = np.hypot(np.fft.fftfreq(x.shape[1])[:, None], np.fft.rfftfreq(x.shape[2])[None, :])
    step = 1.0 / min(x.shape[1:])
    ring = np.rint(f / step).astype(np.int64)
    keep = (ring >= 1) & (f <= 0.5)
    sums = np.bincount(ring[keep], weights=amplitude[keep])
    counts = np.bincount(ring[keep])
    filled = counts > 0
    return np.flatnonzero(filled) * step, sums[filled] / counts[filled]


def _render(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One image (H, W) uint8 from its own generator; the draw order is fixed, so the result is too."""
    n = _N_SHAPES
    fields = _texture_fields(rng, height, width)  # (4, H, W), unit variance each
    # Shapes: quantized radius/kind/aspect/angle (each combination is a cached mask) and integer centre.
    radii = _radii(height)
    r_min, r_max = radii[0], radii[-1]
    radius = (r_min**-2 - rng.random(n) * (r_min**-2 - r_max**-2)) ** -0.5  # density ~ r^-3
    level = np.rint(np.log(radius / r_min) / np.log(r_max / r_min) * (_N_RADII - 1)).astype(np.int64)
    kind = rng.choice(3, size=n, p=_KIND_P)
    variant = rng.integers(0, _N_POLYGONS, n)
    shape = np.where(kind == 2, variant, variant % _N_ASPECTS)  # polygon variant, or aspect index
    angle = rng.integers(0, _N_ANGLES, n)
    cy, cx = rng.integers(0, height, n), rng.integers(0, width, n)
    keep = rng.random(n) < np.clip(_CLUMP[0] + _CLUMP[1] * fields[0][cy, cx], 0.02, 1.0)

    # Labels: 0 is the background, shape j is label j + 1, and a pixel shows the highest label covering it,
    # i.e. shapes are dropped in label order. Small shapes (most of them) go all at once: scatter each
    # one's pixel offsets on a padded canvas (so they may spill over the border) and keep the max label.
    count, first, offsets, n_small, pad = _small_stamps(height, width)
    canvas = np.zeros((height + 2 * pad, width + 2 * pad), dtype=np.int16)
    small = keep & (level < n_small)
    stamp_index = (((level * 3 + kind) * _N_POLYGONS + shape) * _N_ANGLES + angle)[small]
    sizes = count[stamp_index]
    pixel = np.arange(int(sizes.sum())) + np.repeat(first[stamp_index] - (np.cumsum(sizes) - sizes), sizes)
    centre = (cy[small] + pad) * canvas.shape[1] + cx[small] + pad
    np.maximum.at(
        canvas.reshape(-1),
        np.repeat(centre, sizes) + offsets[pixel],
        np.repeat(np.flatnonzero(small).astype(np.int16) + 1, sizes),
    )
    # Large shapes one by one in label order, each inside its bounding box only; then the max of both.
    large = np.zeros((height, width), dtype=np.int16)
    big = np.flatnonzero(keep & (level >= n_small))
    columns = (big, kind[big], level[big], shape[big], angle[big], cy[big], cx[big])
    for j, k, lv, s, t, y, x in zip(*(c.tolist() for c in columns), strict=True):
        stamp = _stamp(k, lv, s, t, height)  # (2R + 1, 2R + 1)
        y0, x0 = y - stamp.shape[0] // 2, x - stamp.shape[1] // 2
        ya, yb = max(y0, 0), min(y0 + stamp.shape[0], height)
        xa, xb = max(x0, 0), min(x0 + stamp.shape[1], width)
        np.copyto(large[ya:yb, xa:xb], j + 1, where=stamp[ya - y0 : yb - y0, xa - x0 : xb - x0])
    labels = np.maximum(canvas[pad : pad + height, pad : pad + width], large)  # (H, W)

    # Mean luminance per label: a per-image key and spread; a bounded Beta plus the light where the shape
    # sits (field 1 at its centre), so neighbours share shadow or sunlight.
    key, spread = rng.uniform(105.0, 140.0), rng.uniform(0.8, 1.3)
    light = np.concatenate([[0.0], fields[1][cy, cx]])
    mean = np.clip(key + spread * (_LUM[0] * (rng.beta(1.4, 1.4, n + 1) - 0.5) + _LUM[1] * light), 8.0, 247.0)
    # Texture contrast ~ Weber fraction of the mean, capped at 3 sd from 0 and 255 so little clips. Each
    # label mixes shading (field 0) with grain, streaks or patches (1-3), with a random sign.
    contrast = np.minimum(mean * rng.uniform(*_WEBER, n + 1), np.minimum(mean, 255.0 - mean) / 3.0)
    mix = rng.uniform(0.0, 0.5 * np.pi, n + 1)
    weights = np.zeros((n + 1, 4))  # (labels, fields)
    weights[:, 0] = contrast * np.sin(mix)
    weights[np.arange(n + 1), rng.integers(1, 4, n + 1)] = contrast * np.cos(mix) * rng.choice([-1, 1], n + 1)

    image = np.take(mean.astype(np.float32), labels)  # (H, W)
    for f in range(4):
        image += np.take(weights[:, f].astype(np.float32), labels) * fields[f]
    return _to_uint8(_blur(image))


def _texture_fields(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Four unit-variance fields (4, H, W): shading 1/f^2, grain 1/f, oriented streaks, sharp patches."""
    filters = (
        _spectrum_filter(height, width, 20 + int(rng.integers(-2, 3)), 0, 0),
        _spectrum_filter(height, width, 11 + int(rng.integers(-2, 3)), 0, 0),
        _spectrum_filter(height, width, 10, int(rng.integers(1, 4)), int(rng.integers(0, _N_ANGLES))),
        _spectrum_filter(height, width, 15 + int(rng.integers(-2, 3)), 0, 0),
    )
    # Uniform real and imaginary parts: after the FFT the field is Gaussian (central limit theorem).
    spectrum = (rng.random((4, height, width // 2 + 1, 2), dtype=np.float32) - 0.5).view(np.complex64)
    spectrum = spectrum[..., 0]  # (4, H, W // 2 + 1)
    for f, filt in enumerate(filters):
        spectrum[f] *= filt
    fields = np.fft.irfft2(spectrum, s=(height, width))  # (4, H, W) float32
    np.sign(fields[3], out=fields[3])  # thresholded 1/f^1.5 noise: blobs with sharp edges at every scale
    return fields


@functools.lru_cache(maxsize=256)
def _spectrum_filter(height: int, width: int, alpha10: int, kappa: int, angle: int) -> np.ndarray:
    """Amplitude f^-(alpha10/10) * exp(kappa (cos 2(theta - theta0) - 1)) on the rfft grid; unit variance."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = np.inf  # no DC: every field has zero mean
    orientation = np.cos(2.0 * (np.arctan2(fy, fx) - np.pi * angle / _N_ANGLES)) - 1.0
    filt = f ** (-alpha10 / 10) * np.exp(kappa * orientation)
    # E var(irfft2) = sum(w filt^2) E|u|^2 / N^2 with E|u|^2 = 1/6 (uniform real and imaginary parts);
    # w = 2 for columns standing for a conjugate pair, 1/2 for the real-only first and Nyquist columns.
    w = np.full(fx.shape, 2.0)
    w[:, 0] = 0.5
    if width % 2 == 0:
        w[:, -1] = 0.5
    return (filt * np.sqrt(6.0 * (height * width) ** 2 / np.sum(w * filt**2))).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _radii(height: int) -> np.ndarray:
    """The quantized radii in pixels, log-spaced from the smallest to the largest shape."""
    return np.geomspace(max(_R_MIN * height, 0.5), _R_MAX * height, _N_RADII)


@functools.lru_cache(maxsize=8192)  # all large stamps of a 144-pixel height: ~4400, ~31 MB
def _stamp(kind: int, level: int, shape: int, angle: int, height: int) -> np.ndarray:
    """Boolean mask (2R + 1, 2R + 1) of one quantized shape centred in its box."""
    radius = _radii(height)[level]
    minor = radius * _ASPECTS[shape % _N_ASPECTS]
    half = int(np.ceil(np.hypot(radius, minor) if kind == 1 else radius))
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    theta = np.pi * angle / _N_ANGLES
    u = x * np.cos(theta) + y * np.sin(theta)  # coordinates along the shape's own axes
    v = -x * np.sin(theta) + y * np.cos(theta)
    if kind == 0:  # ellipse
        return (u / radius) ** 2 + (v / minor) ** 2 <= 1.0
    if kind == 1:  # rectangle
        return (np.abs(u) <= radius) & (np.abs(v) <= minor)
    # Convex polygon: 3-6 vertices at jittered angles on the circle, inside every edge's half-plane.
    jitter = np.random.default_rng([shape, 12345]).uniform(-0.3, 0.3, 3 + shape % 4)
    phi = np.sort(2 * np.pi * (np.arange(len(jitter)) + jitter) / len(jitter))
    inside = np.ones_like(u, dtype=bool)
    for a, b in zip(phi, np.roll(phi, -1), strict=True):
        normal = 0.5 * (a + b) + (np.pi if b < a else 0.0)  # outward normal of the edge from a to b
        inside &= u * np.cos(normal) + v * np.sin(normal) <= radius * np.cos(0.5 * ((b - a) % (2 * np.pi)))
    return inside


@functools.lru_cache(maxsize=8)
def _small_stamps(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Every small stamp as flat pixel offsets on the padded canvas, concatenated.

    Returns count and first (per stamp index ((level * 3 + kind) * polygons + shape) * angles + angle),
    offsets, the number of small radius levels and the canvas padding.
    """
    n_small = int(np.searchsorted(_radii(height), _R_SPLIT * height, side="right"))
    stamps = [
        _stamp(k, lv, s, t, height)
        for lv in range(n_small)
        for k in range(3)
        for s in range(_N_POLYGONS)
        for t in range(_N_ANGLES)
    ]
    pad = max(m.shape[0] // 2 for m in stamps)
    offsets = [
        (dy - m.shape[0] // 2) * (width + 2 * pad) + dx - m.shape[1] // 2
        for m in stamps
        for dy, dx in [np.nonzero(m)]
    ]
    count = np.array([len(o) for o in offsets])
    return count, np.cumsum(count) - count, np.concatenate(offsets), n_small, pad


def _blur(image: np.ndarray) -> np.ndarray:
    """Separable [a, 1 - 2a, a] blur with replicated borders (H, W): slight optical blur, edges stay sharp."""
    for axis in (0, 1):
        x = np.moveaxis(image, axis, 0)
        out = (1.0 - 2.0 * _BLUR) * x
        out[1:] += _BLUR * x[:-1]
        out[:-1] += _BLUR * x[1:]
        out[0] += _BLUR * x[0]
        out[-1] += _BLUR * x[-1]
        image = np.moveaxis(out, 0, axis)
    return image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image + np.float32(0.5), 0.0, 255.0).astype(np.uint8)


def _check_ids(image_ids) -> list[int]:
    expected = "image_ids: expected a 1-D list or array of integers"
    try:
        ids = np.asarray(image_ids)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"{expected}, got {image_ids!r}") from error
    if ids.ndim != 1:
        raise InvalidInput(f"{expected}, got shape {ids.shape}")
    if ids.dtype.kind not in "iuf":  # signed, unsigned, float (checked below for whole numbers)
        raise InvalidInput(f"image_ids: expected integer values, got dtype {ids.dtype}")
    bad = ~np.isfinite(ids) | (ids < 0) | (ids != np.round(ids)) if ids.size else np.zeros(0, dtype=bool)
    if bad.any():
        raise InvalidInput(f"image_ids: expected non-negative integers, got {ids[bad][0].item()!r}")
    return [int(i) for i in ids.tolist()]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInput(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)
