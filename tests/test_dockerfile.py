"""The serving image's build steps stay in sync with pyproject.toml and the CLI (no image is built here)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from twin.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _one(keyword: str) -> str:
    found = [rest for k, rest in _instructions() if k == keyword]
    assert len(found) == 1, f"expected one {keyword} in the Dockerfile, found {len(found)}"
    return found[0]


def _exec_form(arguments: str) -> list[str]:
    assert arguments.startswith("["), f"expected the exec (JSON) form, got {arguments!r}"
    return [token.strip().strip('"') for token in arguments.strip("[]").split(",")]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_image_installs_the_gpu_extra_of_this_project() -> None:
    runs = " && ".join(rest for k, rest in _instructions() if k == "RUN")
    installs = re.findall(r"pip install ([^&]+)", runs)
    targets = [t for line in installs for t in shlex.split(line) if not t.startswith("-")]
    assert ".[gpu]" in targets, f"the image must `pip install .[gpu]`; pip installs {targets}"
    assert "torch" not in " ".join(targets)


def test_gpu_extra_is_the_serve_extra_on_cuda_without_torch() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]
    gpu, serve = _requirement_names(extras["gpu"]), _requirement_names(extras["serve"])
    assert "onnxruntime-gpu" in gpu
    assert "onnxruntime" not in gpu, "onnxruntime and onnxruntime-gpu must not be installed together"
    assert "torch" not in gpu
    missing = serve - {"onnxruntime"} - gpu
    assert not missing, f"the gpu extra lacks serving dependencies {sorted(missing)}"
    # Same version ranges for what both install.
    pins = {r.split(";")[0].replace(" ", "") for r in extras["serve"] if not r.startswith("onnxruntime")}
    assert pins <= {r.split(";")[0].replace(" ", "") for r in extras["gpu"]}


def test_copied_sources_exist_and_cover_the_packages() -> None:
    copied = []
    for keyword, rest in _instructions():
        if keyword == "COPY":
            *sources, _destination = shlex.split(rest)
            copied += [s for s in sources if not s.startswith("--")]
    for source in copied:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert "pyproject.toml" in copied
    readme = _pyproject()["project"]["readme"]
    assert readme in copied, f"pyproject's readme {readme} must be copied for the build"
    for pattern in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert package in copied, f"package {package} (pyproject packages.find) is not copied"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not set(copied) & set(ignored), "a copied path is excluded by .dockerignore"


def test_runs_as_a_non_root_user() -> None:
    user = _one("USER")
    assert user not in {"root", "0"} and not user.startswith("0:")


@pytest.mark.parametrize("keyword", ["HEALTHCHECK", "ENTRYPOINT"])
def test_commands_exist_on_the_cli(keyword: str) -> None:
    rest = _one(keyword)
    if keyword == "HEALTHCHECK":
        assert "CMD" in rest
        rest = rest[rest.index("CMD") + 3 :].strip()
    argv = _exec_form(rest)
    assert argv[0] == "twin"
    command = cli.commands[argv[1]]  # KeyError names a missing command
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for token in argv[2:]:
        if token.startswith("--"):
            assert token in options, f"{keyword} passes {token}, which `twin {argv[1]}` does not take"
    result = CliRunner().invoke(cli, [argv[1], "--help"])
    assert result.exit_code == 0, result.output
