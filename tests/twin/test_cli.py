"""The `twin` command run as a user runs it: a real subprocess, real files, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest


def twin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twin.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_the_commands():
    result = twin("--help")
    assert result.returncode == 0
    for command in ("simulate", "data"):
        assert command in result.stdout
    data = twin("data", "--help")
    assert "inspect" in data.stdout and "validate" in data.stdout
    assert "--preset [tiny|small|sensorium]" in twin("simulate", "--help").stdout


def test_inspect_a_simulation_folder(tiny_sim):
    result = twin("data", "inspect", str(tiny_sim))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "recording 90001-1-1" in out and "recording 90002-1-1" in out
    assert "(held-out responses)" in out  # competition tiers scored from held_out/
    assert "behavior: zeroed (image-only track)" in out
    assert "ceiling, image only" in out


def test_inspect_json(tiny_paths):
    result = twin("data", "inspect", "--json", str(tiny_paths["90002-1-1"]))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["data_key"] == "90002-1-1" and summary["neurons"] == 150
    assert summary["tiers"]["test"]["repeats"] == [10, 10.0, 10]
    assert summary["tiers"]["test"]["responses_zeroed_on_disk"] is True
    assert set(summary["behavior"]) == {"pupil_dilation", "pupil_dilation_derivative", "running_speed"}


def test_validate_every_recording_in_a_folder(tiny_sim):
    result = twin("data", "validate", str(tiny_sim))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok  ") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("simulate", "--preset", "huge", "--out", "x"), "Invalid value for '--preset'"),
        (("simulate", "--seed", "-3", "--out", "x"), "Invalid value for '--seed'"),
        (
            ("data", "inspect", "/nonexistent/recording"),
            "error: /nonexistent/recording: no such file or folder",
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args, message):
    result = twin(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_path_that_cannot_be_written_gets_one_line_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = twin("simulate", "--preset", "tiny", "--out", str(blocker / "sim"), "--quiet")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(blocker) in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_refuses_a_non_empty_folder_then_writes_with_force(tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    refused = twin("simulate", "--preset", "tiny", "--out", str(out), "--quiet")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "exists and is not empty" in lines[0]
    assert (out / "notes.txt").exists()


def test_a_killed_simulation_leaves_no_partial_output(tmp_path, tiny_sim):
    """Output is built beside the target and renamed at the end: a kill leaves the target untouched."""
    out = tmp_path / "sim"
    proc = subprocess.Popen(
        [sys.executable, "-m", "twin.cli", "simulate", "--preset", "tiny", "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".sim.") for p in tmp_path.iterdir()):  # wait until it is writing
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert twin("simulate", "--preset", "tiny", "--out", str(out), "--quiet").returncode == 0
    assert (out / "simulation.json").read_text() == (tiny_sim / "simulation.json").read_text()


def test_concurrent_first_loads_share_one_cache(tiny_paths, tmp_path):
    """Several processes (e.g. training ranks) building the same cache entry at once all succeed."""
    code = (
        "import sys, numpy as np; from twin.data import load_recording; "
        "r = load_recording(sys.argv[1], progress=False); print(float(np.asarray(r.responses).sum()))"
    )
    env = {**os.environ, "TWIN_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tiny_paths["90002-1-1"])],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outputs)) == 1
    entries = list((tmp_path / "cache" / "recordings").iterdir())
    assert len([e for e in entries if not e.name.startswith(".")]) == 1
    assert not [e for e in entries if e.name.startswith(".")]  # no temporary folders left behind
