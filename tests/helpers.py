"""Helpers shared by test modules (not fixtures: those are in conftest.py)."""

from __future__ import annotations

from pathlib import Path


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains `text` (Linux /proc); zombies are not counted."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and text in (entry / "cmdline").read_bytes().decode(errors="replace")
                and not (entry / "stat").read_text().split(") ")[-1].startswith("Z")
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
