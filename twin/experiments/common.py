"""What every in-silico experiment needs from a twin: its description, the chosen neurons, the behavioural
condition repeated for every stimulus, and responses to many stimuli in bounded batches.

An experiment takes any object with the twin interface (DESIGN.md §3): an in-process `OnnxTwin`
(`twin.load(...).twin(key)`), a `TwinClient` on a server, or the simulated mouse's `GroundTruthTwin`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from twin.atomic import replacing
from twin.errors import InvalidInput

__all__ = ["Condition", "Predictor", "Result", "Subject", "Twin", "responses", "responses_and_gray"]


@runtime_checkable
class Predictor(Protocol):
    """A twin that answers predictions: enough for tuning curves and receptive-field mapping."""

    def info(self) -> dict[str, Any]: ...

    def predict(
        self, images: Any, behavior: Any = None, pupil_center: Any = None, neurons: Any = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class Twin(Predictor, Protocol):
    """A twin that also answers input gradients: needed to optimize stimuli (MEIs)."""

    def gradient(
        self, images: Any, weights: Any, behavior: Any = None, pupil_center: Any = None
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class Condition:
    """The behavioural state every stimulus of an experiment is shown in, in raw units; None where the
    twin does not need it."""

    behavior: np.ndarray | None = None  # (3,): pupil size, its change, running speed
    pupil_center: np.ndarray | None = None  # (2,)

    @classmethod
    def of(cls, behavior: Any = None, pupil_center: Any = None, info: dict | None = None) -> Condition:
        """From raw values, or "mean": the twin's training trials' mean (its info()'s mean_condition)."""
        info = info or {}
        mean = info.get("mean_condition") or {}
        values = {"behavior": behavior, "pupil_center": pupil_center}
        for name, value in values.items():
            if isinstance(value, str):
                if value != "mean":
                    raise InvalidInput(f"{name}: {value!r}; expected numbers in raw units or 'mean'")
                if mean.get(name) is None:
                    raise InvalidInput(
                        f"{name}: 'mean'; {info.get('name', 'this twin')} does not say its "
                        f"training trials' mean {name} (no mean_condition in its info()); give the values"
                    )
                values[name] = mean[name]
        return cls(_row("behavior", values["behavior"], 3), _row("pupil_center", values["pupil_center"], 2))

    def to_json(self) -> dict[str, list[float] | None]:
        return {
            name: None if value is None else [float(v) for v in value]
            for name, value in (("behavior", self.behavior), ("pupil_center", self.pupil_center))
        }

    def rows(self, batch: int) -> dict[str, np.ndarray | None]:
        """The condition repeated for a batch, as a twin's keyword arguments."""
        return {
            name: None if value is None else np.repeat(value[None], batch, axis=0)
            for name, value in (("behavior", self.behavior), ("pupil_center", self.pupil_center))
        }


def _row(name: str, value: Any, width: int) -> np.ndarray | None:
    if value is None:
        return None
    a = np.asarray(value, dtype=np.float64)
    if a.shape != (width,) or not np.all(np.isfinite(a)):
        raise InvalidInput(f"{name}: {value!r}; expected {width} finite numbers in raw units, or None")
    return a.astype(np.float32)


@dataclass(frozen=True)
class Subject:
    """The twin under study, the ids of the neurons an experiment reports, and the condition."""

    twin: Predictor
    info: dict[str, Any]
    neuron_ids: np.ndarray  # (n,) ids as the recording numbers them
    condition: Condition

    @classmethod
    def of(
        cls,
        twin: Any,
        neurons: Sequence[int] | np.ndarray | None = None,
        behavior: Any = None,
        pupil_center: Any = None,
    ) -> Subject:
        if not isinstance(twin, Predictor):
            raise InvalidInput(
                f"twin: {type(twin).__name__}; expected a twin with info() and predict() "
                "(twin.load(...).twin(key), twin.TwinClient, GroundTruthTwin)"
            )
        info = twin.info()
        condition = Condition.of(behavior, pupil_center, info)
        for name, needed in info.get("requires", {}).items():
            if needed and getattr(condition, name) is None:
                raise InvalidInput(
                    f"{name}: None; {info.get('name', 'this twin')} ({info.get('data_key')}) needs it: "
                    f"give the condition to show the stimuli in (raw values, or 'mean': its training "
                    f"trials' mean)"
                )
        known = np.asarray(info["neuron_ids"], np.int64)
        if neurons is None:
            ids = known
        else:
            ids = np.asarray(neurons)
            if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
                raise InvalidInput(f"neurons: {neurons!r}; expected a non-empty sequence of neuron ids")
            unknown = sorted(set(ids.tolist()) - set(known.tolist()))
            if unknown:
                raise InvalidInput(f"neurons: ids {unknown[:5]} are not neurons of {info.get('data_key')}")
            ids = ids.astype(np.int64)
        return cls(twin, info, ids, condition)

    @property
    def all_neurons(self) -> bool:
        return self.neuron_ids.size == len(self.info["neuron_ids"]) and np.array_equal(
            self.neuron_ids, np.asarray(self.info["neuron_ids"], np.int64)
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """The model's input resolution: experiments build their stimuli at it (pixels of this grid)."""
        height, width = self.info["image_size"]
        return int(height), int(width)

    @property
    def gray(self) -> float:
        """Mean luminance of the training images (raw units): the background of every stimulus."""
        return self._statistic("image_mean")

    @property
    def contrast(self) -> float:
        """Pixel sd of the training images (raw units): the natural contrast scale."""
        return self._statistic("image_std")

    @property
    def grating_amplitude(self) -> float:
        """sqrt(2) x the natural contrast scale: a full-field grating with the training images' pixel sd,
        the gratings' default amplitude (raw units)."""
        return float(np.sqrt(2) * self.contrast)

    def _statistic(self, name: str) -> float:
        if name not in self.info:
            raise InvalidInput(
                f"{name}: missing from the twin's info(); expected the training images' pixel statistics"
            )
        return float(self.info[name])


def responses(subject: Subject, images: np.ndarray, *, batch: int = 256) -> np.ndarray:
    """Mean predicted responses (B, n) of the subject's neurons to images (B, H, W), `batch` at a time."""
    neurons = None if subject.all_neurons else subject.neuron_ids
    out = []
    for start in range(0, images.shape[0], batch):
        chunk = images[start : start + batch]
        mean, _ = subject.twin.predict(chunk, neurons=neurons, **subject.condition.rows(chunk.shape[0]))
        out.append(np.asarray(mean, np.float32))
    return np.concatenate(out, axis=0)


def responses_and_gray(
    subject: Subject, stimuli: np.ndarray, *, batch: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Responses (..., n) to stimuli (..., H, W) of any leading shape, and (n,) to the gray screen, which
    experiments measure their stimuli against: one pass, the gray screen last."""
    gray = np.full((1, *subject.image_size), subject.gray, np.float32)
    measured = responses(
        subject, np.concatenate([stimuli.reshape(-1, *subject.image_size), gray]), batch=batch
    )
    return measured[:-1].reshape(*stimuli.shape[:-2], -1), measured[-1]


R = TypeVar("R", bound="Result")


class Result:
    """An experiment's outcome (a dataclass of arrays and numbers) that saves to and loads from .npz."""

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Every field as one .npz, written atomically."""
        arrays: dict[str, Any] = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]
        with replacing(path) as tmp, open(tmp, "wb") as out:
            np.savez(out, **arrays)
        return Path(path)

    @classmethod
    def load(cls: type[R], path: str | os.PathLike[str]) -> R:
        with np.load(path, allow_pickle=False) as data:
            values = {f.name: data[f.name] for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v.item() if v.ndim == 0 else v for k, v in values.items()})
