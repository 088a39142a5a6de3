"""The simulated mouse's own neurons behind the twin interface: the known right answer of every
in-silico experiment that needs only predictions (tuning, receptive fields, checking an MEI).

`GroundTruthTwin(simulation_dir, data_key)` answers `predict` with the noise-free expected responses of
the recording's ground-truth population (twin.data.population) and `info` like a served twin does, with
the recording's neuron ids and image statistics, so experiments run on it unchanged. `truth()` gives the
neurons' true parameters, and `score_tuning`, `score_receptive_fields`, `score_meis` and
`score_size_tuning` compare an experiment's result (on any twin of this recording) with them. It has no
`gradient`.

An MEI is checked two ways: how strongly the true neuron responds to it (saturating neurons answer a
good MEI and their best natural image about alike, so this separates poor MEIs from good ones only), and
`filter_alignment`, how much of the image's pattern is the neuron's true receptive field, which keeps
ranking MEIs where the response has saturated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twin.artifact import neuron_columns
from twin.data.population import GRID, resample_to_grid
from twin.data.reader import load_recording
from twin.data.simulation import GroundTruth
from twin.errors import InvalidInput
from twin.metrics import correlation

if TYPE_CHECKING:
    from twin.experiments.mei import MEIs
    from twin.experiments.receptive_field import ReceptiveFields
    from twin.experiments.size import SizeTuning
    from twin.experiments.tuning import Tuning

__all__ = ["GroundTruthTwin"]


class GroundTruthTwin:
    """Predict-only twin of one simulated recording; behaviour and pupil centre are optional inputs (the
    gain at the session's mean behaviour and the eye at rest without them)."""

    def __init__(self, simulation_dir: str | os.PathLike[str], data_key: str | None = None) -> None:
        root = Path(simulation_dir)
        if data_key is None:  # left out: the simulation's only recording
            keys = sorted(p.name for p in (root / "ground_truth").glob("*") if p.is_dir())
            if len(keys) != 1:
                raise InvalidInput(f"data_key: None; simulation {root} has {keys}, pick one")
            data_key = keys[0]
        self._truth = GroundTruth.load(root, data_key)
        meta = json.loads((self._truth.folder / "ground_truth.json").read_text())
        recording = load_recording(root / meta["folder"], progress=False)
        stats = recording.statistics["images"]["all"]
        self.data_key = data_key
        self._images = recording.images  # memory-mapped, (n, 1, H, W)
        self._distinct = np.sort(np.unique(recording.image_ids, return_index=True)[1])  # first of repeats
        self.neuron_ids = np.asarray(recording.neuron_ids, np.int64)
        self._columns = {int(n): c for c, n in enumerate(self.neuron_ids)}
        self._info = {
            "name": "ground truth",
            "version": 0,
            "data_key": data_key,
            "n_neurons": int(self.neuron_ids.size),
            "neuron_ids": self.neuron_ids.tolist(),
            "image_size": list(GRID),
            "recording_image_size": list(recording.image_shape),
            "requires": {"behavior": False, "pupil_center": False},
            "members": [],
            "n_members": 1,
            "image_units": "raw pixel units",
            "image_mean": float(np.asarray(stats["mean"])),
            "image_std": float(np.asarray(stats["std"])),
            "mean_condition": {
                k: np.asarray(recording.statistics[k]["all"]["mean"], np.float64).tolist()
                for k in ("behavior", "pupil_center")
            },
            "response_units": "recording response units",
        }

    @property
    def n_neurons(self) -> int:
        return int(self.neuron_ids.size)

    def info(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._info))

    def predict(
        self,
        images: Any,
        behavior: Any = None,
        pupil_center: Any = None,
        neurons: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected responses (B, n) and zeros for their spread: the ground truth has no uncertainty."""
        a = np.asarray(images)
        if a.dtype.kind not in "iuf" or not np.all(np.isfinite(a)):
            raise InvalidInput(f"images: dtype {a.dtype}; expected finite real numbers (raw pixel units)")
        extra = {
            name: None if value is None else np.asarray(value, np.float32)
            for name, value in (("behavior", behavior), ("pupil_center", pupil_center))
        }
        columns = neuron_columns(self._columns, neurons, self.data_key)
        mean = self._truth(a, **extra, columns=None if isinstance(columns, slice) else columns)
        return mean, np.zeros_like(mean)

    def natural_images(self) -> np.ndarray:
        """The recording's distinct images (repeats once), (n, H, W) raw pixels: what an MEI should beat."""
        return np.asarray(self._images[self._distinct, 0])

    def truth(self, neurons: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The true parameters of the neurons (all, or these ids), in the experiments' units: receptive-field
        centre (x, y) in pixels of the 36 x 64 grid, orientation of the wave vector in [0, pi), period in
        pixels per cycle, simple-cell weight (1 simple, 0 complex)."""
        p = self._truth.population
        columns = neuron_columns(self._columns, neurons, self.data_key)
        return {
            "neuron_ids": self.neuron_ids[columns],
            "center": p.center[columns],
            "orientation": np.mod(p.orientation[columns], np.pi),
            "period": p.period[columns],
            "simple_weight": p.simple_weight[columns],
        }

    def score_tuning(self, tuning: Tuning, *, min_selectivity: float = 0.2) -> dict[str, Any]:
        """How well measured tuning matches the truth: preferred-orientation error (degrees; over neurons
        with selectivity >= `min_selectivity`), rank correlation of preferred and true period, and how
        well the modulation ratio tells simple (weight > 0.5) from complex cells (ROC AUC, 0.5 = chance)."""
        truth = self.truth(tuning.neuron_ids)
        selective = tuning.orientation_selectivity >= min_selectivity
        error = np.degrees(_orientation_difference(tuning.preferred_orientation, truth["orientation"]))
        scale = GRID[1] / float(tuning.image_size[1])  # truth pixels per stimulus pixel
        ratio = tuning.modulation_ratio
        known = ~np.isnan(ratio)
        simple = truth["simple_weight"] > 0.5
        return {
            "neurons": int(tuning.neuron_ids.size),
            "selective_fraction": float(selective.mean()),
            "orientation_error_deg_median": _stat(np.median, error[selective]),
            "orientation_error_deg_p90": _stat(lambda e: np.percentile(e, 90), error[selective]),
            "period_rank_correlation": _rank_correlation(tuning.preferred_period * scale, truth["period"]),
            "simple_vs_complex_auc": _auc(ratio[known & simple], ratio[known & ~simple]),
        }

    def score_receptive_fields(self, fields: ReceptiveFields) -> dict[str, Any]:
        """Distance (pixels of the 36 x 64 grid) between mapped and true receptive-field centres."""
        truth = self.truth(fields.neuron_ids)
        scale = np.array([GRID[1] / float(fields.image_size[1]), GRID[0] / float(fields.image_size[0])])
        error = np.linalg.norm(fields.centers * scale - truth["center"], axis=1)
        found = ~np.isnan(error)
        return {
            "neurons": int(fields.neuron_ids.size),
            "mapped_fraction": float(found.mean()),
            "center_error_px_median": _stat(np.median, error[found]),
            "center_error_px_p90": _stat(lambda e: np.percentile(e, 90), error[found]),
            "within_2px_fraction": float(np.mean(error[found] <= 2.0)) if found.any() else None,
        }

    def score_meis(self, meis: MEIs, images: np.ndarray, *, batch: int = 256) -> dict[str, Any]:
        """The true neurons' responses to their MEIs relative to their largest response to `images`
        (e.g. the recording's natural images): above 1 where an MEI beats every one of them."""
        ids = meis.neuron_ids
        natural = np.concatenate(
            [self.predict(images[i : i + batch], neurons=ids)[0] for i in range(0, len(images), batch)]
        ).max(axis=0)
        own = np.diagonal(self.predict(meis.images, neurons=ids)[0])
        ratio = own / np.maximum(natural, 1e-12)
        alignment = self.filter_alignment(meis.images, ids)
        return {
            "neurons": int(ids.size),
            "natural_images": len(images),
            "ratio_to_best_natural": ratio.round(4).tolist(),
            "ratio_median": float(np.median(ratio)),
            "beats_best_natural_fraction": float(np.mean(ratio > 1)),
            "filter_alignment": alignment.round(4).tolist(),
            "filter_alignment_median": float(np.median(alignment)),
        }

    def score_size_tuning(self, sizes: SizeTuning) -> dict[str, Any]:
        """The true neurons measured with the very stimuli of `sizes` (same centres, orientations, periods,
        diameters, phases, amplitude), compared with it: per-neuron correlation of the size-tuning
        curves, rank correlation of the preferred diameters, suppression indices side by side."""
        from twin.experiments.size import size_tuning

        scale = GRID[1] / float(sizes.image_size[1])  # truth pixels per stimulus pixel
        truth = size_tuning(
            self,
            sizes.neuron_ids,
            centers=sizes.centers * scale,
            orientations=sizes.orientations,
            periods=sizes.periods * scale,
            diameters=sizes.diameters * scale,
            phases=sizes.phases.size,
            amplitude=sizes.amplitude,
        )
        curves, true_curves = sizes.curves, truth.curves
        flat = (np.ptp(curves, axis=1) == 0) | (np.ptp(true_curves, axis=1) == 0)  # no shape to compare
        shape = np.where(flat, np.nan, correlation(curves, true_curves, axis=1))
        both = ~np.isnan(sizes.preferred_diameter) & ~np.isnan(truth.preferred_diameter)
        index, true_index = sizes.suppression_index, truth.suppression_index
        return {
            "neurons": int(sizes.neuron_ids.size),
            "curve_correlation_median": _stat(np.median, shape),
            "preferred_diameter_rank_correlation": _rank_correlation(
                sizes.preferred_diameter[both] * scale, truth.preferred_diameter[both]
            )
            if both.sum() > 1
            else None,
            "suppression_index_median": _stat(np.median, index),
            "true_suppression_index_median": _stat(np.median, true_index),
            "suppression_index_error_median": _stat(np.median, np.abs(index - true_index)),
        }

    def filter_alignment(self, images: Any, neurons: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n,) how much of image k's pattern is neuron k's true receptive field, for n images (n, H, W)
        in raw pixels (any size; area-resampled to the 36 x 64 grid) and n neuron ids.

        The norm of the image's projection on the plane of the neuron's Gabor quadrature pair (its even and
        odd filter) over the norm of the image minus its mean: 1 for the neuron's own Gabor at any phase
        (the optimum of a simple or complex cell), about sqrt(2 / 2304) = 0.03 for white noise. The eye is
        at rest (no shift). Fine patterns that a smoothing prior on the MEI suppresses (periods of a few
        pixels) lower it for every model alike.
        """
        a = np.asarray(images)
        ids = np.asarray(neurons).ravel()
        if a.ndim != 3 or a.shape[0] != ids.size or a.dtype.kind not in "iuf" or not np.all(np.isfinite(a)):
            raise InvalidInput(
                f"images: shape {a.shape}, dtype {a.dtype}; expected ({ids.size}, H, W) finite raw pixels, "
                "one image per neuron"
            )
        columns = np.asarray(neuron_columns(self._columns, ids, self.data_key))  # ids given: an array
        pattern = resample_to_grid(a).reshape(ids.size, -1).astype(np.float64)
        pattern -= pattern.mean(axis=1, keepdims=True)
        filters = self._truth.filters()
        n = self.n_neurons
        f_even, f_odd = (filters[:, c].astype(np.float64) for c in (columns, columns + n))  # (P, n) each
        f_even /= np.linalg.norm(f_even, axis=0)  # unit norm again in float64
        f_odd /= np.linalg.norm(f_odd, axis=0)
        even = np.einsum("kp,pk->k", pattern, f_even)
        odd = np.einsum("kp,pk->k", pattern, f_odd)
        overlap = np.einsum("pk,pk->k", f_even, f_odd)  # the pair is orthogonal only up to this
        # squared norm of the projection on span(even, odd): v' G^-1 v with G = [[1, g], [g, 1]]
        captured = (even**2 + odd**2 - 2 * overlap * even * odd) / (1 - overlap**2)
        norm = np.linalg.norm(pattern, axis=1)
        return np.where(norm > 0, np.sqrt(np.maximum(captured, 0)) / np.maximum(norm, 1e-30), 0.0)

    def __repr__(self) -> str:
        return f"GroundTruthTwin(data_key={self.data_key!r}, neurons={self.n_neurons})"


def _orientation_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest angle (radians, 0 to pi/2) between orientations a and b (period pi)."""
    return np.abs(np.angle(np.exp(2j * (np.asarray(a) - np.asarray(b))))) / 2


def _stat(function: Any, values: np.ndarray) -> float | None:
    """function of the values that are not NaN (None when there are none)."""
    values = values[~np.isnan(values)]
    return float(function(values)) if values.size else None


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(values.size)
    _, inverse = np.unique(values, return_inverse=True)
    return (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (None when either side is constant)."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _auc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """Probability that a positive scores above a negative (ties count half): ROC AUC."""
    if positive.size == 0 or negative.size == 0:
        return None
    ranks = _ranks(np.concatenate([positive, negative]))
    return float(
        (ranks[: positive.size].sum() - positive.size * (positive.size - 1) / 2)
        / (positive.size * negative.size)
    )
