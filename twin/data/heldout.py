"""Held-out responses: the true responses of tiers a competition recording ships zeroed.

Kept apart from the recording (`<dir>/responses.npy`, `trial_index.npy`, `neuron_ids.npy`, `tiers.npy`)
so only evaluation reads them. `restore` puts them back into a copy of the recording's responses.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin.data.recording import Recording
from twin.errors import FormatError

__all__ = [
    "HeldOut",
    "find_held_out",
    "load_held_out",
    "responses_with_held_out",
    "restore",
    "write_held_out",
]


@dataclass(frozen=True, eq=False)
class HeldOut:
    data_key: str
    responses: np.ndarray  # (k, N) true responses of the held-out trials
    trial_index: np.ndarray  # (k,) their file indices in the recording
    neuron_ids: np.ndarray  # (N,)
    tiers: np.ndarray  # (k,)


def write_held_out(held_out: HeldOut, folder: str | os.PathLike[str]) -> Path:
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    for name in ("responses", "trial_index", "neuron_ids", "tiers"):
        np.save(tmp / f"{name}.npy", getattr(held_out, name), allow_pickle=False)
    (tmp / "held_out.json").write_text(json.dumps({"data_key": held_out.data_key}))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def load_held_out(folder: str | os.PathLike[str]) -> HeldOut:
    path = Path(folder)
    try:
        meta = json.loads((path / "held_out.json").read_text())
        arrays = {n: np.load(path / f"{n}.npy") for n in ("responses", "trial_index", "neuron_ids", "tiers")}
    except FileNotFoundError as exc:
        raise FormatError(f"{path}: not a held-out folder ({exc.filename} missing)") from None
    if arrays["responses"].shape != (len(arrays["trial_index"]), len(arrays["neuron_ids"])):
        raise FormatError(
            f"{path}/responses.npy: shape {arrays['responses'].shape}; expected "
            f"({len(arrays['trial_index'])}, {len(arrays['neuron_ids'])}) from trial_index and neuron_ids"
        )
    return HeldOut(data_key=meta["data_key"], **arrays)


def find_held_out(recording_path: str | os.PathLike[str], data_key: str) -> Path | None:
    """The held-out folder of a recording where `twin simulate` puts it: `<parent>/held_out/<data key>`."""
    path = Path(recording_path)
    for candidate in (path.parent / "held_out" / data_key, path / "held_out" / data_key):
        if (candidate / "held_out.json").is_file():
            return candidate
    return None


def restore(recording: Recording, held_out: HeldOut) -> np.ndarray:
    """The recording's responses (n, N) with the held-out trials filled in, as a new array."""
    if held_out.data_key != recording.data_key:
        raise FormatError(
            f"held-out data_key {held_out.data_key!r} does not match the recording's {recording.data_key!r}"
        )
    if not np.array_equal(held_out.neuron_ids, recording.neuron_ids):
        raise FormatError(f"held-out neuron_ids do not match the recording {recording.data_key}'s unit_ids")
    if held_out.trial_index.size and held_out.trial_index.max() >= recording.n_trials:
        raise FormatError(
            f"held-out trial_index up to {held_out.trial_index.max()}; the recording has {recording.n_trials}"
        )
    responses = np.array(recording.responses, dtype=np.float32)
    responses[held_out.trial_index] = held_out.responses
    return responses


def responses_with_held_out(recording: Recording, path: str | os.PathLike[str]) -> np.ndarray:
    """The responses of the recording read from `path`, its held-out tiers restored where their folder
    lies beside it (`find_held_out`); as read otherwise."""
    folder = find_held_out(path, recording.data_key)
    return recording.responses if folder is None else restore(recording, load_held_out(folder))
