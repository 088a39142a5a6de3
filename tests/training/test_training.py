"""Training on the tiny simulated mouse: it learns, a killed run resumes, bad input is refused early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from training.data import RecordingTensors, batches
from training.models import get_config
from training.run import evaluate, load_members, load_tensors, train_run
from training.trainer import TrainConfig, predict
from twin import metrics
from twin.data import load_recording, write_recording
from twin.errors import InvalidInput

FAST = TrainConfig(max_epochs=6, batch_size=64, patience=2, lr_decay_steps=2, seed=0)


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory) -> Path:
    """The baseline architecture, narrowed so a CPU trains it in seconds."""
    base = get_config("cnn")
    config = replace(base, name="cnn-small", core=replace(base.core, channels=8, layers=2, hidden_kernel=5))
    path = tmp_path_factory.mktemp("models") / "cnn-small.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


@pytest.fixture(scope="module")
def trained(tiny_paths, small_cnn, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "cnn"
    train_run([tiny_paths["90002-1-1"]], small_cnn, run, config=FAST, progress=False)
    return run


def test_preprocessing_follows_the_reference(tiny_paths):
    rec = load_recording(tiny_paths["90002-1-1"], progress=False)
    d = RecordingTensors.from_recording(rec)
    std = rec.statistics["responses"]["all"]["std"]
    np.testing.assert_allclose(d.responses[:5].numpy(), rec.responses[:5] / std, rtol=1e-5)
    assert abs(float(d.images.mean())) < 0.2 and 0.8 < float(d.images.std()) < 1.2
    np.testing.assert_allclose(
        d.behavior[:5].numpy(), rec.behavior[:5] / rec.statistics["behavior"]["all"]["std"], rtol=1e-5
    )
    assert tuple(d.images.shape[-2:]) == (36, 64)


def test_one_batch_per_recording_per_step(tiny_paths):
    data = load_tensors(list(tiny_paths.values()))
    steps = list(batches(data, "train", 100, np.random.default_rng(0)))
    assert len(steps) == 8  # 720 train trials / 100, rounded up
    assert all([key for key, _ in step] == ["90001-1-1", "90002-1-1"] for step in steps)
    seen = np.concatenate([idx for step in steps for key, idx in step if key == "90001-1-1"])
    assert sorted(seen) == sorted(data["90001-1-1"].indices("train"))


def test_a_small_cnn_learns(trained, tiny_paths):
    results = json.loads((trained / "metrics.json").read_text())["members"]["member-0"]
    _, nets = load_members(trained)
    d = load_tensors([tiny_paths["90002-1-1"]])["90002-1-1"]
    idx = d.indices("validation")
    prediction = predict(nets[0], d, idx)
    observed = metrics.correlation(d.responses[idx].numpy(), prediction).mean()
    assert observed == pytest.approx(results["validation_correlation"], abs=1e-5)  # best weights restored
    shuffled = metrics.correlation(
        d.responses[idx].numpy(), prediction[np.random.default_rng(0).permutation(len(idx))]
    )
    assert observed > 0.1 and observed > shuffled.mean() + 0.08
    log = [
        json.loads(line) for line in (trained / "members" / "member-0" / "log.jsonl").read_text().splitlines()
    ]
    assert [e["epoch"] for e in log] == list(range(1, len(log) + 1))


def test_evaluate_scores_the_held_out_test_tier(trained, tiny_paths):
    scores = evaluate(trained, [tiny_paths["90002-1-1"]], "test")["90002-1-1"]
    assert scores["n_trials"] == 1000 and scores["members"] == 1
    assert 0.05 < scores["single_trial_correlation"] < scores["correlation_to_average"] < 1


def test_a_killed_training_run_resumes_where_it_stopped(tiny_paths, small_cnn, tmp_path):
    args = [
        sys.executable,
        "-m",
        "twin.cli",
        "train",
        "--data",
        str(tiny_paths["90002-1-1"]),
        "--model",
        str(small_cnn),
        "--epochs",
        "5",
        "--batch-size",
        "64",
        "--quiet",
    ]
    reference = subprocess.run([*args, "--out", str(tmp_path / "whole")], capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    log = tmp_path / "killed" / "members" / "member-0" / "log.jsonl"
    proc = subprocess.Popen(
        [*args, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        [*args, "--out", str(tmp_path / "killed"), "--resume"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr

    def history(run: Path) -> list[float]:
        lines = (run / "members" / "member-0" / "log.jsonl").read_text().splitlines()
        return [json.loads(line)["validation_correlation"] for line in lines]

    assert len(history(tmp_path / "killed")) == 5
    np.testing.assert_allclose(history(tmp_path / "killed"), history(tmp_path / "whole"), rtol=1e-5)


def test_bad_input_is_refused_before_training(tiny_paths, small_cnn, tmp_path):
    with pytest.raises(InvalidInput, match="zeroed"):
        train_run([tiny_paths["90001-1-1"]], "cnn_behavior", tmp_path / "a", config=FAST, progress=False)
    with pytest.raises(InvalidInput, match=r"model: 'resnet-9000'.*cnn"):
        train_run([tiny_paths["90002-1-1"]], "resnet-9000", tmp_path / "b", config=FAST, progress=False)
    rec = load_recording(tiny_paths["90002-1-1"], progress=False)
    no_validation = write_recording(
        rec.subset(rec.tier_indices("train")[:50]), tmp_path / "static1-1-1-X", progress=False
    )
    with pytest.raises(InvalidInput, match="no 'validation' trials"):
        train_run([no_validation], small_cnn, tmp_path / "c", config=FAST, progress=False)
    idx = np.concatenate([rec.tier_indices(t)[:20] for t in ("train", "validation")])
    part = rec.subset(idx)
    big = replace(part, data_key="2-2-2", images=np.repeat(np.repeat(part.images, 4, axis=2), 4, axis=3))
    big_path = write_recording(big, tmp_path / "static2-2-2-X", progress=False)
    with pytest.raises(InvalidInput, match="different image sizes"):
        train_run([tiny_paths["90002-1-1"], big_path], small_cnn, tmp_path / "d", config=FAST, progress=False)
    with pytest.raises(InvalidInput, match="batch_size"):
        TrainConfig(batch_size=0)


def test_cli_unknown_model_exits_2(tiny_paths, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twin.cli",
            "train",
            "--data",
            str(tiny_paths["90002-1-1"]),
            "--model",
            "nope",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: model: 'nope'") and "cnn" in result.stderr
