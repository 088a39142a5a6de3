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
