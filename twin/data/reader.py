"""`load_recording`: read a SENSORIUM recording (folder or .zip) into a validated `Recording`.

Reads the real recordings unchanged: any numeric dtype on disk, any image size, with or without the
`config.json` the reference loader leaves behind. The per-trial files are read once into the cache
(`twin.data.cache`) and memory-mapped afterwards. Every check names the file and what was expected.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from twin.data import cache
from twin.data.recording import TIERS, Recording, data_key_from_name
from twin.data.source import Source, open_source
from twin.data.trialfiles import read_trial_files, trial_file_indices
from twin.errors import FormatError

__all__ = ["load_recording", "read_meta"]

log = logging.getLogger(__name__)

# variable -> (expected per-trial shape, dtype in the cache (None keeps the on-disk dtype), required)
_TRIAL_VARIABLES: dict[str, tuple[tuple[int, ...] | None, type | None, bool]] = {
    "images": (None, None, True),
    "responses": (None, np.float32, True),
    "behavior": ((3,), np.float32, False),
    "pupil_center": ((2,), np.float32, False),
}


def load_recording(
    path: str | os.PathLike[str], *, cache_arrays: bool = True, progress: bool = True
) -> Recording:
    """Read one recording from its folder, a folder holding it, or its .zip.

    With `cache_arrays` (default) the trial files are stacked into the recording cache once and
    memory-mapped on later loads; otherwise they are read into memory every time.
    """
    source = open_source(path)
    trials_meta = read_meta(source, "meta/trials")
    neurons_meta = read_meta(source, "meta/neurons")
    n_trials = _trial_count(source, trials_meta)
    arrays = _trial_arrays(source, n_trials, cache_arrays, progress)
    responses = arrays["responses"]
    n_neurons = responses.shape[1]
    neuron_ids, coordinates = _neuron_metadata(source, neurons_meta, n_neurons)
    tiers = trials_meta["tiers"].astype(str)
    unknown = sorted(set(np.unique(tiers).tolist()) - set(TIERS))
    if unknown:
        raise FormatError(
            f"{source.describe('meta/trials/tiers.npy')}: unknown tier names {unknown}; "
            f"expected {list(TIERS)}"
        )
    trial_ids = trials_meta.get("trial_idx")
    if trial_ids is None:
        log.warning("%s: no meta/trials/trial_idx.npy; using file order", source.location)
        trial_ids = np.arange(n_trials)
    statistics = _read_statistics(source)
    return Recording(
        data_key=_data_key(source, neurons_meta),
        images=arrays["images"],
        responses=responses,
        behavior=arrays["behavior"],
        pupil_center=arrays["pupil_center"],
        tiers=tiers,
        image_ids=_as_int(trials_meta["frame_image_id"], source.describe("meta/trials/frame_image_id.npy")),
        trial_ids=trial_ids,
        neuron_ids=neuron_ids,
        cell_motor_coordinates=coordinates,
        statistics=statistics,
        trials_meta=trials_meta,
        neurons_meta=neurons_meta,
        source=str(source.location),
    )


_REQUIRED_META = {"meta/trials/tiers.npy", "meta/trials/frame_image_id.npy"}


def read_meta(source: Source, folder: str) -> dict[str, np.ndarray]:
    """Every `<folder>/*.npy` as {stem: array}. Unreadable optional files are skipped with a warning."""
    out = {}
    for relpath in sorted(source.files(folder)):
        if not relpath.endswith(".npy"):
            continue
        try:
            out[relpath.rsplit("/", 1)[-1][:-4]] = source.load(relpath)
        except FormatError as exc:
            if relpath in _REQUIRED_META:
                raise
            log.warning("%s: skipped (%s)", source.describe(relpath), exc)
    return out


def _trial_count(source: Source, trials_meta: dict[str, np.ndarray]) -> int:
    for required in ("tiers", "frame_image_id"):
        if required not in trials_meta:
            raise FormatError(f"{source.describe(f'meta/trials/{required}.npy')}: missing file")
    n_trials = len(trials_meta["tiers"])
    if n_trials == 0:
        raise FormatError(f"{source.describe('meta/trials/tiers.npy')}: no trials")
    for name, array in trials_meta.items():
        if array.ndim == 0 or array.shape[0] != n_trials:
            raise FormatError(
                f"{source.describe(f'meta/trials/{name}.npy')}: shape {array.shape}; expected "
                f"{n_trials} rows like meta/trials/tiers.npy"
            )
    return n_trials


def _trial_arrays(source: Source, n_trials: int, use_cache: bool, progress: bool) -> dict[str, np.ndarray]:
    present = [v for v in _TRIAL_VARIABLES if source.has_dir(f"data/{v}")]
    for variable, (_, _, required) in _TRIAL_VARIABLES.items():
        if variable not in present:
            if required:
                raise FormatError(f"{source.describe(f'data/{variable}')}: missing folder")
            log.warning("%s: no data/%s/; filled with zeros", source.location, variable)
    folder = cache.entry_dir(source.location, source.name) if use_cache else None
    fingerprint = source.fingerprint() if use_cache else ""
    arrays = cache.open_entry(folder, fingerprint) if folder is not None else None
    if arrays is None:
        for variable in present:
            trial_file_indices(source, variable, n_trials)
        if folder is None:
            arrays = _build(source, present, n_trials, None, fingerprint, progress)
        else:
            with cache.build_lock(folder):  # another process may be building it: wait, then open theirs
                arrays = cache.open_entry(folder, fingerprint)
                if arrays is None:
                    arrays = _build(source, present, n_trials, folder, fingerprint, progress)
    for variable, (shape, _, _) in _TRIAL_VARIABLES.items():
        if variable not in arrays:
            arrays[variable] = np.zeros((n_trials, *(shape or ())), np.float32)
    images = arrays["images"]
    if images.ndim == 3:  # (n, H, W) files: add the channel axis SENSORIUM uses
        arrays["images"] = images[:, None]
    return arrays


def _build(
    source: Source, variables: list[str], n_trials: int, folder: Path | None, fingerprint: str, progress: bool
) -> dict[str, np.ndarray]:
    """Read every trial file; with a cache folder, into a new entry that is published when complete."""
    if folder is None:
        return _read_all(source, variables, n_trials, None, progress)
    tmp = cache.new_entry_dir(folder)
    try:
        arrays = _read_all(source, variables, n_trials, tmp, progress)
        for array in arrays.values():
            if isinstance(array, np.memmap):
                array.flush()
        del arrays
        cache.publish_entry(tmp, folder, fingerprint, variables)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    reopened = cache.open_entry(folder, fingerprint)
    if reopened is None:  # a concurrent process published an entry for different files meanwhile
        raise FormatError(f"{folder}: recording cache changed while it was being built; load again")
    return reopened


def _read_all(
    source: Source, variables: list[str], n_trials: int, tmp: Path | None, progress: bool
) -> dict[str, np.ndarray]:
    bar = tqdm(
        total=n_trials * len(variables),
        desc=f"reading {source.name}",
        unit="file",
        disable=not progress,
        leave=False,
    )
    with bar:
        out = {}
        for variable in variables:
            shape, dtype, _ = _TRIAL_VARIABLES[variable]
            out[variable] = read_trial_files(
                source,
                variable,
                n_trials,
                allocate=_allocator(tmp, variable, dtype),
                check=_checker(source, variable, shape),
                progress=bar.update,
            )
    return out


def _allocator(tmp: Path | None, variable: str, dtype: type | None):
    def allocate(shape: tuple[int, ...], disk_dtype: np.dtype) -> np.ndarray:
        target = np.dtype(dtype) if dtype is not None else _image_dtype(disk_dtype)
        if tmp is None:
            return np.empty(shape, target)
        return np.lib.format.open_memmap(tmp / f"{variable}.npy", mode="w+", dtype=target, shape=shape)

    return allocate


def _image_dtype(disk_dtype: np.dtype) -> np.dtype:
    """Images keep compact integer dtypes (uint8 in SENSORIUM 2022); floats become float32."""
    if disk_dtype.kind in "ui" and disk_dtype.itemsize <= 2:
        return disk_dtype
    return np.dtype(np.float32)


def _checker(source: Source, variable: str, shape: tuple[int, ...] | None):
    def check(block: np.ndarray, start: int) -> None:
        per_trial = block.shape[1:]
        image_ok = (len(per_trial) == 3 and per_trial[0] == 1) or len(per_trial) == 2
        if variable == "images" and not image_ok:
            raise FormatError(
                f"{source.describe(f'data/images/{start}.npy')}: shape {per_trial}; expected (1, H, W)"
            )
        if variable == "responses" and len(per_trial) != 1:
            raise FormatError(
                f"{source.describe(f'data/responses/{start}.npy')}: shape {per_trial}; expected (neurons,)"
            )
        if shape is not None and per_trial != shape:
            raise FormatError(
                f"{source.describe(f'data/{variable}/{start}.npy')}: shape {per_trial}; expected {shape}"
            )
        if block.dtype.kind not in "uifb":
            raise FormatError(
                f"{source.describe(f'data/{variable}/{start}.npy')}: dtype {block.dtype}; expected numbers"
            )
        if block.dtype.kind == "f":
            finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            if not finite.all():
                i = start + int(np.argmin(finite))
                raise FormatError(
                    f"{source.describe(f'data/{variable}/{i}.npy')}: contains NaN or inf; "
                    "expected finite values"
                )
        if variable == "responses":
            negative = (block < 0).any(axis=1)
            if negative.any():
                i = start + int(np.argmax(negative))
                low = float(block[i - start].min())
                raise FormatError(
                    f"{source.describe(f'data/responses/{i}.npy')}: negative response {low:.4g}; "
                    f"expected responses >= 0"
                )

    return check


def _neuron_metadata(source: Source, meta: dict[str, np.ndarray], n_neurons: int):
    for name, array in meta.items():
        if array.ndim == 0 or array.shape[0] != n_neurons:
            raise FormatError(
                f"{source.describe(f'meta/neurons/{name}.npy')}: {array.shape[0] if array.ndim else 0} "
                f"neurons; expected {n_neurons} to match the width of data/responses"
            )
    coordinates = meta.get("cell_motor_coordinates")
    if coordinates is None:
        log.warning("%s: no meta/neurons/cell_motor_coordinates.npy; using zeros", source.location)
        coordinates = np.zeros((n_neurons, 3))
    elif coordinates.shape != (n_neurons, 3):
        raise FormatError(
            f"{source.describe('meta/neurons/cell_motor_coordinates.npy')}: shape {coordinates.shape}; "
            f"expected ({n_neurons}, 3)"
        )
    unit_ids = meta.get("unit_ids")
    if unit_ids is None:
        log.warning("%s: no meta/neurons/unit_ids.npy; numbering neurons from 0", source.location)
        unit_ids = np.arange(n_neurons)
    return _as_int(unit_ids, source.describe("meta/neurons/unit_ids.npy")), coordinates.astype(np.float32)


def _read_statistics(source: Source) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """meta/statistics/<variable>/<group>/<stat>.npy as nested dicts (empty when absent)."""
    stats: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for variable in ("images", "responses", "behavior", "pupil_center"):
        for group in ("all", "stimulus_frame"):
            values = read_meta(source, f"meta/statistics/{variable}/{group}")
            if values:
                stats.setdefault(variable, {})[group] = values
    return stats


def _data_key(source: Source, neurons_meta: dict[str, np.ndarray]) -> str:
    key = data_key_from_name(source.name)
    if key:
        return key
    parts = [neurons_meta.get(n) for n in ("animal_ids", "sessions", "scan_idx")]
    firsts = [str(p[0]) for p in parts if p is not None and len(p)]
    return "-".join(firsts) if len(firsts) == 3 else source.name


def _as_int(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    try:
        as_float = array.astype(np.float64)
    except ValueError:
        raise FormatError(f"{where}: dtype {array.dtype}; expected integer ids") from None
    if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
        raise FormatError(f"{where}: non-integer values; expected integer ids")
    return as_float.astype(np.int64)
