"""`twin` imports numpy only, and every package declares its public names."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "onnx", "grpc", "bentoml", "matplotlib")


def test_importing_twin_pulls_in_no_heavy_dependency():
    code = (
        "import sys, twin, twin.data, twin.metrics, twin.cli, twin.errors, twin.experiments, twin.scoring\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_command_starts_without_numpy_or_the_data_package():
    """`twin health` runs as the serving image's HEALTHCHECK: registering every command (`twin experiment`
    included) imports what the commands run only when they run."""
    late = ("numpy", "twin.data", "twin.experiments.mei")
    code = f"import sys, twin.cli\nprint([m for m in {late!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module",
    [
        "twin",
        "twin.data",
        "twin.metrics",
        "twin.errors",
        "twin.data.stimuli",
        "twin.client",
        "twin.experiments",
        "twin.experiments.stimuli",
        "twin.experiments.plots",
        "twin.scoring",
    ],
)
def test_all_names_exist(module):
    mod = importlib.import_module(module)
    assert mod.__all__, module
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing


def test_load_and_the_client_are_imported_on_first_use():
    code = (
        "import sys, twin\n"
        "before = 'grpc' in sys.modules\n"
        "from twin import TwinClient, load\n"
        "print(before, 'grpc' in sys.modules, 'onnxruntime' in sys.modules, TwinClient.__module__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True", "False", "twin.client"]


def test_errors_form_one_tree():
    from twin import errors

    for name in ("InvalidInput", "FormatError", "ModelNotFound", "ModelNotReady"):
        assert issubclass(getattr(errors, name), errors.TwinError)
    assert issubclass(errors.InvalidInput, ValueError)
