"""Shared fixtures: one tiny simulated mouse per test session, and a private recording cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Before anything imports twin: the recording cache of the tests lives in a throw-away folder, and
# subprocesses (CLI tests) inherit it.
_CACHE = tempfile.mkdtemp(prefix="twin-test-cache-")
os.environ["TWIN_CACHE_DIR"] = _CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory) -> Path:
    """The `tiny` preset, simulated once (seed 0). Tests must not modify it."""
    from twin.data import simulate

    out = tmp_path_factory.mktemp("sim") / "tiny"
    simulate("tiny", out, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_paths(tiny_sim) -> dict[str, Path]:
    """data_key -> recording folder of the tiny simulation."""
    return {p.name.split("-GrayImageNet")[0].removeprefix("static"): p for p in tiny_sim.glob("static*")}


def _one_epoch():
    """The trained fixtures' recipe: 1 epoch, batches of 64, seed 0 (plumbing, not accuracy)."""
    from training.trainer import TrainConfig

    return TrainConfig(max_epochs=1, batch_size=64, patience=1, lr_decay_steps=1, seed=0)


@pytest.fixture(scope="session")
def tiny_run(tiny_paths, tmp_path_factory) -> Path:
    """A trained run on both tiny recordings: one narrowed image-only CNN, trained for 1 epoch.

    Good for plumbing (export, loading, serving), not for accuracy. Tests must not modify it.
    """
    from dataclasses import replace

    from training.models import get_config
    from training.run import train_run

    base = get_config("cnn")
    model = replace(base, name="cnn-tiny", core=replace(base.core, channels=8, layers=2, hidden_kernel=5))
    run = tmp_path_factory.mktemp("runs") / "cnn-tiny"
    train_run(sorted(tiny_paths.values()), model, run, config=_one_epoch(), progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_artifact(tiny_run, tmp_path_factory) -> Path:
    """`tiny_run` exported as an artifact folder (ONNX graphs + manifest). Tests must not modify it."""
    from training.export import export_run

    return export_run(tiny_run, tmp_path_factory.mktemp("artifacts") / "cnn-tiny")


@pytest.fixture(scope="session")
def tiny_x4(tiny_paths, tmp_path_factory) -> Path:
    """The behaviour recording (part of it) with 144 x 256 images as SENSORIUM's; models see 36 x 64.
    Each pixel repeated 4 x 4, so the simulated responses still fit the images."""
    from dataclasses import replace

    import numpy as np

    from twin.data import load_recording, write_recording

    rec = load_recording(tiny_paths["90002-1-1"], progress=False)
    part = rec.subset(np.concatenate([rec.tier_indices("train")[:400], rec.tier_indices("validation")]))
    big = replace(part, images=np.repeat(np.repeat(part.images, 4, axis=2), 4, axis=3))
    return write_recording(big, tmp_path_factory.mktemp("x4") / "static90002-1-1-x4", progress=False)


@pytest.fixture(scope="session")
def tiny_behavior_run(tiny_x4, tmp_path_factory) -> Path:
    """A narrowed twin_behavior ensemble of 2 members, 1 epoch on `tiny_x4`: behaviour channels, shifter,
    modulator, derived image channels (it needs behavior and pupil_center). Tests must not modify it."""
    import json
    from dataclasses import replace

    from training.models import get_config
    from training.run import train_run

    base = get_config("twin_behavior")
    model = replace(base, name="twin-behavior-tiny", core=replace(base.core, channels=8, layers=2))
    run = tmp_path_factory.mktemp("runs") / "twin-behavior"
    train_run([tiny_x4], model, run, members=2, config=_one_epoch(), progress=False)
    # Both members, whatever greedy selection kept after one epoch: the ensemble's spread is under test.
    (run / "selection.json").write_text(json.dumps({"selected": [1, 0]}))
    return run


@pytest.fixture(scope="session")
def tiny_behavior_artifact(tiny_behavior_run, tmp_path_factory) -> Path:
    """`tiny_behavior_run` exported through the command line, as a user would (name "mouse", version 3).
    Tests must not modify it."""
    from click.testing import CliRunner

    from twin.cli import cli

    out = tmp_path_factory.mktemp("artifacts") / "behavior"
    args = ["export", str(tiny_behavior_run), "--out", str(out), "--name", "mouse", "--version", "3"]
    result = CliRunner().invoke(cli, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "artifact mouse version 3: " in result.output and str(out) in result.output
    return out
