"""bench/receptive_field.py: the ceiling a model unit's w x w view leaves, measured on the ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_refused, bench_module, run_main
from twin.data import load_recording
from twin.data.population import resample_to_grid, to_contrast
from twin.data.simulation import GroundTruth

ROOT = Path(__file__).resolve().parents[2]


def test_a_window_over_the_whole_grid_is_the_truth_and_smaller_windows_lose_coarse_neurons_first(
    tiny_sim, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "rf.json"
    args = ["--data", str(tiny_sim), "--images", "30", "--windows", "9,25,129", "--out", str(out)]
    code, stderr = run_main(ROOT / "bench" / "receptive_field.py", args, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny" and result["grid"] == [36, 64] and result["machine"]["cores"] >= 1
    assert [r["data_key"] for r in result["recordings"]] == ["90001-1-1", "90002-1-1"]
    for row in result["recordings"]:
        assert row["images"] == 30 and row["neurons"] == 150
        # 129 px around any centre covers the 36 x 64 grid: exactly the whole image's responses
        assert row["129"]["mean"] == pytest.approx(1.0, abs=1e-6) and row["129"]["p10"] == pytest.approx(1.0)
        assert row["9"]["mean"] < row["25"]["mean"] < 1.0
        assert row["9"]["period 12-17"] < row["9"]["period 4-6"]  # coarse patterns reach furthest
    # the registered cores' views: the baseline's 9x9 + 3 x 7x7, the twin's 9x9 + 4 blocks of two 3x3
    assert result["core_receptive_field_px"]["cnn"] == 27 and result["core_receptive_field_px"]["twin"] == 25


def test_a_window_over_the_whole_grid_gives_the_populations_own_drive(tiny_sim, tiny_paths):
    module = bench_module("receptive_field")
    truth = GroundTruth.load(tiny_sim, "90001-1-1")
    images = np.asarray(load_recording(tiny_paths["90001-1-1"], progress=False).images[:8], np.float32)[:, 0]
    grid = to_contrast(resample_to_grid(images))
    population = truth.population
    # neuron by neuron in chunks (each with its own copy of the image, here all of it) = all neurons at once
    np.testing.assert_allclose(
        module.windowed(population, grid, 129), population.drive(grid, population.filters()), rtol=1e-5
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--windows", "9,x", "--windows: '9,x'; expected comma-separated integers >= 1"),
        ("--windows", "0,9", "--windows: '0,9'; expected comma-separated integers >= 1"),
        ("--images", "1", "--images: 1; expected >= 2"),
    ],
)
def test_bad_options_are_refused_naming_the_option(
    tiny_sim, tmp_path, monkeypatch, capsys, option, value, message
):
    monkeypatch.chdir(tmp_path)
    args = ["--data", str(tiny_sim), option, value, "--out", str(tmp_path / "rf.json")]
    assert_refused(ROOT / "bench" / "receptive_field.py", args, message, tmp_path, monkeypatch, capsys)
