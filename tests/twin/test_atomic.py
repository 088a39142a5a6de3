"""twin.atomic: a file is replaced whole or not at all, by a killed process or a failing writer too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from twin.atomic import replacing, write_json, write_text


def _strays(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_write_json_creates_folders_and_replaces_the_previous_version(tmp_path):
    path = tmp_path / "a" / "b" / "metrics.json"
    write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert write_json(path, [1, 2]) == path
    assert json.loads(path.read_text()) == [1, 2]
    assert path.read_text().endswith("\n")
    assert _strays(path.parent) == []


def test_a_failing_writer_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = write_text(tmp_path / "log.jsonl", "old\n")
    with pytest.raises(RuntimeError, match="disk full"), replacing(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert _strays(tmp_path) == []


def test_an_unserializable_object_raises_before_anything_is_written(tmp_path):
    path = write_json(tmp_path / "run.json", {"ok": True})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert _strays(tmp_path) == []


def test_the_temporary_file_keeps_the_suffix_and_hides_beside_the_target(tmp_path):
    target = tmp_path / "curves.png"
    with replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".curves.tmp-")
        tmp.write_bytes(b"\x89PNG")
    assert target.read_bytes() == b"\x89PNG"


def test_a_block_that_writes_nothing_does_not_replace_the_target(tmp_path):
    path = write_text(tmp_path / "best.pt", "weights")
    with pytest.raises(FileNotFoundError, match="nothing was written for"), replacing(path):
        pass
    assert path.read_text() == "weights"


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="expected a file path"):
        write_text(tmp_path, "x")


def test_concurrent_writers_of_one_path_each_publish_a_whole_version(tmp_path):
    path = tmp_path / "result.json"
    payloads = [{"writer": i, "values": list(range(20_000))} for i in range(8)]
    errors: list[BaseException] = []

    def writer(payload: dict) -> None:
        try:
            for _ in range(5):
                write_json(path, payload)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(path.read_text()) in payloads
    assert _strays(tmp_path) == []


_KILLED_WRITER = """
import sys, time
from twin.atomic import replacing
with replacing(sys.argv[1]) as tmp:
    with open(tmp, "w") as f:
        f.write("partial new version")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)
"""


def test_a_process_killed_while_writing_leaves_the_previous_version(tmp_path):
    path = write_text(tmp_path / "checkpoint.pt", "epoch 3")
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "writing"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        child.kill()
        child.stdout.close()
    assert path.read_text() == "epoch 3"
    (stray,) = _strays(tmp_path)  # the killed writer's, hidden, never read as the file
    assert stray.startswith(".checkpoint.tmp-") and stray.endswith(".pt")
    write_text(path, "epoch 4")
    assert path.read_text() == "epoch 4"
