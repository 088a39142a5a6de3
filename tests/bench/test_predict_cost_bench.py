"""bench/predict_cost.py end to end (a small batch: the plumbing, not the figure) and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_refused

torch = pytest.importorskip("torch", reason="torch: needs the train extra")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "bench" / "predict_cost.py")


def test_measures_a_registered_model_and_writes_its_machine(tmp_path):
    out = tmp_path / "cost.json"
    args = ["--model", "twin_behavior", "--neurons", "5", "--batch", "4", "--repeats", "2", "--threads", "1"]
    done = subprocess.run([sys.executable, SCRIPT, *args, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "predict_cost" and result["model"] == "twin_behavior"
    assert result["neurons"] == 5 and result["batch"] == 4 and result["threads"] == 1
    assert result["machine"]["torch_threads"] == 1 and result["machine"]["cores"] >= 1
    assert result["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # e.g. AVX2
    assert result["images_per_second"] > 0
    assert result["images_per_second"] == pytest.approx(4 / result["seconds_median"], rel=0.01)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--model", "lstm", "--model: 'lstm' is not registered; expected one of ["),
        ("--threads", "0", "--threads: 0; expected >= 1"),
        ("--device", "tpu", "--device: device: 'tpu'; expected cpu, cuda or cuda:<index>"),
    ],
)
def test_bad_options_are_refused_naming_the_option(tmp_path, monkeypatch, capsys, option, value, message):
    args = [option, value, "--out", str(tmp_path / "x.json")]
    assert_refused(Path(SCRIPT), args, message, tmp_path, monkeypatch, capsys)
