"""The model repository: `ROOT/<name>/<version>/manifest.json`, loaded, versioned and hot-reloaded.

A version is a folder with a positive integer name (`1`, `2`, ...) holding a `manifest.json`; anything
else (a `.3.tmp` folder being written, a folder without a manifest yet) is not a version. `reload()`
scans the folder and, per model, loads versions newest first with the loader (`twin.artifact.load` by
default) until `keep_versions` of them are ready (all of them when None). The newest ready version
serves requests that name no version.

- A version that fails to load is recorded with its error and does not replace anything: the serving
  version keeps answering. It is retried only when its folder or manifest changes.
- Versions are immutable once loaded: a later change to a ready version's files is not picked up.
- A version whose folder disappears, or that falls out of the newest `keep_versions` ready ones, is
  retired: new requests no longer see it, requests holding a lease finish on it, and it is closed (its
  `close()` called, if it has one) when the last lease is released.
- `start_polling(interval_s)` re-scans in a background thread; the Reload RPC calls `reload()` (in a
  worker thread). Re-scans never overlap; leases are taken and released from any thread.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from twin.errors import FormatError, InvalidInput, ModelNotFound, ModelNotReady, TwinError

__all__ = [
    "FAILED",
    "LOADING",
    "READY",
    "UNLOADING",
    "ModelLease",
    "ModelRepository",
    "ModelStatus",
    "ReloadReport",
    "VersionStatus",
]

log = logging.getLogger(__name__)

Loader = Callable[[Path], Any]
# on_event(model, version, outcome, error): outcome is "loaded", "failed" or "unloaded".
EventHook = Callable[[str, int, str, str | None], None]

LOADING, READY, FAILED, UNLOADING = "loading", "ready", "failed", "unloading"
_VERSION_RE = re.compile(r"^[1-9][0-9]*$")


@dataclass(frozen=True)
class VersionStatus:
    """One version of one model as the repository sees it."""

    model: str
    version: int
    state: str  # LOADING, READY, FAILED or UNLOADING
    error: str | None  # why the load failed (FAILED)
    serving: bool  # answers requests that name no version
    path: Path


@dataclass(frozen=True)
class ModelStatus:
    """One model: its serving version (None when no version is ready) and every version tried."""

    name: str
    serving_version: int | None
    versions: list[VersionStatus]  # oldest first


@dataclass
class ReloadReport:
    """What one re-scan changed."""

    loaded: list[VersionStatus] = field(default_factory=list)
    failed: list[VersionStatus] = field(default_factory=list)
    unloaded: list[VersionStatus] = field(default_factory=list)


@dataclass(eq=False)
class _Entry:
    model: str
    version: int
    path: Path
    fingerprint: tuple[int, ...]
    state: str = LOADING
    error: str | None = None
    artifact: Any = None
    leases: int = 0


class ModelLease:
    """A loaded version held for one request: it stays loaded until `release()` (or the `with` exits)."""

    def __init__(self, repository: ModelRepository, entry: _Entry) -> None:
        self._repository = repository
        self._entry: _Entry | None = entry
        self.model: str = entry.model
        self.version: int = entry.version
        self.artifact: Any = entry.artifact

    def release(self) -> None:
        """Give the version back (idempotent)."""
        entry, self._entry = self._entry, None
        if entry is not None:
            self._repository._release(entry)

    def __enter__(self) -> ModelLease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _default_loader(path: Path) -> Any:
    from twin.artifact import load  # imported here: the repository itself needs no model code

    return load(path)


def _fingerprint(folder: Path) -> tuple[int, ...]:
    """Changes when the version folder's entries or its manifest change (to retry a failed load)."""
    manifest = (folder / "manifest.json").stat()
    return folder.stat().st_mtime_ns, manifest.st_mtime_ns, manifest.st_size, manifest.st_ino


class ModelRepository:
    """Models under `root`, loaded by `loader(path)`; see the module docstring for the policy."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        loader: Loader | None = None,
        *,
        keep_versions: int | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        if keep_versions is not None and (not isinstance(keep_versions, int) or keep_versions < 1):
            raise InvalidInput(f"keep_versions: {keep_versions!r}; expected an integer >= 1 or None (all)")
        self.root = Path(root)
        self._loader = loader or _default_loader
        self.keep_versions = keep_versions
        self._on_event = on_event
        self._entries: dict[tuple[str, int], _Entry] = {}  # live versions (not retired)
        self._lock = threading.Lock()  # guards _entries and leases
        self._reload_lock = threading.Lock()  # one re-scan at a time
        self._poll_stop: threading.Event | None = None
        self._poller: threading.Thread | None = None

    # -----------------------------------------------------------------------------------------------
    # Scanning and loading

    def _scan(self) -> dict[str, dict[int, Path]]:
        if not self.root.is_dir():
            raise FormatError(
                f"model repository: {self.root} is not a directory; expected ROOT/<name>/<version>/"
            )
        found: dict[str, dict[int, Path]] = {}
        for model in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            versions = {
                int(v.name): v
                for v in model.iterdir()
                if _VERSION_RE.match(v.name) and v.is_dir() and (v / "manifest.json").is_file()
            }
            if versions:
                found[model.name] = versions
        return found

    def reload(self) -> ReloadReport:
        """Re-scan `root`: load new versions, retire removed or surplus ones. Returns what changed."""
        with self._reload_lock:
            found = self._scan()
            report = ReloadReport()
            with self._lock:
                gone = [e for key, e in self._entries.items() if key[1] not in found.get(key[0], {})]
            self._retire(gone, report)
            for model, versions in found.items():
                self._reload_model(model, versions, report)
            return report

    def _reload_model(self, model: str, versions: dict[int, Path], report: ReloadReport) -> None:
        ready: list[_Entry] = []
        for version in sorted(versions, reverse=True):
            if self.keep_versions is not None and len(ready) >= self.keep_versions:
                break
            entry = self._ensure(model, version, versions[version], report)
            if entry is not None and entry.state == READY:
                ready.append(entry)
        with self._lock:
            surplus = [
                e for e in self._entries.values() if e.model == model and e.state == READY and e not in ready
            ]
        self._retire(surplus, report)

    def _ensure(self, model: str, version: int, path: Path, report: ReloadReport) -> _Entry | None:
        """The entry of one version, loading it when new (or failed and changed since)."""
        try:
            fingerprint = _fingerprint(path)
        except FileNotFoundError:  # removed during the scan
            return None
        with self._lock:
            entry = self._entries.get((model, version))
            if entry is not None and (entry.state == READY or entry.fingerprint == fingerprint):
                return entry
            entry = _Entry(model, version, path, fingerprint)
            self._entries[(model, version)] = entry
        try:
            artifact = self._loader(path)
        except Exception as exc:
            if not isinstance(exc, TwinError):
                log.exception("model %s version %s: unexpected error while loading %s", model, version, path)
            error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                entry.state, entry.error = FAILED, error
                report.failed.append(self._status(entry))
            log.warning("model %s version %s failed to load: %s", model, version, error)
            self._event(model, version, "failed", error)
            return entry
        with self._lock:
            entry.artifact, entry.state = artifact, READY
            report.loaded.append(self._status(entry))
        log.info("model %s version %s loaded from %s", model, version, path)
        self._event(model, version, "loaded", None)
        return entry

    def _retire(self, entries: list[_Entry], report: ReloadReport) -> None:
        """Hide entries from new requests; each is closed once its last lease is released."""
        retired, to_close = [], []
        with self._lock:
            for entry in entries:
                if self._entries.get((entry.model, entry.version)) is not entry:
                    continue
                del self._entries[(entry.model, entry.version)]
                if entry.state != READY:
                    continue  # failed: nothing to unload
                entry.state = UNLOADING
                report.unloaded.append(self._status(entry))
                retired.append(entry)
                if entry.leases == 0:
                    to_close.append(entry)
        for entry in retired:
            log.info("model %s version %s unloaded", entry.model, entry.version)
            self._event(entry.model, entry.version, "unloaded", None)
        for entry in to_close:
            _close(entry)

    def _event(self, model: str, version: int, outcome: str, error: str | None) -> None:
        if self._on_event is not None:
            self._on_event(model, version, outcome, error)

    # -----------------------------------------------------------------------------------------------
    # Leases

    def acquire(self, model: str, version: int | None = None) -> ModelLease:
        """Hold a ready version (the serving one when `version` is None) for the length of a request."""
        if version is not None and (not isinstance(version, int) or version < 1):
            raise InvalidInput(
                f"version: {version!r}; expected a positive integer, or none for the serving one"
            )
        with self._lock:
            entries = sorted((e for e in self._entries.values() if e.model == model), key=lambda e: e.version)
            if not entries:
                known = sorted({e.model for e in self._entries.values()})
                raise ModelNotFound(
                    f"model: {model!r} is not in the repository {self.root}; expected one of {known}"
                )
            ready = [e for e in entries if e.state == READY]
            entry = self._pick(model, version, entries, ready)
            entry.leases += 1
            return ModelLease(self, entry)

    @staticmethod
    def _pick(model: str, version: int | None, entries: list[_Entry], ready: list[_Entry]) -> _Entry:
        if version is None:
            if ready:
                return ready[-1]
            reasons = "; ".join(f"version {e.version}: {e.error or e.state}" for e in entries)
            raise ModelNotReady(f"model {model!r}: no version is ready ({reasons})")
        entry = next((e for e in entries if e.version == version), None)
        if entry is None:
            raise ModelNotFound(
                f"version: {version} of model {model!r} is not loaded; "
                f"expected one of {[e.version for e in ready]}"
            )
        if entry.state != READY:
            raise ModelNotReady(f"model {model!r} version {version}: {entry.error or entry.state}")
        return entry

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.leases -= 1
            closing = entry.state == UNLOADING and entry.leases == 0
        if closing:
            _close(entry)

    # -----------------------------------------------------------------------------------------------
    # Status

    def _status(self, entry: _Entry) -> VersionStatus:
        serving = entry.state == READY and entry.version == max(
            (e.version for e in self._entries.values() if e.model == entry.model and e.state == READY),
            default=None,
        )
        return VersionStatus(entry.model, entry.version, entry.state, entry.error, serving, entry.path)

    def models(self) -> list[ModelStatus]:
        """Every model with its versions, by name."""
        with self._lock:
            names = sorted({e.model for e in self._entries.values()})
            return [self._model_status(name) for name in names]

    def model(self, name: str) -> ModelStatus:
        """One model's status; ModelNotFound when the repository has no such model."""
        with self._lock:
            if not any(e.model == name for e in self._entries.values()):
                known = sorted({e.model for e in self._entries.values()})
                raise ModelNotFound(
                    f"model: {name!r} is not in the repository {self.root}; expected one of {known}"
                )
            return self._model_status(name)

    def serving_data_keys(self, status: ModelStatus) -> list[str]:
        """The data keys of `status`'s serving version: [] when none serves or it was retired since."""
        if status.serving_version is None:
            return []
        try:
            with self.acquire(status.name, status.serving_version) as lease:
                return list(lease.artifact.data_keys)
        except TwinError:
            return []

    def _model_status(self, name: str) -> ModelStatus:
        entries = sorted((e for e in self._entries.values() if e.model == name), key=lambda e: e.version)
        versions = [self._status(e) for e in entries]
        serving = next((v.version for v in versions if v.serving), None)
        return ModelStatus(name, serving, versions)

    # -----------------------------------------------------------------------------------------------
    # Background polling and shutdown

    def start_polling(self, interval_s: float) -> None:
        """Re-scan every `interval_s` seconds in a daemon thread (errors are logged, polling goes on)."""
        if not interval_s > 0:
            raise InvalidInput(f"interval_s: {interval_s!r}; expected a number of seconds > 0")
        if self._poller is not None:
            raise InvalidInput("start_polling: already polling; call stop_polling() first")
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(interval_s):
                try:
                    self.reload()
                except Exception:
                    log.exception("model repository %s: re-scan failed", self.root)

        self._poll_stop = stop
        self._poller = threading.Thread(target=poll, name="model-repository-poll", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        """Stop the background re-scans (waits for one in progress)."""
        if self._poller is not None and self._poll_stop is not None:
            self._poll_stop.set()
            self._poller.join()
        self._poller = self._poll_stop = None

    def close(self) -> None:
        """Stop polling and retire every version (each closes once its leases are released)."""
        self.stop_polling()
        with self._reload_lock:
            with self._lock:
                entries = list(self._entries.values())
            self._retire(entries, ReloadReport())


def _close(entry: _Entry) -> None:
    close = getattr(entry.artifact, "close", None)
    entry.artifact = None
    if callable(close):
        try:
            close()
        except Exception:
            log.exception("model %s version %s: close() failed", entry.model, entry.version)
