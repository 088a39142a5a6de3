"""Helpers shared by test modules (not fixtures: those are in conftest.py)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType


def alive(pid: int) -> bool:
    """Whether process `pid` runs (Linux /proc); a zombie, exited and not yet reaped, does not."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except OSError:
        return False


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains `text` (Linux /proc); zombies are not counted."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if alive(pid)]


def bench_module(name: str) -> ModuleType:
    """The benchmark script bench/NAME.py as a module (imported with bench/ on sys.path, as Python runs a
    script there: the scripts import each other by name)."""
    folder = str(Path(__file__).resolve().parents[1] / "bench")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)


def run_main(script: Path, args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`python SCRIPT ARGS...` in this process: the script's main() with its folder on sys.path, as
    Python runs a script. Returns its exit status and what it wrote to stderr.

    For refusals, which argparse makes before any work: they need no process of their own (its start-up,
    importing torch, costs seconds). monkeypatch restores sys.argv, sys.path and PYTHONPATH after."""
    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # main() may extend it
    module = importlib.import_module(script.stem)
    try:
        module.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def assert_refused(script: Path, args: list[str], message: str, folder: Path, monkeypatch, capsys) -> None:
    """`python SCRIPT ARGS...` (run_main) exits 2 with `message` on stderr, before writing into `folder`."""
    code, stderr = run_main(script, args, monkeypatch, capsys)
    assert code == 2 and message in stderr, stderr[-2000:]
    assert not list(folder.iterdir())  # refused before anything was written
