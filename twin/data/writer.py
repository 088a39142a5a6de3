"""`write_recording`: write a `Recording` in the SENSORIUM 2022 layout, as a folder or a .zip.

The output is what the reference tools read: `data/<variable>/{i}.npy` per trial, `meta/trials`,
`meta/neurons` and `meta/statistics/<variable>/{all,stimulus_frame}/{min,max,mean,median,std}.npy`.
Written into a temporary sibling and renamed into place, so a reader never sees half a recording.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from twin.data.recording import Recording
from twin.data.trialfiles import write_trial_files
from twin.errors import FormatError

__all__ = ["compute_statistics", "folder_name", "write_recording"]

_STATS = ("min", "max", "mean", "median", "std")


def folder_name(data_key: str, tag: str = "GrayImageNet", digest: str = "0" * 32) -> str:
    """The SENSORIUM folder name of a recording: `static{data_key}-{tag}-{digest}`."""
    return f"static{data_key}-{tag}-{digest}"


def compute_statistics(recording: Recording) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Statistics files as SENSORIUM ships them: images pooled over pixels, the rest per column."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for variable in ("images", "responses", "behavior", "pupil_center"):
        values = getattr(recording, variable)
        stats = _image_statistics(values) if variable == "images" else _column_statistics(values)
        # Static-image recordings show only stimulus frames, so both groups describe the same trials.
        out[variable] = {"all": stats, "stimulus_frame": dict(stats)}
    return out


def _column_statistics(values: np.ndarray) -> dict[str, np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    return {
        "min": v.min(axis=0).astype(np.float32),
        "max": v.max(axis=0).astype(np.float32),
        "mean": v.mean(axis=0).astype(np.float32),
        "median": np.median(v, axis=0).astype(np.float32),
        "std": v.std(axis=0).astype(np.float32),
    }


def _image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Scalars over all pixels of all trials, in chunks (the images may not fit twice in memory)."""
    total, total_sq, count = 0.0, 0.0, 0
    low, high = np.inf, -np.inf
    histogram = np.zeros(256, np.int64) if images.dtype == np.uint8 else None
    for start in range(0, len(images), 512):
        chunk = np.asarray(images[start : start + 512])
        as_float = chunk.astype(np.float64)
        total += float(as_float.sum())
        total_sq += float(np.square(as_float).sum())
        count += as_float.size
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        if histogram is not None:
            histogram += np.bincount(chunk.ravel(), minlength=256)
    mean = total / count
    std = np.sqrt(max(total_sq / count - mean**2, 0.0))
    if histogram is not None:
        cumulative = np.cumsum(histogram)
        lower = int(np.searchsorted(cumulative, (count - 1) // 2 + 1))
        upper = int(np.searchsorted(cumulative, count // 2 + 1))
        median = (lower + upper) / 2
    else:
        median = float(np.median(np.asarray(images, dtype=np.float64)))
    values = {"min": low, "max": high, "mean": mean, "median": median, "std": std}
    return {k: np.asarray(values[k], dtype=np.float32) for k in _STATS}


def write_recording(
    recording: Recording,
    path: str | os.PathLike[str],
    *,
    statistics: dict[str, dict[str, dict[str, np.ndarray]]] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write `recording` to folder `path` (or to a zip if `path` ends in .zip). Returns the path.

    `statistics` defaults to `compute_statistics(recording)`.
    """
    target = Path(path)
    as_zip = target.suffix == ".zip"
    if target.exists() and not overwrite:
        raise FormatError(f"{target}: already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    stats = statistics if statistics is not None else compute_statistics(recording)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        folder = tmp / (target.stem if as_zip else target.name)
        _write_folder(recording, folder, stats, progress)
        if as_zip:
            _zip_folder(folder, tmp / target.name)
            built = tmp / target.name
        else:
            built = folder
        _replace(built, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_folder(recording: Recording, folder: Path, stats, progress: bool) -> None:
    bar = tqdm(
        total=recording.n_trials * 4,
        desc=f"writing {recording.data_key}",
        unit="file",
        disable=not progress,
        leave=False,
    )
    with bar:
        for variable in ("images", "responses", "behavior", "pupil_center"):
            write_trial_files(folder / "data" / variable, getattr(recording, variable), progress=bar.update)
    trials = dict(recording.trials_meta)
    trials.update(tiers=recording.tiers, frame_image_id=recording.image_ids, trial_idx=recording.trial_ids)
    _save_all(folder / "meta" / "trials", trials)
    _save_all(folder / "meta" / "neurons", _neurons_meta(recording))
    for variable, groups in stats.items():
        for group, values in groups.items():
            _save_all(folder / "meta" / "statistics" / variable / group, values)


def _neurons_meta(recording: Recording) -> dict[str, np.ndarray]:
    n = recording.n_neurons
    meta = dict(recording.neurons_meta)
    parts = recording.data_key.split("-")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        for name, value in zip(("animal_ids", "sessions", "scan_idx"), parts, strict=False):
            meta.setdefault(name, np.full(n, int(value), dtype=np.int64))
    meta.setdefault("area", np.full(n, "V1"))
    meta.setdefault("layer", np.full(n, "L2/3"))
    meta.update(unit_ids=recording.neuron_ids, cell_motor_coordinates=recording.cell_motor_coordinates)
    return meta


def _save_all(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype == object:
            array = array.astype(str)
        np.save(folder / f"{name}.npy", array, allow_pickle=False)


def _zip_folder(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, f"{folder.name}/{file.relative_to(folder)}")


def _replace(built: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(built, target)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(built, target)
