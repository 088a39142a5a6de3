"""The SENSORIUM 2022 metrics: correlations, FEV/FEVE and the oracle (jackknife) noise ceiling.

Conventions follow SENSORIUM.md §3 and the reference code (sensorium, neuralpredictors 0.3.0):
Pearson correlation with sd (ddof=0) + 1e-8 in each denominator, NaN correlations set to 0 with a
warning, neurons averaged with equal weight. Arrays are (trials, neurons); trials are grouped into
images by `image_ids`. Everything is computed in float64 over blocks of neurons, so float32 memmaps
of a whole recording are read once per block and never copied whole.

Repeat-based metrics (FEV, FEVE, oracle) use only the trials of images shown at least twice, for the
noise variance, the total variance and the MSE alike, so that a tier mixing singletons and repeats is
scored on the same trials throughout (on a test tier, where every image repeats, this is all trials).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from twin.errors import InvalidInput

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "Scores",
    "correlation",
    "correlation_to_average",
    "fev",
    "feve",
    "oracle_correlation",
    "repeat_variances",
    "score",
    "single_trial_correlation",
]

_EPS = 1e-8  # added to each sd, as in neuralpredictors' `corr`
_BLOCK_ELEMENTS = 1 << 22  # float64 elements per block of neurons (32 MiB): bounds peak memory


# ---------------------------------------------------------------------------------------------------
# Validation and grouping


def _as_trials_by_neurons(name: str, x: Any) -> np.ndarray:
    """`x` as a (trials, neurons) array without copying; 1-D means one neuron."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise InvalidInput(f"{name}: dtype {arr.dtype}; expected a numeric (bool, int or float) array")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InvalidInput(f"{name}: shape {arr.shape}; expected 2-D (trials, neurons) or 1-D (trials,)")
    if arr.shape[0] < 2:
        raise InvalidInput(f"{name}: shape {arr.shape}; expected at least 2 trials")
    if arr.shape[1] < 1:
        raise InvalidInput(f"{name}: shape {arr.shape}; expected at least 1 neuron")
    return arr


def _pair(responses: Any, predictions: Any) -> tuple[np.ndarray, np.ndarray]:
    r = _as_trials_by_neurons("responses", responses)
    p = _as_trials_by_neurons("predictions", predictions)
    if r.shape != p.shape:
        raise InvalidInput(
            f"predictions: shape {p.shape}; expected the shape of responses {r.shape} (trials, neurons)"
        )
    return r, p


def _check_threshold(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InvalidInput(f"threshold: {threshold!r}; expected a number such as 0.15") from None
    if np.isnan(value):
        raise InvalidInput(f"threshold: {threshold!r}; expected a number such as 0.15")
    return value


@dataclass(frozen=True)
class _Images:
    """Trials grouped by image: `order` lists trial indices image by image, `counts` the repeats."""

    order: np.ndarray  # (trials,) int: trial indices sorted by image id (stable)
    counts: np.ndarray  # (images,) int: repeats of each image, in the order of `order`
    n_trials: int  # trials in the whole tier

    @property
    def starts(self) -> np.ndarray:
        """Position in `order` of each image's first trial (for np.add.reduceat)."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]])


def _group_by_image(image_ids: Any, n_trials: int) -> _Images:
    ids = np.asarray(image_ids)
    if ids.ndim != 1 or ids.shape[0] != n_trials:
        raise InvalidInput(f"image_ids: shape {ids.shape}; expected 1-D with one id per trial ({n_trials},)")
    try:
        _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    except TypeError as exc:
        raise InvalidInput(f"image_ids: dtype {ids.dtype} cannot be sorted ({exc}); expected ids") from None
    order = np.argsort(inverse.reshape(-1), kind="stable")
    return _Images(order=order, counts=counts, n_trials=n_trials)


def _distinct(images: _Images, metric: str) -> _Images:
    """`images`, checked to hold at least 2 distinct images (a correlation over images needs them)."""
    if len(images.counts) < 2:
        raise InvalidInput(
            f"image_ids: all {images.n_trials} trials show one image; {metric} needs at least 2 images"
        )
    return images


def _repeated(images: _Images, metric: str) -> _Images:
    """The images shown at least twice; a tier with fewer than 2 of them has no repeats to use."""
    keep = images.counts >= 2
    if keep.sum() < 2:
        n_images = len(images.counts)
        detail = "" if not keep.any() else f", only {int(keep.sum())} shown at least twice"
        raise InvalidInput(
            f"image_ids: {images.n_trials} trials of {n_images} distinct images{detail}; "
            f"{metric} needs images shown at least twice (a test tier)"
        )
    if keep.all():
        return images
    return _Images(
        order=images.order[np.repeat(keep, images.counts)],
        counts=images.counts[keep],
        n_trials=images.n_trials,
    )


# ---------------------------------------------------------------------------------------------------
# Per-block kernels: float64 (rows, neurons) blocks in, (neurons,) out. They never write to their inputs.


def _blocks(arrays: tuple[np.ndarray, ...], rows: np.ndarray | None) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield float64 C-ordered copies of `arrays[:, block]` (rows picked by `rows`), block by block of
    neurons: the reductions then add in one order whatever the callers' memory layout (a Fortran-ordered
    prediction scored 1 ulp apart from the same values C-ordered)."""
    n_rows = arrays[0].shape[0] if rows is None else len(rows)
    n_cols = arrays[0].shape[1]
    width = max(1, _BLOCK_ELEMENTS // max(n_rows, 1))
    for start in range(0, n_cols, width):
        cols = slice(start, min(start + width, n_cols))
        yield tuple(
            np.ascontiguousarray(x[:, cols] if rows is None else x[rows, cols], dtype=np.float64)
            for x in arrays
        )


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per column of two (rows, cols) float64 blocks, SENSORIUM's convention."""
    ac = a - a.mean(axis=0)
    bc = b - b.mean(axis=0)
    sd_a = np.sqrt((ac * ac).mean(axis=0))
    sd_b = np.sqrt((bc * bc).mean(axis=0))
    return (ac * bc).mean(axis=0) / ((sd_a + _EPS) * (sd_b + _EPS))


def _image_sums(x: np.ndarray, images: _Images) -> np.ndarray:
    """(images, cols) sums over repeats of a block whose rows follow `images.order`."""
    return np.add.reduceat(x, images.starts, axis=0)


def _image_means(x: np.ndarray, images: _Images) -> np.ndarray:
    """(images, cols) means over repeats of a block whose rows follow `images.order`."""
    return _image_sums(x, images) / images.counts[:, None]


def _variances(x: np.ndarray, images: _Images) -> tuple[np.ndarray, np.ndarray]:
    """Noise variance s2_n (mean over images of the ddof=1 variance over repeats) and total s2_t."""
    dev = x - np.repeat(_image_means(x, images), images.counts, axis=0)  # (rows, cols)
    s2_n = (_image_sums(dev * dev, images) / (images.counts[:, None] - 1)).mean(axis=0)
    s2_t = x.var(axis=0, ddof=1)
    return s2_n, s2_t


def _leave_one_out_means(x: np.ndarray, images: _Images) -> np.ndarray:
    """Each trial's jackknife oracle: the mean of the other repeats of its image, (sum - x)/(r - 1)."""
    sums = np.repeat(_image_sums(x, images), images.counts, axis=0)  # (rows, cols)
    return (sums - x) / (np.repeat(images.counts, images.counts) - 1)[:, None]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN (no warning) where den is 0: undefined values are reported once, later."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


# ---------------------------------------------------------------------------------------------------
# Reductions over neurons


def _nan_to_zero(rho: np.ndarray, what: str) -> np.ndarray:
    bad = np.isnan(rho)
    if bad.any():
        warnings.warn(
            f"{what}: {int(bad.sum())} of {bad.size} neurons gave a NaN correlation (NaN or inf in the "
            "inputs); set to 0",
            RuntimeWarning,
            stacklevel=3,
        )
        rho = np.where(bad, 0.0, rho)
    return rho


def _nanmean(values: np.ndarray, what: str) -> float:
    bad = np.isnan(values)
    if bad.any():
        warnings.warn(
            f"{what}: {int(bad.sum())} of {bad.size} neurons are NaN (NaN in the inputs or zero variance); "
            "left out of the mean",
            RuntimeWarning,
            stacklevel=3,
        )
    return float(values[~bad].mean()) if not bad.all() else float("nan")


def _result(values: np.ndarray, per_neuron: bool) -> float | np.ndarray:
    return values if per_neuron else float(values.mean())


# ---------------------------------------------------------------------------------------------------
# Public metrics


def correlation(a: Any, b: Any, axis: int = 0) -> np.ndarray:
    """Pearson correlation of `a` and `b` along `axis` (sd ddof=0, + 1e-8), one value per column.

    Returns a float64 array of the shape of `a` without `axis` (0-d for 1-D inputs). NaN results (from
    NaN or inf in the inputs) become 0 with a RuntimeWarning; constant columns give 0.
    """
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    for name, arr in (("a", a_arr), ("b", b_arr)):
        if arr.dtype.kind not in "biuf":
            raise InvalidInput(f"{name}: dtype {arr.dtype}; expected a numeric (bool, int or float) array")
    if a_arr.shape != b_arr.shape:
        raise InvalidInput(f"b: shape {b_arr.shape}; expected the shape of a {a_arr.shape}")
    if not -a_arr.ndim <= axis < a_arr.ndim:
        raise InvalidInput(f"axis: {axis}; expected an axis of arrays of shape {a_arr.shape}")
    n = a_arr.shape[axis]
    if n < 2:
        raise InvalidInput(f"a: {n} samples along axis {axis} (shape {a_arr.shape}); expected at least 2")
    a2 = np.moveaxis(a_arr, axis, 0)
    rest = a2.shape[1:]
    a2, b2 = a2.reshape(n, -1), np.moveaxis(b_arr, axis, 0).reshape(n, -1)  # (samples, columns)
    rho = np.concatenate([_corr(x, y) for x, y in _blocks((a2, b2), None)] or [np.zeros(0)])
    return _nan_to_zero(rho, "correlation").reshape(rest)


def single_trial_correlation(
    responses: Any, predictions: Any, per_neuron: bool = False
) -> float | np.ndarray:
    """Correlation between prediction and response over all trials: the SENSORIUM headline score."""
    r, p = _pair(responses, predictions)
    rho = np.concatenate([_corr(rb, pb) for rb, pb in _blocks((r, p), None)])
    return _result(_nan_to_zero(rho, "single_trial_correlation"), per_neuron)


def correlation_to_average(
    responses: Any, predictions: Any, image_ids: Any, per_neuron: bool = False
) -> float | np.ndarray:
    """Correlation over images of the repeat-averaged responses and predictions (trial noise averaged out)."""
    r, p = _pair(responses, predictions)
    images = _distinct(_group_by_image(image_ids, r.shape[0]), "correlation_to_average")
    rho = np.concatenate(
        [
            _corr(_image_means(rb, images), _image_means(pb, images))
            for rb, pb in _blocks((r, p), images.order)
        ]
    )
    return _result(_nan_to_zero(rho, "correlation_to_average"), per_neuron)


def fev(responses: Any, image_ids: Any, per_neuron: bool = False) -> float | np.ndarray:
    """Fraction of explainable variance (s2_t - s2_n)/s2_t: the stimulus-driven share of the variance.

    Per neuron, NaN where the total variance is 0; the mean leaves those out with a warning.
    """
    r = _as_trials_by_neurons("responses", responses)
    images = _repeated(_group_by_image(image_ids, r.shape[0]), "fev")
    values = np.concatenate([_fev(*_variances(rb, images)) for (rb,) in _blocks((r,), images.order)])
    return values if per_neuron else _nanmean(values, "fev")


def repeat_variances(responses: Any, image_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron noise variance s2_n and total variance s2_t, the two terms of FEV and FEVE."""
    r = _as_trials_by_neurons("responses", responses)
    images = _repeated(_group_by_image(image_ids, r.shape[0]), "repeat_variances")
    parts = [_variances(rb, images) for (rb,) in _blocks((r,), images.order)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _fev(s2_n: np.ndarray, s2_t: np.ndarray) -> np.ndarray:
    return _ratio(s2_t - s2_n, s2_t)


def _fev_feve(r: np.ndarray, p: np.ndarray, images: _Images) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron FEV and FEVE = 1 - (MSE - s2_n)/(s2_t - s2_n) of blocks whose rows follow `images`."""
    s2_n, s2_t = _variances(r, images)
    mse = ((r - p) ** 2).mean(axis=0)
    return _fev(s2_n, s2_t), 1.0 - _ratio(mse - s2_n, s2_t - s2_n)


def feve(
    responses: Any, predictions: Any, image_ids: Any, threshold: float = 0.15, per_neuron: bool = False
) -> float | np.ndarray:
    """Fraction of explainable variance explained, averaged over neurons with FEV >= `threshold`.

    Per neuron, the full-width array with NaN for neurons below the threshold.
    """
    r, p = _pair(responses, predictions)
    threshold = _check_threshold(threshold)
    images = _repeated(_group_by_image(image_ids, r.shape[0]), "feve")
    parts = [_fev_feve(rb, pb, images) for rb, pb in _blocks((r, p), images.order)]
    fevs, feves = np.concatenate([f for f, _ in parts]), np.concatenate([e for _, e in parts])
    passing = fevs >= threshold  # NaN FEV (zero variance) never passes
    if not passing.any():
        best = float(np.nanmax(fevs)) if not np.isnan(fevs).all() else float("nan")
        raise InvalidInput(
            f"threshold: {threshold}; no neuron has FEV >= threshold "
            f"(best FEV {best:.4g} among {fevs.size} neurons)"
        )
    if per_neuron:
        return np.where(passing, feves, np.nan)
    return _nanmean(feves[passing], "feve")


def oracle_correlation(responses: Any, image_ids: Any, per_neuron: bool = False) -> float | np.ndarray:
    """Jackknife noise ceiling: correlation of each trial with the mean of the other repeats of its image."""
    r = _as_trials_by_neurons("responses", responses)
    images = _repeated(_group_by_image(image_ids, r.shape[0]), "oracle_correlation")
    rho = np.concatenate(
        [_corr(rb, _leave_one_out_means(rb, images)) for (rb,) in _blocks((r,), images.order)]
    )
    return _result(_nan_to_zero(rho, "oracle_correlation"), per_neuron)


# ---------------------------------------------------------------------------------------------------
# All scores at once


@dataclass(frozen=True)
class Scores:
    """Every SENSORIUM metric of one recording's tier; None where the tier cannot define it."""

    single_trial_correlation: float
    correlation_to_average: float
    feve: float | None  # None without repeats or when no neuron reaches the FEV threshold
    fev_fraction_above_threshold: float | None  # None without repeats
    oracle_correlation: float | None  # None without repeats
    n_neurons: int
    n_trials: int
    n_images: int

    def to_dict(self) -> dict[str, float | int | None]:
        """The scores as a plain dict (JSON-ready)."""
        return asdict(self)


def score(responses: Any, predictions: Any, image_ids: Any, threshold: float = 0.15) -> Scores:
    """All metrics in one pass over the data (each block of neurons is read once)."""
    r, p = _pair(responses, predictions)
    threshold = _check_threshold(threshold)
    images = _distinct(_group_by_image(image_ids, r.shape[0]), "score")
    keep = images.counts >= 2
    rows_kept = np.repeat(keep, images.counts)  # (trials,) in image order: trial of a repeated image?
    repeats = (
        _Images(images.order[rows_kept], images.counts[keep], images.n_trials) if keep.sum() >= 2 else None
    )

    single, average, oracle, fevs, feves = [], [], [], [], []
    for rb, pb in _blocks((r, p), images.order):
        single.append(_corr(rb, pb))
        average.append(_corr(_image_means(rb, images), _image_means(pb, images)))
        if repeats is None:
            continue
        rk, pk = (rb, pb) if keep.all() else (rb[rows_kept], pb[rows_kept])
        fev_block, feve_block = _fev_feve(rk, pk, repeats)
        fevs.append(fev_block)
        feves.append(feve_block)
        oracle.append(_corr(rk, _leave_one_out_means(rk, repeats)))

    feve_mean = fraction = oracle_mean = None
    if repeats is not None:
        fev_all = np.concatenate(fevs)
        passing = fev_all >= threshold
        fraction = float(passing.mean())
        if passing.any():
            feve_mean = _nanmean(np.concatenate(feves)[passing], "feve")
        oracle_mean = float(_nan_to_zero(np.concatenate(oracle), "oracle_correlation").mean())
    return Scores(
        single_trial_correlation=float(
            _nan_to_zero(np.concatenate(single), "single_trial_correlation").mean()
        ),
        correlation_to_average=float(_nan_to_zero(np.concatenate(average), "correlation_to_average").mean()),
        feve=feve_mean,
        fev_fraction_above_threshold=fraction,
        oracle_correlation=oracle_mean,
        n_neurons=r.shape[1],
        n_trials=r.shape[0],
        n_images=len(images.counts),
    )
