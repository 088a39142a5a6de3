"""twin: a served digital twin of mouse primary visual cortex (SENSORIUM 2022).

`twin` itself needs numpy only; training (torch) and serving (ONNX Runtime, gRPC) live in their own
packages and are never imported from here. `twin.load` (ONNX Runtime) and `twin.TwinClient` (gRPC) import
their dependencies on first use, so `import twin` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twin.errors import FormatError, InvalidInput, ModelNotFound, ModelNotReady, Overloaded, TwinError

if TYPE_CHECKING:
    from twin.artifact import Artifact
    from twin.client import TwinClient

__version__ = "0.1.0"

__all__ = [
    "FormatError",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "TwinClient",
    "TwinError",
    "__version__",
    "load",
    "open_twin",
]


def load(
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    rows_per_run: int | None = None,
) -> Artifact:
    """Open and verify an artifact folder (see `twin.artifact.load`); `.twin(data_key)` runs it."""
    from twin.artifact import load as load_artifact

    return load_artifact(path, threads=threads, providers=providers, rows_per_run=rows_per_run)


def open_twin(
    source: str | os.PathLike[str],
    data_key: str | None = None,
    model: str | None = None,
    timeout: float = 60.0,
) -> Any:
    """The twin behind `source`: an artifact folder (in process), a training run (in torch, `TorchTwin`),
    a simulation folder (its ground-truth neurons, `twin.experiments.GroundTruthTwin`) or a server's
    "host:port" (`TwinClient`). `data_key` may be left out where there is one recording; `model` names one
    of several on a server."""
    from pathlib import Path

    path = Path(source)
    if path.is_dir() and (path / "manifest.json").is_file():
        return load(path).twin(data_key)
    if path.is_dir() and (path / "run.json").is_file():
        try:
            from training.torch_twin import TorchTwin
        except ImportError as exc:
            raise InvalidInput(f"source: {path} is a training run; its twin needs torch ({exc})") from None
        return TorchTwin(path, data_key)
    if path.is_dir() and (path / "ground_truth").is_dir():
        from twin.experiments.ground_truth import GroundTruthTwin

        return GroundTruthTwin(path, data_key)
    host, _, port = str(source).rpartition(":")
    if host and port.isdigit() and not path.exists():
        from twin.client import TwinClient

        return TwinClient(str(source), model=model, data_key=data_key, timeout=timeout)
    raise InvalidInput(
        f"source: {str(source)!r}; expected an artifact folder (manifest.json), a training run (run.json), "
        "a simulation folder (ground_truth/) or a server's host:port"
    )


def __getattr__(name: str) -> Any:
    """`twin.TwinClient`, imported (with grpc) only when first asked for."""
    if name == "TwinClient":
        from twin.client import TwinClient

        return TwinClient
    raise AttributeError(f"module 'twin' has no attribute {name!r}")
