"""`serving` never imports torch, and every module declares its public names."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "serving",
    "serving.batcher",
    "serving.heldout",
    "serving.observability",
    "serving.repository",
    "serving.status",
    "serving.tensors",
]


def test_serving_never_imports_torch():
    code = f"import sys\nfor m in {MODULES!r}: __import__(m)\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("module", MODULES)
def test_all_names_exist(module):
    mod = importlib.import_module(module)
    assert mod.__all__, module
    assert not [name for name in mod.__all__ if not hasattr(mod, name)]
