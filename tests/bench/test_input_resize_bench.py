"""bench/input_resize.py: the ceiling a model's input resize leaves, measured on the ground truth, and the
--train mode end to end (one epoch: the plumbing, not the figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import bench_module
from twin.data import load_recording, write_recording

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fine_detail(tiny_paths, tmp_path_factory) -> Path:
    """The behaviour recording's first 200 trials at 144 x 256: each pixel 4 x 4, plus pixel-level noise
    that only an anti-aliased resize averages away."""
    rec = load_recording(tiny_paths["90002-1-1"], progress=False)
    part = rec.subset(np.arange(200))
    big = np.repeat(np.repeat(part.images.astype(np.float32), 4, axis=2), 4, axis=3)
    noise = np.random.default_rng(0).normal(0, 25, big.shape)
    images = np.clip(big + noise, 0, 255).astype(np.uint8)
    return write_recording(replace(part, images=images), tmp_path_factory.mktemp("x4") / "static90002-1-1-x4")


def test_area_resize_keeps_what_the_neurons_see_and_bilinear_loses_some(fine_detail, tiny_sim):
    row = bench_module("input_resize").measure(fine_detail, tiny_sim, 200)
    assert row["image_size"] == [144, 256] and row["images"] == 200
    assert row["area"]["mean"] == pytest.approx(1.0, abs=1e-6)  # the simulated neurons' own resampling
    assert row["bilinear"]["mean"] < 0.995 and row["bilinear"]["p10"] < row["bilinear"]["mean"]
    assert row["bilinear"]["period 4-6"] < row["bilinear"]["period 12-17"]  # fine patterns alias first


@pytest.mark.slow
def test_the_training_mode_trains_a_twin_per_resize_and_scores_it(tmp_path):
    """On the bench's own 144 x 256 preset, with fewer trials (the plumbing, not the figures)."""
    module = bench_module("input_resize")
    fewer = tuple(replace(r, n_train=160, n_validation=40) for r in module.TRAIN_PRESET.recordings)
    preset = replace(module.TRAIN_PRESET, recordings=fewer, n_test_images=10, repeats=4)
    sim, name = module._simulation(None, str(tmp_path), preset)
    assert name == "tiny-144x256" and len(list(sim.glob("static*"))) == 2
    out = tmp_path / "train.json"
    args = ["--train", "--data", str(sim), "--seeds", "0", "--width", "4", "--epochs", "1", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "input_resize.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny-144x256"
    assert [r["mode"] for r in result["runs"]] == ["bilinear", "area"]
    assert set(result["mean_over_seeds"]) == {"bilinear", "area"}
    for run in result["runs"]:
        for key in ("90001-1-1", "90002-1-1"):
            assert -1 <= run[key]["correlation_to_average"] <= 1 and -1 <= run[key]["truth_correlation"] <= 1
