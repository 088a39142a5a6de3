"""The ground-truth population: model V1 neurons whose expected responses define a simulated mouse.

Each neuron is a Gabor quadrature pair at a retinotopic position (following its cortical x, y), mixing a
simple-cell (half-squared, phase-sensitive) and a complex-cell (energy, phase-invariant) drive, divided by
the local contrast energy around its receptive field (divisive normalization: centre and surround), raised
to an expansive power that saturates, and scaled by a gain that running and pupil-linked arousal modulate
differently per neuron. Eye position translates the whole image on the retina, so all receptive fields
shift together. A linear-nonlinear model can fit only the simple-cell part; the rest needs a non-linear
core.

Everything is computed on a fixed retinal grid (36 x 64 pixels, the models' input resolution); images of
any size are area-resampled onto it. Arrays: B trials, N neurons, P = 36*64 grid pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from twin.errors import InvalidInput
from twin.resize import interpolation_matrix

__all__ = ["GRID", "Population", "calibrate_population", "resample_to_grid", "sample_population"]

GRID = (36, 64)  # (H, W) of the retinal grid
_PIXEL_MEAN, _PIXEL_STD = 120.0, 55.0  # raw pixel units -> luminance contrast
_POOL_PERIODS = (4.0, 8.0, 16.0)  # normalization pool: untuned bands spanning the neurons' periods
_PAD = 8  # zero padding (mean luminance) around the grid for FFT filtering and eye shifts
# Population fields that describe the recording, not one neuron each
_RECORDING_CONSTANTS = ("behavior_mean", "behavior_std", "eye_center", "eye_to_grid")


@dataclass(frozen=True, eq=False)
class Population:
    """Parameters of N model neurons (arrays of length N unless noted) and the recording's constants."""

    center: np.ndarray  # (N, 2) receptive-field centre (x, y) in grid pixels
    orientation: np.ndarray  # radians
    period: np.ndarray  # grid pixels per cycle
    phase: np.ndarray  # radians
    envelope: np.ndarray  # Gaussian envelope sd along the grating, grid pixels
    aspect: np.ndarray  # envelope sd across / along
    simple_weight: np.ndarray  # 1 = simple cell, 0 = complex cell
    semi_saturation: np.ndarray  # sigma^2 of the normalization
    center_pool: np.ndarray  # weight of the energy pooled at the RF
    surround_pool: np.ndarray  # weight of the energy pooled around it (surround suppression)
    exponent: np.ndarray  # output power
    saturation: np.ndarray  # the output saturates here (sampled as a multiple of the median output)
    baseline: np.ndarray  # spontaneous drive
    amplitude: np.ndarray  # response scale (heterogeneous rates)
    beta_running: np.ndarray  # log-gain per sd of running speed
    beta_pupil: np.ndarray  # log-gain per sd of pupil dilation
    noise_shape: np.ndarray  # Gamma shape k of the trial-to-trial noise (small = heavy tailed)
    noise_loadings: np.ndarray  # (N, K) loadings on shared multiplicative fluctuations
    behavior_mean: np.ndarray  # (3,) behaviour at which the gain is 1
    behavior_std: np.ndarray  # (3,)
    eye_center: np.ndarray  # (2,) pupil centre at which the image is not shifted
    eye_to_grid: np.ndarray  # (2, 2) grid pixels of image shift per pupil-centre unit

    @property
    def n_neurons(self) -> int:
        return int(self.center.shape[0])

    def save(self, path: Path) -> None:
        np.savez(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> Population:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{f.name: data[f.name] for f in fields(cls)})

    def subset(self, columns: np.ndarray) -> Population:
        """The neurons at `columns` (indices into the N neurons), with the recording's constants."""
        n = self.n_neurons
        return replace(
            self,
            **{
                f.name: getattr(self, f.name)[columns]
                for f in fields(self)
                if f.name not in _RECORDING_CONSTANTS and getattr(self, f.name).shape[:1] == (n,)
            },
        )

    def filters(self) -> np.ndarray:
        """(P, 2N) float32: the even and odd Gabor of every neuron, zero-mean, unit norm."""
        h, w = GRID
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        out = np.empty((h * w, 2 * self.n_neurons), np.float32)
        for start in range(0, self.n_neurons, 1024):
            s = slice(start, start + 1024)
            dx = xx.reshape(-1, 1) - self.center[s, 0]  # (P, n)
            dy = yy.reshape(-1, 1) - self.center[s, 1]
            cos, sin = np.cos(self.orientation[s]), np.sin(self.orientation[s])
            along = dx * cos + dy * sin
            across = -dx * sin + dy * cos
            sd = self.envelope[s]
            envelope = np.exp(-0.5 * ((along / sd) ** 2 + (across / (sd * self.aspect[s])) ** 2))
            argument = 2 * np.pi * along / self.period[s] + self.phase[s]
            for k, wave in enumerate((np.cos(argument), np.sin(argument))):
                g = envelope * wave
                g -= envelope * (g.sum(0) / envelope.sum(0))  # no response to uniform luminance
                g /= np.linalg.norm(g, axis=0) + 1e-8
                cols = slice(
                    start + k * self.n_neurons, min(start + 1024, self.n_neurons) + k * self.n_neurons
                )
                out[:, cols] = g
        return out

    def components(self, grid_images: np.ndarray, filters: np.ndarray) -> tuple[np.ndarray, ...]:
        """Un-normalized drive, centre energy and surround energy, each (B, N), of contrast images."""
        b = grid_images.shape[0]
        n = self.n_neurons
        linear = grid_images.reshape(b, -1) @ filters  # (B, 2N)
        even, odd = linear[:, :n], linear[:, n:]
        simple = 2.0 * np.square(np.maximum(even, 0.0))
        complex_ = 0.5 * (np.square(even) + np.square(odd))
        drive = self.simple_weight * simple + (1.0 - self.simple_weight) * complex_
        return (drive, *_pooled_energy(grid_images, self.center))

    def drive(self, grid_images: np.ndarray, filters: np.ndarray) -> np.ndarray:
        """Normalized, exponentiated, saturating drive (B, N) of contrast images on the grid (B, H, W)."""
        drive, center_energy, surround_energy = self.components(grid_images, filters)
        pool = self.semi_saturation + self.center_pool * center_energy + self.surround_pool * surround_energy
        expanded = np.power(drive / pool, self.exponent)
        return self.baseline + expanded / (1.0 + expanded / self.saturation)

    def gain(self, behavior: np.ndarray | None) -> np.ndarray:
        """(B, N) multiplicative gain from running and pupil dilation; 1 at the mean behaviour."""
        if behavior is None:
            return np.ones((1, self.n_neurons), np.float32)
        z = (behavior - self.behavior_mean) / self.behavior_std  # (B, 3)
        log_gain = z[:, 2:3] * self.beta_running + z[:, 0:1] * self.beta_pupil
        return np.exp(np.clip(log_gain, -4.0, 4.0)).astype(np.float32)

    def shift(self, pupil_center: np.ndarray | None, batch: int) -> np.ndarray:
        """(B, 2) image translation on the grid, (dx, dy) pixels, caused by eye position."""
        if pupil_center is None:
            return np.zeros((batch, 2), np.float32)
        return ((pupil_center - self.eye_center) @ self.eye_to_grid.T).astype(np.float32)

    def expected_responses(
        self,
        images: np.ndarray,
        behavior: np.ndarray | None = None,
        pupil_center: np.ndarray | None = None,
        *,
        filters: np.ndarray | None = None,
        chunk: int = 512,
    ) -> np.ndarray:
        """Noise-free expected responses (B, N) float32 to raw-pixel images (B, [1,] H, W)."""
        images = np.asarray(images)
        if images.ndim == 4:
            if images.shape[1] != 1:
                raise InvalidInput(f"images: shape {images.shape}; expected (B, 1, H, W) or (B, H, W)")
            images = images[:, 0]
        if images.ndim != 3 or images.shape[0] == 0:
            raise InvalidInput(
                f"images: shape {images.shape}; expected (B, 1, H, W) or (B, H, W) with B >= 1"
            )
        b = images.shape[0]
        for name, value, width in (("behavior", behavior, 3), ("pupil_center", pupil_center, 2)):
            if value is not None and np.shape(value) != (b, width):
                raise InvalidInput(f"{name}: shape {np.shape(value)}; expected ({b}, {width})")
        filters = self.filters() if filters is None else filters
        out = np.empty((b, self.n_neurons), np.float32)
        for start in range(0, b, chunk):
            s = slice(start, start + chunk)
            grid = to_contrast(resample_to_grid(images[s]))
            shifts = self.shift(
                None if pupil_center is None else np.asarray(pupil_center[s], np.float32), grid.shape[0]
            )
            grid = translate(grid, shifts)
            gain = self.gain(None if behavior is None else np.asarray(behavior[s], np.float32))
            out[s] = self.amplitude * gain * self.drive(grid, filters)
        return out


def to_contrast(grid_images: np.ndarray) -> np.ndarray:
    return ((grid_images - _PIXEL_MEAN) / _PIXEL_STD).astype(np.float32)


def resample_to_grid(images: np.ndarray) -> np.ndarray:
    """(B, H, W) raw images -> (B, 36, 64) float32 by area averaging (identity at 36 x 64)."""
    h, w = images.shape[-2:]
    if (h, w) == GRID:
        return images.astype(np.float32)
    rows = interpolation_matrix(h, GRID[0], "area").astype(np.float32)
    cols = interpolation_matrix(w, GRID[1], "area").astype(np.float32)
    return np.einsum("yh,bhw,xw->byx", rows, images.astype(np.float32), cols, optimize=True)


def translate(grid: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Translate each image by (dx, dy) grid pixels with bilinear interpolation; mean luminance outside."""
    if not np.any(shifts):
        return grid
    b, h, w = grid.shape
    padded = np.pad(grid, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    ys = np.arange(h, dtype=np.float32)[None, :, None] - shifts[:, 1, None, None] + _PAD  # (B, H, 1)
    xs = np.arange(w, dtype=np.float32)[None, None, :] - shifts[:, 0, None, None] + _PAD  # (B, 1, W)
    ys = np.clip(ys, 0, h + 2 * _PAD - 1.001)
    xs = np.clip(xs, 0, w + 2 * _PAD - 1.001)
    y0, x0 = np.floor(ys).astype(np.intp), np.floor(xs).astype(np.intp)
    fy, fx = ys - y0, xs - x0
    idx = np.arange(b)[:, None, None]
    top = padded[idx, y0, x0] * (1 - fx) + padded[idx, y0, x0 + 1] * fx
    bottom = padded[idx, y0 + 1, x0] * (1 - fx) + padded[idx, y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _frequency_grid() -> tuple[np.ndarray, np.ndarray]:
    h, w = GRID[0] + 2 * _PAD, GRID[1] + 2 * _PAD
    return np.meshgrid(np.fft.fftfreq(h), np.fft.rfftfreq(w), indexing="ij")


def _gaussian_transfer(sd: float) -> np.ndarray:
    fy, fx = _frequency_grid()
    return np.exp(-2 * (np.pi * sd) ** 2 * (fx**2 + fy**2))


def _pool_filters() -> np.ndarray:
    """(F, Hp, Wp//2+1) transfer functions of untuned band-pass (difference of Gaussians) filters.

    The normalization pool of V1 neurons is broadly tuned for orientation, so its energy is taken
    from isotropic bands spanning the neurons' spatial frequencies.
    """
    return np.stack([_gaussian_transfer(p / 6) - _gaussian_transfer(p / 3) for p in _POOL_PERIODS])


_POOL_CACHE: dict[str, np.ndarray] = {}


def _pooled_energy(grid_images: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local contrast energy around each neuron's centre: (B, N) centre pool and (B, N) surround pool."""
    if not _POOL_CACHE:
        bank = _pool_filters()
        _POOL_CACHE.update(
            bank=bank.astype(np.complex64),
            center=_gaussian_transfer(2.0).astype(np.complex64),
            surround=_gaussian_transfer(6.0).astype(np.complex64),
        )
    shape = (GRID[0] + 2 * _PAD, GRID[1] + 2 * _PAD)
    padded = np.pad(grid_images.astype(np.float32), ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    spectrum = np.fft.rfft2(padded)[:, None]  # (B, 1, Hp, Wp//2+1)
    bands = np.fft.irfft2(spectrum * _POOL_CACHE["bank"][None], s=shape)  # (B, F, Hp, Wp)
    energy_spectrum = np.fft.rfft2(np.square(bands).sum(1))
    maps = [np.fft.irfft2(energy_spectrum * _POOL_CACHE[k], s=shape) for k in ("center", "surround")]
    return tuple(_sample(m, centers) for m in maps)  # type: ignore[return-value]


def _sample(maps: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Bilinear values of maps (B, Hp, Wp) at grid positions centers (N, 2) -> (B, N)."""
    x = np.clip(centers[:, 0] + _PAD, 0, maps.shape[2] - 1.001)
    y = np.clip(centers[:, 1] + _PAD, 0, maps.shape[1] - 1.001)
    x0, y0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
    fx, fy = x - x0, y - y0
    top = maps[:, y0, x0] * (1 - fx) + maps[:, y0, x0 + 1] * fx
    bottom = maps[:, y0 + 1, x0] * (1 - fx) + maps[:, y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def sample_population(
    rng: np.random.Generator,
    coordinates: np.ndarray,
    behavior_mean: np.ndarray,
    behavior_std: np.ndarray,
    eye_center: np.ndarray,
) -> Population:
    """Draw N neurons whose receptive-field centres follow their cortical coordinates (N, 3) in um.

    Retinotopy: a recording's field of view maps linearly (rotated, possibly mirrored) onto a patch of
    the visual field near the screen centre, plus per-neuron scatter. Response normalization constants
    are set later by `calibrate_population` from the recording's own images.
    """
    n = coordinates.shape[0]
    xy = coordinates[:, :2] - coordinates[:, :2].mean(0)
    spread = np.maximum(np.ptp(xy, axis=0), 1.0)
    angle = rng.uniform(-0.4, 0.4)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mirror = np.diag([rng.choice([-1.0, 1.0]), 1.0])
    patch = np.array([rng.uniform(14, 20), rng.uniform(9, 12)])  # visual-field extent in grid pixels
    mapped = (xy / spread) @ rotation.T @ mirror * patch
    origin = np.array([GRID[1] / 2 + rng.uniform(-5, 5), GRID[0] / 2 + rng.uniform(-3, 3)])
    center = origin + mapped + rng.normal(0, 1.5, (n, 2))
    center = np.clip(center, [4, 4], [GRID[1] - 5, GRID[0] - 5]).astype(np.float32)

    period = np.exp(rng.uniform(np.log(4.0), np.log(16.0), n))
    simple = rng.random(n) < 0.4
    simple_weight = np.where(simple, rng.beta(5, 1.5, n), rng.beta(1.5, 5, n))

    def f32(values: ArrayLike) -> np.ndarray:
        return np.asarray(values, np.float32)

    return Population(
        center=center,
        orientation=f32(rng.uniform(0, np.pi, n)),
        period=f32(period),
        phase=f32(rng.uniform(0, 2 * np.pi, n)),
        envelope=f32(np.maximum(period * rng.uniform(0.3, 0.55, n), 1.2)),
        aspect=f32(rng.uniform(0.6, 1.2, n)),
        simple_weight=f32(simple_weight),
        semi_saturation=f32(np.exp(rng.uniform(np.log(0.3), np.log(3.0), n))),  # x typical drive, later
        center_pool=f32(rng.uniform(0.1, 0.8, n)),
        surround_pool=f32(rng.gamma(2.0, 0.4, n)),
        exponent=f32(rng.uniform(1.0, 2.0, n)),
        saturation=f32(rng.uniform(4.0, 12.0, n)),
        baseline=f32(rng.uniform(0.02, 0.15, n)),
        amplitude=f32(np.exp(rng.normal(np.log(0.6), 0.7, n))),
        beta_running=f32(rng.normal(0.25, 0.2, n)),
        beta_pupil=f32(rng.normal(0.1, 0.15, n)),
        noise_shape=np.ones(n, np.float32),
        # A global fluctuation (mostly positive loadings: noise correlations ~0.02-0.05 as in mouse V1)
        # and two that split the population.
        noise_loadings=f32(rng.normal(0, 1, (n, 3)) * np.array([0.1, 0.15, 0.1]) + np.array([0.25, 0, 0])),
        behavior_mean=f32(behavior_mean),
        behavior_std=f32(behavior_std),
        eye_center=f32(eye_center),
        eye_to_grid=f32(np.diag([0.18, 0.18])),
    )


def calibrate_population(population: Population, images: np.ndarray) -> Population:
    """Put every neuron's normalization in its operating range for this stimulus set.

    The sampled semi-saturation and pool weights are relative; here they are scaled by each neuron's
    median drive and pooled energies over `images` (B, [1,] H, W raw pixels), so a typical image gives a
    normalized drive of order one whatever the neuron's size or spatial frequency.
    """
    images = images[:, 0] if images.ndim == 4 else images
    grid = to_contrast(resample_to_grid(images))
    drive, center_energy, surround_energy = population.components(grid, population.filters())
    typical = np.median(drive, axis=0) + 1e-6
    scaled = replace(
        population,
        semi_saturation=(population.semi_saturation * typical).astype(np.float32),
        center_pool=(population.center_pool * typical / (np.median(center_energy, 0) + 1e-6)).astype(
            np.float32
        ),
        surround_pool=(population.surround_pool * typical / (np.median(surround_energy, 0) + 1e-6)).astype(
            np.float32
        ),
    )
    pool = (
        scaled.semi_saturation + scaled.center_pool * center_energy + scaled.surround_pool * surround_energy
    )
    typical_output = np.median(np.power(drive / pool, scaled.exponent), axis=0) + 1e-6
    return replace(scaled, saturation=(scaled.saturation * typical_output).astype(np.float32))
