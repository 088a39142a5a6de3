"""The model repository over real folders, with a small real loader (a JSON manifest)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from serving.repository import FAILED, READY, ModelRepository
from twin.errors import FormatError, InvalidInput, ModelNotFound, ModelNotReady


class JsonModel:
    """What the loader returns: the manifest's contents, usable until closed."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.data_keys = manifest.get("data_keys", [])
        self.closed = False
        self.in_use = 0
        self.lock = threading.Lock()

    def predict(self) -> str:
        with self.lock:
            if self.closed:
                raise RuntimeError(f"{self.path}: used after close")
            self.in_use += 1
        time.sleep(0.0005)
        with self.lock:
            self.in_use -= 1
        return self.manifest["answer"]

    def close(self) -> None:
        with self.lock:
            if self.in_use:
                raise RuntimeError(f"{self.path}: closed while in use")
            self.closed = True


class Loader:
    """Loads a version's manifest.json; FormatError when it is not a JSON object with an 'answer'."""

    def __init__(self):
        self.calls: list[Path] = []
        self.loaded: list[JsonModel] = []

    def __call__(self, path: Path) -> JsonModel:
        self.calls.append(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path / 'manifest.json'}: not JSON ({exc.msg}); expected an object") from None
        if not isinstance(manifest, dict) or "answer" not in manifest:
            raise FormatError(f"{path / 'manifest.json'}: no 'answer'; expected {{'answer': ...}}")
        model = JsonModel(path, manifest)
        self.loaded.append(model)
        return model


def write_version(root: Path, model: str, version: int | str, content: str | None = None) -> Path:
    folder = root / model / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"answer": f"{model}:{version}"}) if content is None else content
    (folder / "manifest.json").write_text(text)
    return folder


def touch_later(path: Path) -> None:
    """Make a change visible to mtime-based checks even on coarse clocks."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000_000))


@pytest.fixture
def root(tmp_path) -> Path:
    write_version(tmp_path, "alpha", 1)
    write_version(tmp_path, "alpha", 2)
    write_version(tmp_path, "beta", 7)
    (tmp_path / "alpha" / ".3.tmp").mkdir()  # an artifact being written
    (tmp_path / "alpha" / "4").mkdir()  # no manifest yet
    (tmp_path / "alpha" / "notes").mkdir()
    (tmp_path / "alpha" / "0").mkdir()  # versions start at 1
    write_version(tmp_path, ".hidden", 1)
    return tmp_path


def test_scans_versions_and_serves_the_latest(root):
    events = []
    loader = Loader()
    repo = ModelRepository(root, loader, on_event=lambda *e: events.append(e))
    assert repo.models() == []  # nothing happens before reload()
    report = repo.reload()
    assert [(s.model, s.version) for s in report.loaded] == [("alpha", 2), ("alpha", 1), ("beta", 7)]
    assert not report.failed and not report.unloaded
    assert sorted(events) == [
        ("alpha", 1, "loaded", None),
        ("alpha", 2, "loaded", None),
        ("beta", 7, "loaded", None),
    ]
    statuses = {m.name: m for m in repo.models()}
    assert statuses["alpha"].serving_version == 2
    assert [(v.version, v.state, v.serving) for v in statuses["alpha"].versions] == [
        (1, READY, False),
        (2, READY, True),
    ]
    with repo.acquire("alpha") as lease:
        assert (lease.model, lease.version, lease.artifact.predict()) == ("alpha", 2, "alpha:2")
    with repo.acquire("alpha", 1) as lease:
        assert lease.artifact.predict() == "alpha:1"
    assert repo.reload().loaded == []  # nothing new: nothing loaded again
    assert len(loader.calls) == 3


def test_a_new_version_takes_over_and_the_old_one_finishes_its_requests(root):
    loader = Loader()
    repo = ModelRepository(root, loader, keep_versions=1)
    repo.reload()
    assert [v.version for v in repo.model("alpha").versions] == [2]
    old = repo.acquire("alpha")  # an in-flight request on version 2
    write_version(root, "alpha", 3)
    report = repo.reload()
    assert [(s.model, s.version) for s in report.loaded] == [("alpha", 3)]
    assert [(s.model, s.version, s.state) for s in report.unloaded] == [("alpha", 2, "unloading")]
    with repo.acquire("alpha") as lease:
        assert lease.version == 3
    with pytest.raises(
        ModelNotFound, match=r"version: 2 of model 'alpha' is not loaded; expected one of \[3\]"
    ):
        repo.acquire("alpha", 2)
    assert old.artifact.predict() == "alpha:2" and not old.artifact.closed  # still usable
    old.release()
    assert old.artifact.closed  # closed once its last request finished
    old.release()  # idempotent


def test_a_failed_version_keeps_the_serving_one_and_is_retried_when_changed(root):
    events = []
    loader = Loader()
    repo = ModelRepository(root, loader, on_event=lambda *e: events.append(e))
    repo.reload()
    bad = write_version(root, "alpha", 3, content="{not json")
    report = repo.reload()
    assert report.loaded == [] and [(s.version, s.state) for s in report.failed] == [(3, FAILED)]
    assert "FormatError" in report.failed[0].error and "not JSON" in report.failed[0].error
    assert events[-1][:3] == ("alpha", 3, "failed") and "not JSON" in events[-1][3]
    status = repo.model("alpha")
    assert status.serving_version == 2
    assert [(v.version, v.state) for v in status.versions] == [(1, READY), (2, READY), (3, FAILED)]
    with repo.acquire("alpha") as lease:
        assert lease.version == 2
    with pytest.raises(ModelNotReady, match=r"model 'alpha' version 3: FormatError: .*not JSON"):
        repo.acquire("alpha", 3)

    calls = len(loader.calls)
    assert repo.reload().failed == []  # unchanged: not retried
    assert len(loader.calls) == calls

    (bad / "manifest.json").write_text(json.dumps({"answer": "fixed"}))
    touch_later(bad / "manifest.json")
    report = repo.reload()
    assert [s.version for s in report.loaded] == [3]
    with repo.acquire("alpha") as lease:
        assert lease.artifact.predict() == "fixed"


def test_newest_broken_version_falls_back_to_an_older_one_at_startup(root):
    write_version(root, "alpha", 3, content="[]")
    repo = ModelRepository(root, Loader(), keep_versions=1)
    report = repo.reload()
    assert [(s.model, s.version) for s in report.failed] == [("alpha", 3)]
    assert repo.model("alpha").serving_version == 2
    assert [v.version for v in repo.model("alpha").versions] == [2, 3]  # version 1 is not needed


def test_removed_versions_and_models_are_unloaded(root):
    loader = Loader()
    events = []
    repo = ModelRepository(root, loader, on_event=lambda *e: events.append(e))
    repo.reload()
    shutil.rmtree(root / "alpha" / "2")
    shutil.rmtree(root / "beta")
    report = repo.reload()
    assert sorted((s.model, s.version) for s in report.unloaded) == [("alpha", 2), ("beta", 7)]
    assert ("beta", 7, "unloaded", None) in events
    assert repo.model("alpha").serving_version == 1
    with pytest.raises(
        ModelNotFound, match=r"model: 'beta' is not in the repository .*; expected one of \['alpha'\]"
    ):
        repo.acquire("beta")
    closed = {(m.path.parent.name, m.path.name) for m in loader.loaded if m.closed}
    assert closed == {("alpha", "2"), ("beta", "7")}


def test_a_model_with_no_ready_version_is_not_ready(tmp_path):
    write_version(tmp_path, "gamma", 1, content="{}")
    repo = ModelRepository(tmp_path, Loader())
    repo.reload()
    assert repo.model("gamma").serving_version is None
    with pytest.raises(
        ModelNotReady, match=r"model 'gamma': no version is ready \(version 1: FormatError: .*answer"
    ):
        repo.acquire("gamma")


def test_serving_data_keys_name_the_serving_version_s_keys_or_none(tmp_path):
    for version in (1, 2):
        keys = [f"9000{version}-1-1", "90009-1-1"]
        write_version(tmp_path, "alpha", version, json.dumps({"answer": version, "data_keys": keys}))
    write_version(tmp_path, "gamma", 1, content="{}")  # fails to load: no version serves
    repo = ModelRepository(tmp_path, Loader())
    repo.reload()
    statuses = {s.name: s for s in repo.models()}
    assert repo.serving_data_keys(statuses["alpha"]) == ["90002-1-1", "90009-1-1"]
    assert repo.serving_data_keys(statuses["gamma"]) == []
    shutil.rmtree(tmp_path / "alpha")
    repo.reload()  # the listed status now names a retired version
    assert repo.serving_data_keys(statuses["alpha"]) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(InvalidInput, match="keep_versions: 0; expected an integer >= 1"):
        ModelRepository(tmp_path, Loader(), keep_versions=0)
    repo = ModelRepository(tmp_path / "missing", Loader())
    with pytest.raises(FormatError, match="is not a directory"):
        repo.reload()
    with pytest.raises(InvalidInput, match="version: 0; expected a positive integer"):
        repo.acquire("alpha", 0)
    with pytest.raises(InvalidInput, match="interval_s: 0"):
        repo.start_polling(0)


def test_background_polling_picks_up_new_versions(root):
    repo = ModelRepository(root, Loader())
    repo.reload()
    repo.start_polling(0.02)
    try:
        write_version(root, "alpha", 5)
        deadline = time.monotonic() + 10
        while repo.model("alpha").serving_version != 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert repo.model("alpha").serving_version == 5
    finally:
        repo.stop_polling()
    repo.close()


def test_requests_never_see_a_closed_version_while_versions_change(tmp_path):
    """Threads use the serving version while re-scans add and retire versions underneath them."""
    loader = Loader()
    write_version(tmp_path, "alpha", 1)
    repo = ModelRepository(tmp_path, loader, keep_versions=1)
    repo.reload()
    errors: list[BaseException] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                with repo.acquire("alpha") as lease:
                    lease.artifact.predict()
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for version in range(2, 12):
            write_version(tmp_path, "alpha", version)
            repo.reload()
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert repo.model("alpha").serving_version == 11
    assert sum(not m.closed for m in loader.loaded) == 1  # every retired version was closed
    repo.close()
    assert all(m.closed for m in loader.loaded)
