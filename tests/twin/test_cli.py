"""The `twin` command run as a user runs it: a real subprocess, real files, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_simulate_refuses_a_non_empty_folder_then_writes_with_force(tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    refused = twin("simulate", "--preset", "tiny", "--out", str(out), "--quiet")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "exists and is not empty" in lines[0]
    assert (out / "notes.txt").exists()
