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
]


def load(
    path: str | os.PathLike[str], *, threads: int | None = None, providers: Sequence[str] | None = None
) -> Artifact:
    """Open and verify an artifact folder (see `twin.artifact.load`); `.twin(data_key)` runs it."""
    from twin.artifact import load as load_artifact

    return load_artifact(path, threads=threads, providers=providers)


def __getattr__(name: str) -> Any:
    """`twin.TwinClient`, imported (with grpc) only when first asked for."""
    if name == "TwinClient":
        from twin.client import TwinClient

        return TwinClient
    raise AttributeError(f"module 'twin' has no attribute {name!r}")
