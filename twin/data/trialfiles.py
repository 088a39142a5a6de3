"""Read and write the per-trial files (`data/<variable>/{i}.npy`) fast.

A SENSORIUM recording holds tens of thousands of tiny .npy files. `np.load`/`np.save` per file spend most
of their time parsing and formatting headers, so both directions here handle the header once per variable
(every file of a variable has the same header) and move raw bytes, on a small thread pool because the
work is file-system bound.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from twin.data.source import Source, decode_npy
from twin.errors import FormatError

__all__ = ["read_trial_files", "trial_file_indices", "write_trial_files"]

_THREADS = 8
_CHUNK = 256


def trial_file_indices(source: Source, variable: str, n_trials: int) -> None:
    """Check `data/<variable>/` holds exactly the files 0.npy ... (n_trials-1).npy."""
    folder = f"data/{variable}"
    names = [p.rsplit("/", 1)[-1] for p in source.files(folder)]
    stems = {n[:-4] for n in names if n.endswith(".npy")}
    if len(stems) != n_trials:
        raise FormatError(
            f"{source.describe(folder)}: {len(stems)} trial files, but meta/trials/tiers.npy lists "
            f"{n_trials} trials; expected one file per trial"
        )
    bad = sorted(s for s in stems if not s.isdigit() or int(s) >= n_trials)
    if bad:
        raise FormatError(
            f"{source.describe(folder)}: unexpected file names {[b + '.npy' for b in bad[:5]]}; "
            f"expected 0.npy ... {n_trials - 1}.npy"
        )


def read_trial_files(
    source: Source,
    variable: str,
    n_trials: int,
    allocate: Callable[[tuple[int, ...], np.dtype], np.ndarray],
    check: Callable[[np.ndarray, int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Stack `data/<variable>/{0..n-1}.npy` into one array from `allocate(shape, dtype)`.

    Every file must have the shape and dtype of file 0. `check(chunk, start)` sees each chunk of trials
    as it is read (for NaN / sign checks that name the offending file).
    """
    first_path = f"data/{variable}/0.npy"
    first_bytes = source.read(first_path)
    first = decode_npy(first_bytes, source.describe(first_path))
    if first.dtype.hasobject:
        raise FormatError(f"{source.describe(first_path)}: dtype {first.dtype}; expected a numeric array")
    header_len = len(first_bytes) - first.nbytes
    header = first_bytes[:header_len]
    out = allocate((n_trials, *first.shape), first.dtype)

    def decode(i: int) -> np.ndarray:
        path = f"data/{variable}/{i}.npy"
        buf = source.read(path)
        if len(buf) == len(first_bytes) and buf[:header_len] == header:
            return np.frombuffer(buf, dtype=first.dtype, offset=header_len).reshape(first.shape)
        array = decode_npy(buf, source.describe(path))
        if array.shape != first.shape or array.dtype != first.dtype:
            raise FormatError(
                f"{source.describe(path)}: shape {array.shape} dtype {array.dtype}; expected shape "
                f"{first.shape} dtype {first.dtype} like {first_path}"
            )
        return array

    def fill(start: int) -> int:
        stop = min(start + _CHUNK, n_trials)
        block = np.stack([decode(i) for i in range(start, stop)])
        if check is not None:
            check(block, start)
        out[start:stop] = block
        return stop - start

    with ThreadPoolExecutor(_THREADS) as pool:
        for done in pool.map(fill, range(0, n_trials, _CHUNK)):
            if progress is not None:
                progress(done)
    return out


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        stream, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    return stream.getvalue()


def write_trial_files(folder: Path, array: np.ndarray, progress: Callable[[int], None] | None = None) -> None:
    """Write `array[i]` to `folder/{i}.npy` for every trial i, readable by `np.load`."""
    os.makedirs(folder, exist_ok=True)
    n = array.shape[0]
    header = _header(array.dtype, tuple(array.shape[1:]))

    # Sequential on purpose: concurrent file creation in one folder contends on the directory lock
    # (measured ~10x slower with 8 threads on ext4).
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        block = np.ascontiguousarray(array[start:stop])
        for i in range(start, stop):
            with open(folder / f"{i}.npy", "wb") as f:
                f.write(header)
                f.write(block[i - start].tobytes())
        if progress is not None:
            progress(stop - start)
