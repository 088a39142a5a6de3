"""Where a recording's files come from: a folder or the distributed .zip, behind one small interface.

A `Source` lists relative paths (`data/images/0.npy`, `meta/trials/tiers.npy`, ...), reads one file's
bytes, and gives a fingerprint that changes whenever the recording on disk changes (so caches built from
it can be invalidated).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
from pathlib import Path

import numpy as np

from twin.errors import FormatError

__all__ = ["Source", "decode_npy", "open_source"]

_REQUIRED_DIRS = ("data", "meta")


class Source:
    """Files of one recording, addressed by paths relative to the recording's root."""

    def __init__(self, location: Path, name: str) -> None:
        self.location = location  # the folder or zip file the user named
        self.name = name  # the recording folder's own name (e.g. static26872-17-20-GrayImageNet-...)

    def files(self, prefix: str) -> list[str]:
        """Relative paths of the files directly inside folder `prefix` (e.g. `data/images`)."""
        raise NotImplementedError

    def has_dir(self, prefix: str) -> bool:
        raise NotImplementedError

    def read(self, relpath: str) -> bytes:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def describe(self, relpath: str) -> str:
        """How to name a file in an error message."""
        return f"{self.location}/{relpath}" if self.location.is_dir() else f"{self.location}:{relpath}"

    def load(self, relpath: str) -> np.ndarray:
        return decode_npy(self.read(relpath), self.describe(relpath))


class FolderSource(Source):
    def __init__(self, root: Path, location: Path) -> None:
        super().__init__(location, root.name)
        self.root = root

    def files(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        if not folder.is_dir():
            return []
        with os.scandir(folder) as entries:
            return [f"{prefix}/{e.name}" for e in entries if e.is_file() and not e.name.startswith(".")]

    def has_dir(self, prefix: str) -> bool:
        return (self.root / prefix).is_dir()

    def read(self, relpath: str) -> bytes:
        try:
            with open(self.root / relpath, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FormatError(f"{self.describe(relpath)}: missing file") from None

    def describe(self, relpath: str) -> str:
        return str(self.root / relpath)

    def fingerprint(self) -> str:
        """Hash of (path, size, mtime) of every file under data/ and meta/: any edit changes it."""
        digest = hashlib.sha1(str(self.root.resolve()).encode())
        for top in _REQUIRED_DIRS:
            stack = [self.root / top]
            while stack:
                with os.scandir(stack.pop()) as entries:
                    for entry in sorted(entries, key=lambda e: e.name):
                        if entry.is_dir():
                            stack.append(Path(entry.path))
                        else:
                            st = entry.stat()
                            digest.update(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()


class ZipSource(Source):
    """A recording inside a zip, as distributed: `<folder>/data/...`, `<folder>/meta/...`."""

    def __init__(self, path: Path) -> None:
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise FormatError(f"{path}: not a readable zip file ({exc})") from None
        names = [n for n in archive.namelist() if not n.endswith("/") and "__MACOSX" not in n]
        prefix = _zip_prefix(names, path)
        super().__init__(path, prefix.rstrip("/").rsplit("/", 1)[-1] if prefix else path.stem)
        self._prefix = prefix
        self._local = threading.local()
        self._members: dict[str, list[str]] = {}
        self._dirs: set[str] = set()
        for name in names:
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix) :]
            folder, _, _ = rel.rpartition("/")
            self._members.setdefault(folder, []).append(rel)
            parts = folder.split("/")
            self._dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        archive.close()

    def _archive(self) -> zipfile.ZipFile:
        # ZipFile handles are not safe to share across threads: one per thread.
        archive = getattr(self._local, "archive", None)
        if archive is None:
            archive = self._local.archive = zipfile.ZipFile(self.location)
        return archive

    def files(self, prefix: str) -> list[str]:
        return [m for m in self._members.get(prefix, []) if not m.rsplit("/", 1)[-1].startswith(".")]

    def has_dir(self, prefix: str) -> bool:
        return prefix in self._dirs

    def read(self, relpath: str) -> bytes:
        try:
            return self._archive().read(self._prefix + relpath)
        except KeyError:
            raise FormatError(f"{self.describe(relpath)}: missing file") from None

    def fingerprint(self) -> str:
        st = self.location.stat()
        key = f"{self.location.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
        return hashlib.sha1(key.encode()).hexdigest()


def _zip_prefix(names: list[str], path: Path) -> str:
    """The folder inside the zip that holds data/ and meta/ ('' when they sit at the top)."""
    candidates = set()
    for name in names:
        for marker in ("data/", "meta/"):
            pos = name.find(marker)
            if pos == 0 or (pos > 0 and name[pos - 1] == "/"):
                candidates.add(name[:pos])
    complete = sorted(
        p
        for p in candidates
        if any(n.startswith(p + "data/") for n in names) and any(n.startswith(p + "meta/") for n in names)
    )
    if not complete:
        raise FormatError(f"{path}: no recording inside (expected a folder with data/ and meta/)")
    if len(complete) > 1:
        raise FormatError(f"{path}: {len(complete)} recordings inside ({complete[:3]}...); expected one")
    return complete[0]


def open_source(path: str | os.PathLike[str]) -> Source:
    """A folder (the recording itself, or a folder holding exactly one) or a .zip of one recording."""
    location = Path(path)
    if not location.exists():
        raise FormatError(f"{location}: no such file or folder")
    if location.is_file():
        if not zipfile.is_zipfile(location):
            raise FormatError(f"{location}: expected a recording folder or a .zip of one")
        return ZipSource(location)
    if all((location / d).is_dir() for d in _REQUIRED_DIRS):
        return FolderSource(location, location)
    inner = [p for p in location.iterdir() if p.is_dir() and all((p / d).is_dir() for d in _REQUIRED_DIRS)]
    if len(inner) == 1:
        return FolderSource(inner[0], location)
    missing = [d for d in _REQUIRED_DIRS if not (location / d).is_dir()]
    if inner:
        raise FormatError(f"{location}: holds {len(inner)} recordings; name one of them")
    raise FormatError(f"{location}: not a recording folder (missing {', '.join(m + '/' for m in missing)})")


def decode_npy(buf: bytes, where: str) -> np.ndarray:
    """Parse .npy bytes. Object arrays (strings pickled by older tools) are allowed in metadata only."""
    if not buf.startswith(b"\x93NUMPY"):
        raise FormatError(f"{where}: not a valid .npy file (no .npy header)")
    stream = io.BytesIO(buf)
    try:
        return np.load(stream, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise FormatError(f"{where}: not a valid .npy file ({exc})") from None
    except Exception as exc:  # truncated or garbage bytes
        raise FormatError(f"{where}: not a valid .npy file ({exc})") from None
    stream.seek(0)
    try:
        array = np.load(stream, allow_pickle=True)
    except Exception as exc:  # a pickle that needs a module we do not have, or garbage
        raise FormatError(f"{where}: unreadable object array ({type(exc).__name__}: {exc})") from None
    return array.astype(str) if array.dtype == object else array
