"""The exception tree of `twin`: every error a user can trigger is one of these.

TwinError
├── InvalidInput      a caller passed a bad argument (shape, dtype, value, unknown name)
├── FormatError       a file or folder on disk is not what the SENSORIUM layout expects
├── ModelNotFound     an unknown model, version or data key
├── ModelNotReady     a model exists but cannot answer yet (loading, failed to load)
├── Overloaded        the server's request queue is full; retry later
└── DeadlineExceeded  no answer within the call's deadline

Messages name the field (or file), the value seen and what was expected. Each also subclasses the
closest built-in exception so plain `except ValueError` keeps working for library users.
"""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "FormatError",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "TwinError",
]


class TwinError(Exception):
    """Base class of every error `twin` raises on purpose."""


class InvalidInput(TwinError, ValueError):
    """A caller passed an argument with the wrong shape, dtype, value or name."""


class FormatError(TwinError, ValueError):
    """A recording, artifact or file on disk does not have the expected layout or content."""


class ModelNotFound(TwinError, LookupError):
    """An unknown model name, version or data key."""


class ModelNotReady(TwinError, RuntimeError):
    """A known model that cannot answer yet (still loading, or its load failed)."""


class Overloaded(TwinError, RuntimeError):
    """Too many requests are waiting (a full queue): the request was refused and may be retried later."""


class DeadlineExceeded(TwinError, TimeoutError):
    """No answer within the call's deadline (a client's `timeout`): the work was cancelled."""
