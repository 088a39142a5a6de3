"""The recording cache: the per-trial files of a recording, stacked once into memory-mappable .npy files.

One cache entry per recording location, under `$TWIN_CACHE_DIR` (default `$XDG_CACHE_HOME/twin`, else
`~/.cache/twin`). An entry records the source's fingerprint and is rebuilt when the folder or zip
changes. Entries are built in a temporary folder and renamed into place, so a killed build leaves
nothing half-written and concurrent readers (e.g. several training processes) never see a partial one.
Builders of one entry take turns (an advisory file lock beside it): the first builds, the others wait and
open what it published instead of reading every file again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["CACHE_VERSION", "build_lock", "cache_root", "entry_dir", "open_entry", "publish_entry"]

CACHE_VERSION = 1


def cache_root() -> Path:
    explicit = os.environ.get("TWIN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "twin"


def entry_dir(location: Path, name: str) -> Path:
    """The cache folder of one recording location (stable across runs, distinct per path)."""
    key = hashlib.sha1(str(location.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "recordings" / f"{name[:60]}-{key}"


def open_entry(folder: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    """Memory-map a valid entry's arrays, or None when missing, stale or unreadable."""
    try:
        meta = json.loads((folder / "entry.json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fingerprint:
            return None
        return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Hold the lock on building `folder`'s entry (released when the holder exits, even killed)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks: concurrent builders each build; publishing stays atomic
        yield
        return
    locks = folder.parent.parent / "locks"  # beside recordings/, which holds entries only
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{folder.name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def new_entry_dir(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))


def publish_entry(tmp: Path, folder: Path, fingerprint: str, arrays: list[str]) -> None:
    """Mark `tmp` complete and move it to `folder`, replacing a stale entry."""
    meta = {"version": CACHE_VERSION, "fingerprint": fingerprint, "arrays": arrays}
    (tmp / "entry.json").write_text(json.dumps(meta))
    if open_entry(folder, fingerprint) is not None:  # a valid entry of the same files: keep it
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if folder.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".stale", dir=folder.parent))
        with contextlib.suppress(OSError):  # another process replaced it first
            os.replace(folder, stale / "entry")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:
        # Another process published the same entry first; theirs is as good as ours.
        shutil.rmtree(tmp, ignore_errors=True)
