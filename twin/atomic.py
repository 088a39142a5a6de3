"""Files written atomically: a reader sees the previous version or the new one whole, never a part.

`replacing(path)` hands out a temporary path beside `path` (same folder, so the final rename stays on one
file system; same suffix, so writers that go by the extension, like matplotlib's `savefig`, still work).
When the block ends normally the temporary file is flushed to disk and renamed over `path` in one step;
when it raises, the temporary file is removed and `path` is left as it was. A process killed inside the
block leaves `path` as it was too, plus a hidden `.NAME.tmp-PID-…` file that nothing reads.

    with replacing(run / "best.pt") as tmp:
        torch.save(state, tmp)
    write_json(run / "metrics.json", scores)

Whole folders (recordings, artifacts, held-out data) are published the same way by their own writers.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["replacing", "write_json", "write_text"]


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path to write; on normal exit it replaces `path` atomically (parent folders made)."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target}: is a folder; expected a file path to write")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread: concurrent writers of one path never share a temporary file.
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}-{threading.get_ident()}{target.suffix}")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp}: nothing was written for {target}")
        with open(tmp, "rb+") as written:  # on disk before the rename: a crash cannot publish a hole
            os.fsync(written.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`text` (UTF-8) as the new content of `path`, atomically; returns the path."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: object, *, indent: int | None = 1) -> Path:
    """`obj` as JSON (newline-terminated) in `path`, atomically; an unserializable object raises before
    anything is written, leaving `path` as it was."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")
