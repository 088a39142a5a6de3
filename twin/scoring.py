"""Batch scoring and SENSORIUM submissions, on any twin (an artifact in process or a served model).

- `predict_to_file`: a twin's responses to many images (an array or a memory-mapped .npy) written to a
  .npy chunk by chunk. After every chunk the rows are flushed and a progress file records how many are
  done, so a killed job resumes where it stopped and loses at most the chunk in flight; the finished file
  appears under its name in one rename. A resume with other inputs or another model is refused.
- `write_submission` / `read_submission`: the SENSORIUM 2022 submission file, a CSV with one row per
  trial: `trial_indices`, `image_ids`, `prediction` (the list of N responses) and `neuron_ids` (the list
  of N unit ids), as the benchmark's `generate_submission_file` writes it (`submission_file_live_test.csv`
  for the test tier, `submission_file_final_test.csv`).
- `tier_submission`: a twin's predictions for every trial of a recording's tier, in the file's trial
  order, behaviour and pupil centre included where the model takes them.
- `score_submission`: what the benchmark's server does with a submission file: match its trials to the
  recording's held-out responses and report single-trial correlation, correlation to average and FEVE.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from twin import metrics
from twin.atomic import replacing, write_json
from twin.data import Recording, load_recording, responses_with_held_out
from twin.errors import FormatError, InvalidInput

__all__ = [
    "SUBMISSION_COLUMNS",
    "SUBMISSION_FILES",
    "Submission",
    "predict_to_file",
    "read_submission",
    "score_submission",
    "tier_submission",
    "write_submission",
]

SUBMISSION_COLUMNS = ("trial_indices", "image_ids", "prediction", "neuron_ids")
SUBMISSION_FILES = {"test": "submission_file_live_test.csv", "final_test": "submission_file_final_test.csv"}


# ----- batch scoring -----


def _fingerprint(array: np.ndarray | None) -> dict[str, Any] | None:
    """Shape, dtype and a hash of up to 65 evenly spaced rows: cheap on a memory-mapped input, and
    enough to tell a resumed job that it was handed other data."""
    if array is None:
        return None
    rows = np.unique(np.linspace(0, len(array) - 1, num=min(len(array), 65)).astype(np.int64))
    digest = hashlib.sha256(np.ascontiguousarray(array[rows]).tobytes()).hexdigest()
    return {"shape": list(array.shape), "dtype": str(array.dtype), "sampled_sha256": digest}


def _rows(name: str, value: Any, n: int, width: int) -> np.ndarray | None:
    if value is None:
        return None
    a = value if isinstance(value, np.ndarray) else np.asarray(value)  # a memory map stays one
    if a.shape != (n, width):
        raise InvalidInput(f"{name}: shape {a.shape}; expected ({n}, {width}), one row per image")
    return a


def predict_to_file(
    twin: Any,
    images: np.ndarray,
    out: str | os.PathLike[str],
    *,
    behavior: np.ndarray | None = None,
    pupil_center: np.ndarray | None = None,
    neurons: Sequence[int] | np.ndarray | None = None,
    std_out: str | os.PathLike[str] | None = None,
    batch: int = 256,
    restart: bool = False,
    progress: bool = True,
) -> Path:
    """Mean responses (n, N) float32 of a twin to `images` (n, H, W) or (n, 1, H, W) raw pixels, written
    to the .npy `out` (and the ensemble's std to `std_out`). Rows follow the images; columns the twin's
    neurons, or `neurons` ids in that order. Resumes an interrupted run of the same job unless `restart`.
    """
    out = Path(out)
    if out.suffix != ".npy" or (std_out is not None and Path(std_out).suffix != ".npy"):
        raise InvalidInput(f"out: {out}; expected .npy file names for the responses (and std)")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidInput(f"batch: {batch!r}; expected an integer >= 1")
    images = images if isinstance(images, np.ndarray) else np.asarray(images)
    if images.ndim not in (3, 4) or len(images) == 0:
        raise InvalidInput(f"images: shape {images.shape}; expected (n, H, W) or (n, 1, H, W) with n >= 1")
    n = len(images)
    behavior = _rows("behavior", behavior, n, 3)
    pupil_center = _rows("pupil_center", pupil_center, n, 2)
    info = twin.info()
    ids = list(info["neuron_ids"]) if neurons is None else [int(i) for i in neurons]
    targets = {"mean": out} | ({} if std_out is None else {"std": Path(std_out)})
    job = {
        "model": info.get("name"),
        "version": info.get("version"),
        "data_key": info.get("data_key"),
        "neurons": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
        "images": _fingerprint(images),
        "behavior": _fingerprint(behavior),
        "pupil_center": _fingerprint(pupil_center),
        "outputs": sorted(targets),
    }
    state_path = out.with_name(f".{out.name}.progress.json")
    partial = {k: p.with_name(f".{p.name}.partial.npy") for k, p in targets.items()}
    done = 0
    if state_path.is_file() and not restart:
        state = json.loads(state_path.read_text())
        if state["job"] != job:
            changed = sorted(k for k in job if state["job"].get(k) != job[k])
            raise InvalidInput(
                f"out: {out} holds an unfinished run of another job (changed: {', '.join(changed)}); "
                "expected the same model, inputs and outputs, or restart=True (--restart) to begin anew"
            )
        done = int(state["done"])
        arrays = {k: open_memmap(p, mode="r+") for k, p in partial.items()}
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            k: open_memmap(p, mode="w+", dtype=np.float32, shape=(n, len(ids))) for k, p in partial.items()
        }
        write_json(state_path, {"job": job, "done": 0, "total": n})
    columns = None if neurons is None else ids
    with tqdm(total=n, initial=done, unit="image", desc="predict", disable=not progress) as bar:
        while done < n:
            rows = slice(done, min(done + batch, n))
            mean, std = twin.predict(
                np.asarray(images[rows]),
                behavior=None if behavior is None else np.asarray(behavior[rows]),
                pupil_center=None if pupil_center is None else np.asarray(pupil_center[rows]),
                neurons=columns,
            )
            results = {"mean": mean, "std": std}
            for key, array in arrays.items():
                array[rows] = results[key]
                array.flush()
            done = rows.stop
            write_json(state_path, {"job": job, "done": done, "total": n})
            bar.update(rows.stop - rows.start)
    arrays.clear()  # every chunk was flushed as written; unmapped before the files are renamed
    for key, target in targets.items():
        os.replace(partial[key], target)
    state_path.unlink()
    return out


# ----- SENSORIUM submissions -----


@dataclass(frozen=True, eq=False)
class Submission:
    """Predicted responses per trial of one tier, as a submission file holds them."""

    trial_ids: np.ndarray  # (n,) the recording's trial_idx of each row
    image_ids: np.ndarray  # (n,)
    predictions: np.ndarray  # (n, N) float32
    neuron_ids: np.ndarray  # (N,)

    def __post_init__(self) -> None:
        n = len(self.trial_ids)
        if self.predictions.shape != (n, len(self.neuron_ids)) or self.image_ids.shape != (n,):
            raise InvalidInput(
                f"predictions: shape {self.predictions.shape}, image_ids {self.image_ids.shape}; expected "
                f"({n}, {len(self.neuron_ids)}) and ({n},): one row per trial, one column per neuron"
            )
        if not np.all(np.isfinite(self.predictions)):
            raise InvalidInput("predictions: contain NaN or inf; expected finite responses")


def _tier(recording_path: str | os.PathLike[str], tier: str) -> tuple[Recording, np.ndarray]:
    """The recording and the indices of its trials in `tier`, refusing a tier it does not have."""
    recording = load_recording(recording_path, progress=False)
    idx = recording.tier_indices(tier)
    if idx.size == 0:
        raise InvalidInput(
            f"tier: {tier!r} has no trials in {recording.data_key}; found {recording.tier_counts()}"
        )
    return recording, idx


def tier_submission(
    twin: Any, recording_path: str | os.PathLike[str], tier: str, *, batch: int = 256
) -> Submission:
    """The twin's predictions for every trial of `tier` in the recording at `recording_path`, in file
    order, with the trials' own behaviour and pupil centre where the twin needs them."""
    recording, idx = _tier(recording_path, tier)
    info = twin.info()
    if info.get("data_key") not in (None, recording.data_key):
        raise InvalidInput(
            f"data_key: the twin answers for {info['data_key']}; the recording is {recording.data_key}"
        )
    needs = info.get("requires", {})
    if (needs.get("behavior") or needs.get("pupil_center")) and not recording.has_behavior:
        raise InvalidInput(
            f"behavior: recording {recording.data_key} has its behaviour zeroed (image-only track); "
            f"the twin {info.get('name')} needs it"
        )
    neuron_ids = np.asarray(recording.neuron_ids, np.int64)
    predictions = np.empty((idx.size, neuron_ids.size), np.float32)
    for start in range(0, idx.size, batch):
        rows = idx[start : start + batch]
        mean, _ = twin.predict(
            np.asarray(recording.images[rows]),
            behavior=np.asarray(recording.behavior[rows], np.float32) if needs.get("behavior") else None,
            pupil_center=np.asarray(recording.pupil_center[rows], np.float32)
            if needs.get("pupil_center")
            else None,
            neurons=neuron_ids,
        )
        predictions[start : start + rows.size] = mean
    return Submission(
        np.asarray(recording.trial_ids[idx], np.int64),
        np.asarray(recording.image_ids[idx], np.int64),
        predictions,
        neuron_ids,
    )


def _list(values: np.ndarray, integers: bool = False) -> str:
    if integers:
        return "[" + ", ".join(str(int(v)) for v in values) + "]"
    return "[" + ", ".join(f"{v:.9g}" for v in values.tolist()) + "]"  # float32 exactly


def write_submission(submission: Submission, path: str | os.PathLike[str]) -> Path:
    """The submission as a SENSORIUM CSV, written atomically."""
    ids = _list(submission.neuron_ids, integers=True)
    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SUBMISSION_COLUMNS)
        for trial, image, row in zip(
            submission.trial_ids, submission.image_ids, submission.predictions, strict=True
        ):
            writer.writerow([int(trial), int(image), _list(row), ids])
    return Path(path)


def _parse_list(text: str, where: str, integers: bool = False) -> np.ndarray:
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        values = None
    if not isinstance(values, list) or not values or not all(isinstance(v, int | float) for v in values):
        raise FormatError(f"{where}: {text[:40]!r}; expected a list of numbers like [0.1, 2.5]")
    if integers and not all(isinstance(v, int) for v in values):
        raise FormatError(f"{where}: expected integer neuron ids")
    return np.asarray(values, np.int64 if integers else np.float64)


def read_submission(path: str | os.PathLike[str]) -> Submission:
    """A submission CSV, checked: its columns, one prediction per neuron, the same neuron ids per row."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != SUBMISSION_COLUMNS:
            raise FormatError(f"{path}: header {header}; expected {list(SUBMISSION_COLUMNS)}")
        trials, images, rows = [], [], []
        neuron_text, neuron_ids = None, None
        for line, record in enumerate(reader, start=2):
            if len(record) != 4:
                raise FormatError(f"{path}:{line}: {len(record)} fields; expected 4")
            try:
                trials.append(int(record[0]))
                images.append(int(record[1]))
            except ValueError:
                raise FormatError(
                    f"{path}:{line}: trial_indices, image_ids {record[:2]}; expected integers"
                ) from None
            if neuron_ids is None:  # the first row's, parsed once; later rows' text compared to it
                neuron_text, neuron_ids = record[3], _parse_list(record[3], f"{path}:{line} neuron_ids", True)
            elif record[3] != neuron_text and not np.array_equal(
                _parse_list(record[3], f"{path}:{line} neuron_ids", True), neuron_ids
            ):
                raise FormatError(f"{path}:{line}: neuron_ids differ from the first row's")
            rows.append(_parse_list(record[2], f"{path}:{line} prediction"))
    if neuron_ids is None:
        raise FormatError(f"{path}: no rows; expected one per trial of the tier")
    bad = next((i for i, r in enumerate(rows) if r.size != neuron_ids.size), None)
    if bad is not None:
        raise FormatError(
            f"{path}:{bad + 2}: {rows[bad].size} predictions; expected {neuron_ids.size}, one per neuron id"
        )
    try:
        return Submission(
            np.asarray(trials, np.int64),
            np.asarray(images, np.int64),
            np.stack(rows).astype(np.float32),
            neuron_ids,
        )
    except InvalidInput as exc:
        raise FormatError(f"{path}: {exc}") from None


def score_submission(
    submission: Submission, recording_path: str | os.PathLike[str], tier: str, *, per_neuron: bool = False
) -> dict[str, Any]:
    """Score a submission against the recording's true responses of `tier` (held out ones restored from
    `held_out/<data key>` beside it): every trial of the tier exactly once, every neuron."""
    recording, idx = _tier(recording_path, tier)
    responses = responses_with_held_out(recording, recording_path)
    truth = np.asarray(responses[idx], np.float32)
    if not np.any(truth):
        raise InvalidInput(
            f"tier: {tier!r} of {recording.data_key} has no responses (held out and not found beside the "
            f"recording as held_out/{recording.data_key}); expected a tier whose responses are known"
        )
    trial_ids = np.asarray(recording.trial_ids[idx], np.int64)
    row_of = {int(t): i for i, t in enumerate(submission.trial_ids)}
    if len(row_of) != len(submission.trial_ids):
        raise InvalidInput("trial_indices: some trials appear twice; expected each trial once")
    missing = [int(t) for t in trial_ids if int(t) not in row_of]
    extra = sorted(set(row_of) - {int(t) for t in trial_ids})
    if missing or extra:
        raise InvalidInput(
            f"trial_indices: {len(missing)} trials of tier {tier} missing (e.g. {missing[:3]}), {len(extra)} "
            f"not in it (e.g. {extra[:3]}); expected exactly the tier's {trial_ids.size} trials"
        )
    rows = np.array([row_of[int(t)] for t in trial_ids])
    if not np.array_equal(submission.image_ids[rows], recording.image_ids[idx]):
        raise InvalidInput("image_ids: do not match the recording's for the same trials")
    column_of = {int(n): i for i, n in enumerate(submission.neuron_ids)}
    neuron_ids = np.asarray(recording.neuron_ids, np.int64)
    absent = [int(n) for n in neuron_ids if int(n) not in column_of]
    if absent or len(column_of) != neuron_ids.size:
        raise InvalidInput(
            f"neuron_ids: {len(absent)} of the recording's {neuron_ids.size} neurons missing "
            f"(e.g. {absent[:3]}) or ids not in it; expected each of its neurons once"
        )
    predictions = submission.predictions[rows][:, [column_of[int(n)] for n in neuron_ids]]
    image_ids = np.asarray(recording.image_ids[idx])
    result: dict[str, Any] = {
        "data_key": recording.data_key,
        "tier": tier,
        **metrics.score(truth, predictions, image_ids).to_dict(),
    }
    if per_neuron:
        result["per_neuron"] = {
            "neuron_ids": neuron_ids,
            "single_trial_correlation": metrics.single_trial_correlation(truth, predictions, True),
            "correlation_to_average": metrics.correlation_to_average(truth, predictions, image_ids, True),
        }
    return result
