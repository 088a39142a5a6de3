"""Evaluation on held-out data the server keeps: clients get scores, never the responses.

`HeldOutData.load(folder)` reads SENSORIUM recordings (with their held-out responses restored from
`held_out/<data key>/`, where `twin simulate` and competition releases put them) and keeps, per data key
and tier, the images, behaviour, pupil centres, image ids and the true responses. `evaluate` feeds the
images to a model's predict function in chunks and scores the predictions with `twin.metrics.score`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twin import metrics
from twin.data import load_recording, responses_with_held_out
from twin.data.recording import TIERS, Recording, data_key_from_name
from twin.errors import FormatError, InvalidInput, ModelNotFound

__all__ = ["EVALUATION_TIERS", "HeldOutData", "HeldOutRecording", "PredictFn"]

log = logging.getLogger(__name__)

# predict_fn(images (B, 1, H, W) raw pixels, behavior (B, 3) or None, pupil_center (B, 2) or None) -> (B, N)
PredictFn = Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], Any]

EVALUATION_TIERS = ("validation", "test", "final_test")


@dataclass(frozen=True, eq=False)
class _Tier:
    images: np.ndarray  # (n, 1, H, W) raw pixel units, the recording's dtype and resolution
    behavior: np.ndarray | None  # (n, 3) raw units; None where the recording zeroes it (image-only track)
    pupil_center: np.ndarray | None  # (n, 2)
    image_ids: np.ndarray  # (n,)
    responses: np.ndarray = field(repr=False)  # (n, N) true responses: never leaves this module


class HeldOutRecording:
    """One recording's evaluation tiers."""

    def __init__(self, data_key: str, neuron_ids: np.ndarray, tiers: dict[str, _Tier]) -> None:
        self.data_key = data_key
        self.neuron_ids = neuron_ids
        self._tiers = tiers

    @classmethod
    def from_recording(
        cls, recording: Recording, responses: np.ndarray, tiers: Iterable[str] = EVALUATION_TIERS
    ) -> HeldOutRecording:
        """Keep `tiers` of a recording, with `responses` (n, N) its true (restored) responses."""
        kept: dict[str, _Tier] = {}
        with_behavior = recording.has_behavior
        for tier in tiers:
            idx = recording.tier_indices(tier)
            if idx.size == 0:
                continue
            tier_responses = np.asarray(responses[idx], dtype=np.float32)
            if not np.any(tier_responses):
                log.info(
                    "%s: tier %s has no responses (held out, none restored); not kept",
                    recording.data_key,
                    tier,
                )
                continue
            kept[tier] = _Tier(
                images=np.asarray(recording.images[idx]),
                behavior=np.asarray(recording.behavior[idx], dtype=np.float32) if with_behavior else None,
                pupil_center=np.asarray(recording.pupil_center[idx], dtype=np.float32)
                if with_behavior
                else None,
                image_ids=np.asarray(recording.image_ids[idx]),
                responses=tier_responses,
            )
        return cls(recording.data_key, np.asarray(recording.neuron_ids), kept)

    @property
    def tiers(self) -> list[str]:
        """The tiers that can be evaluated."""
        return list(self._tiers)

    def n_trials(self, tier: str) -> int:
        return int(self._tier(tier).image_ids.shape[0])

    def _tier(self, tier: str) -> _Tier:
        if tier not in self._tiers:
            what = "is not a tier" if tier not in TIERS else "has no responses held by the server"
            raise InvalidInput(f"tier: {tier!r} {what} for {self.data_key}; expected one of {self.tiers}")
        return self._tiers[tier]

    def _columns(self, neuron_ids: Sequence[int] | np.ndarray | None) -> np.ndarray | None:
        """Response columns of the neurons a model answers for, in its order (None: all, in order)."""
        if neuron_ids is None:
            return None
        ids = np.asarray(neuron_ids)
        if np.array_equal(ids, self.neuron_ids):
            return None
        position = {int(n): i for i, n in enumerate(self.neuron_ids)}
        unknown = [int(n) for n in ids if int(n) not in position]
        if unknown:
            raise InvalidInput(
                f"neuron_ids: {len(unknown)} ids not in recording {self.data_key} (e.g. {unknown[:5]}); "
                f"expected unit ids of its {len(self.neuron_ids)} neurons"
            )
        return np.array([position[int(n)] for n in ids])

    def evaluate(
        self,
        predict_fn: PredictFn,
        tier: str = "test",
        per_neuron: bool = False,
        *,
        batch_size: int = 256,
        neuron_ids: Sequence[int] | np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Score `predict_fn` on one tier: SENSORIUM metrics, and per-neuron arrays on request.

        `neuron_ids` names the columns `predict_fn` returns when they are not the recording's neurons in
        order. The result holds scores and counts only, never responses.
        """
        data = self._tier(tier)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput(f"batch_size: {batch_size!r}; expected an integer >= 1")
        columns = self._columns(neuron_ids)
        responses = data.responses if columns is None else data.responses[:, columns]  # (n, N)
        n, n_neurons = responses.shape
        predictions = np.empty((n, n_neurons), dtype=np.float32)
        for start in range(0, n, batch_size):
            rows = slice(start, min(start + batch_size, n))
            out = np.asarray(
                predict_fn(
                    data.images[rows],
                    None if data.behavior is None else data.behavior[rows],
                    None if data.pupil_center is None else data.pupil_center[rows],
                )
            )
            expected = (rows.stop - rows.start, n_neurons)
            if out.shape != expected:
                raise InvalidInput(f"predictions: shape {out.shape}; expected {expected} (images, neurons)")
            predictions[rows] = out
        scores = metrics.score(responses, predictions, data.image_ids)
        result: dict[str, Any] = {"data_key": self.data_key, "tier": tier, **scores.to_dict()}
        if per_neuron:
            result["per_neuron"] = {
                "neuron_ids": self.neuron_ids if columns is None else self.neuron_ids[columns],
                "single_trial_correlation": metrics.single_trial_correlation(responses, predictions, True),
                "correlation_to_average": metrics.correlation_to_average(
                    responses, predictions, data.image_ids, True
                ),
                "feve": _feve_per_neuron(responses, predictions, data.image_ids, scores),
            }
        return result


def _feve_per_neuron(
    responses: np.ndarray, predictions: np.ndarray, image_ids: np.ndarray, scores: metrics.Scores
) -> np.ndarray | None:
    """Per-neuron FEVE (NaN below the FEV threshold); None for a tier without repeats."""
    if scores.fev_fraction_above_threshold is None:
        return None
    if scores.feve is None:  # no neuron reaches the threshold
        return np.full(responses.shape[1], np.nan)
    return np.asarray(metrics.feve(responses, predictions, image_ids, per_neuron=True))


def _recording_paths(path: Path) -> list[Path]:
    """A recording folder or .zip itself, or every `static*` recording directly inside `path`."""
    if data_key_from_name(path.name.removesuffix(".zip")) is not None or (path / "meta").is_dir():
        return [path]
    found = sorted(p for p in path.glob("static*") if p.is_dir() or p.suffix == ".zip")
    if not found:
        raise FormatError(
            f"{path}: no SENSORIUM recording here; expected a static* folder or one holding them"
        )
    return found


class HeldOutData:
    """Evaluation data of every recording under one folder, by data key."""

    def __init__(self, recordings: dict[str, HeldOutRecording]) -> None:
        self._recordings = recordings

    @classmethod
    def load(cls, path: str | os.PathLike[str], tiers: Iterable[str] = EVALUATION_TIERS) -> HeldOutData:
        """Read the recording(s) at `path` and their held-out responses; keep `tiers` that have responses."""
        tiers = tuple(tiers)
        unknown = [t for t in tiers if t not in TIERS]
        if unknown:
            raise InvalidInput(f"tiers: {unknown} are not tiers; expected names from {list(TIERS)}")
        recordings: dict[str, HeldOutRecording] = {}
        for folder in _recording_paths(Path(path)):
            recording = load_recording(folder, progress=False)
            responses = responses_with_held_out(recording, folder)
            if recording.data_key in recordings:
                raise FormatError(f"{folder}: data_key {recording.data_key} appears twice under {path}")
            recordings[recording.data_key] = HeldOutRecording.from_recording(recording, responses, tiers)
            log.info("held-out data %s: tiers %s", recording.data_key, recordings[recording.data_key].tiers)
        return cls(recordings)

    @property
    def data_keys(self) -> list[str]:
        return list(self._recordings)

    def recording(self, data_key: str) -> HeldOutRecording:
        """One recording's evaluation data; ModelNotFound for a data key the server holds no data for."""
        if data_key not in self._recordings:
            raise ModelNotFound(
                f"data_key: {data_key!r} has no held-out data here; expected one of {self.data_keys}"
            )
        return self._recordings[data_key]

    def evaluate(
        self,
        data_key: str,
        predict_fn: PredictFn,
        tier: str = "test",
        per_neuron: bool = False,
        *,
        batch_size: int = 256,
        neuron_ids: Sequence[int] | np.ndarray | None = None,
    ) -> dict[str, Any]:
        """`HeldOutRecording.evaluate` of one data key."""
        return self.recording(data_key).evaluate(
            predict_fn, tier, per_neuron, batch_size=batch_size, neuron_ids=neuron_ids
        )
