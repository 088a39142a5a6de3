"""bench/readout_start.py end to end on the tiny preset: the estimates against the ground truth, and the
--train mode (one epoch: the plumbing, not the figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch: needs the train extra")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_estimates_and_one_training_per_start(tiny_sim, tmp_path):
    out = tmp_path / "readout_start.json"
    args = [
        sys.executable,
        str(ROOT / "bench" / "readout_start.py"),
        "--data",
        str(tiny_sim),
        "--out",
        str(out),
    ]
    args += ["--train", "--seeds", "0", "--epochs", "1", "--width", "4", "--jobs", "2"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "readout_start" and result["preset"] == "tiny"
    assert {e["data_key"] for e in result["estimates"]} == {"90001-1-1", "90002-1-1"}
    for e in result["estimates"]:
        assert e["trials"] == 720 and e["neurons"] == 150
        # the start from the estimates is near the simulated neurons' centres, the random one is not
        data, random = e["start_error_px, data"]["median"], e["start_error_px, random"]["median"]
        assert data < 2.5 and random > 2 * data
        assert e["clarity_median"] > e["clarity_median, shuffled responses"]
    training = result["training"]
    assert training["recording"] == "90001-1-1" and training["seeds"] == [0]
    assert sorted(r["start"] for r in training["runs"]) == ["data", "random"]
    assert all(r["epochs"] == 1 and -1 <= r["correlation_to_average"] <= 1 for r in training["runs"])
    assert "wrote" in done.stdout
