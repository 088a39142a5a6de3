"""twin: a served digital twin of mouse primary visual cortex (SENSORIUM 2022).

`twin` itself needs numpy only; training (torch) and serving (ONNX Runtime, gRPC) live in their own
packages and are never imported from here.
"""

from twin.errors import FormatError, InvalidInput, ModelNotFound, ModelNotReady, Overloaded, TwinError

__version__ = "0.1.0"

__all__ = [
    "FormatError",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "TwinError",
    "__version__",
]
