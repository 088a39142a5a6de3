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


@pytest.fixture(scope="session")
def tiny_run(tiny_paths, tmp_path_factory) -> Path:
    """A trained run on both tiny recordings: one narrowed image-only CNN, trained for 1 epoch.

    Good for plumbing (export, loading, serving), not for accuracy. Tests must not modify it.
    """
    from dataclasses import replace

    from training.models import get_config
    from training.run import train_run
    from training.trainer import TrainConfig

    base = get_config("cnn")
    model = replace(base, name="cnn-tiny", core=replace(base.core, channels=8, layers=2, hidden_kernel=5))
    config = TrainConfig(max_epochs=1, batch_size=64, patience=1, lr_decay_steps=1, seed=0)
    run = tmp_path_factory.mktemp("runs") / "cnn-tiny"
    train_run(sorted(tiny_paths.values()), model, run, config=config, progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_artifact(tiny_run, tmp_path_factory) -> Path:
    """`tiny_run` exported as an artifact folder (ONNX graphs + manifest). Tests must not modify it."""
    from training.export import export_run

    return export_run(tiny_run, tmp_path_factory.mktemp("artifacts") / "cnn-tiny")
