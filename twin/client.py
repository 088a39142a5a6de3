"""A served twin over gRPC, with the interface of the in-process twin (DESIGN.md §3).

`TwinClient(address)` answers `predict`, `predict_members`, `gradient` and `info()` like
`twin.artifact.OnnxTwin`, numpy in and numpy out, so an experiment runs the same against a local
artifact and a server. Errors come back as the same `twin.errors` classes with the server's message.
Every call has a deadline; UNAVAILABLE (server not up yet, model loading) is retried with exponential
backoff and jitter, nothing else is. grpcio, numpy and the generated stubs only: no ONNX Runtime here.
"""

from __future__ import annotations

import copy
import json
import queue
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np

from twin._proto.twin.v1 import twin_pb2, twin_pb2_grpc
from twin.artifact import RESPONSE_UNITS, neuron_columns, recording_statistics
from twin.errors import (
    DeadlineExceeded,
    FormatError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    TwinError,
)

__all__ = ["DeadlineExceeded", "PredictStream", "RemoteError", "TwinClient"]

T = TypeVar("T")


class RemoteError(TwinError, RuntimeError):
    """A gRPC status with no `twin.errors` counterpart (INTERNAL, UNIMPLEMENTED, ...)."""


# gRPC status -> the twin error it stands for (the inverse of serving/status.py's table).
ERRORS: dict[grpc.StatusCode, type[TwinError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.UNAVAILABLE: ModelNotReady,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.FAILED_PRECONDITION: FormatError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

# numpy dtypes the wire carries; other real dtypes travel as float32, as the local twin computes.
_CODES: dict[np.dtype, twin_pb2.DataType] = {
    np.dtype(np.uint8): twin_pb2.DATA_TYPE_UINT8,
    np.dtype(np.uint16): twin_pb2.DATA_TYPE_UINT16,
    np.dtype(np.int32): twin_pb2.DATA_TYPE_INT32,
    np.dtype(np.int64): twin_pb2.DATA_TYPE_INT64,
    np.dtype(np.float16): twin_pb2.DATA_TYPE_FLOAT16,
    np.dtype(np.float32): twin_pb2.DATA_TYPE_FLOAT32,
    np.dtype(np.float64): twin_pb2.DATA_TYPE_FLOAT64,
}
_DTYPES: dict[int, np.dtype] = {code: dtype.newbyteorder("<") for dtype, code in _CODES.items()}
_IMAGE_DTYPES = ("uint8", "uint16", "float16", "float32", "float64")
_FLOAT_DTYPES = ("float16", "float32", "float64")


def _tensor(name: str, value: Any, sent_as_is: Sequence[str], message: str) -> twin_pb2.Tensor:
    """`value` as a Tensor: dtypes in `sent_as_is` unchanged, other real numbers as float32."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise InvalidInput(f"{name}: dtype {array.dtype}; expected {message}")
    if array.dtype.name not in sent_as_is:
        with np.errstate(over="ignore"):  # beyond float32: inf, refused by the server like locally
            array = array.astype(np.float32)
    dtype = array.dtype.newbyteorder("=")
    data = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()
    return twin_pb2.Tensor(shape=array.shape, dtype=_CODES[dtype], data=data)


def _array(tensor: twin_pb2.Tensor, name: str) -> np.ndarray:
    """The array a response's Tensor carries (native byte order)."""
    dtype = _DTYPES.get(tensor.dtype)
    shape = tuple(int(d) for d in tensor.shape)
    if dtype is None or len(tensor.data) != int(np.prod(shape)) * dtype.itemsize:
        raise RemoteError(
            f"{name}: the server sent {len(tensor.data)} bytes of dtype {tensor.dtype} "
            f"for shape {list(shape)}; expected a well-formed Tensor"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


class TwinClient:
    """One served twin: `model` (version `version`, None = the serving one) answering for `data_key`.

    model and data_key may be left out when the server has only one. `timeout` is every call's deadline
    in seconds; `retries` is how many times a call refused with UNAVAILABLE is tried again, after
    `backoff_s`, twice that, ... (with jitter). Batches of more than `max_batch_size` images (the server's
    limit per request) are sent in chunks.
    """

    def __init__(
        self,
        address: str,
        model: str | None = None,
        data_key: str | None = None,
        version: int | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        max_message_mb: int = 64,
        max_batch_size: int = 32,
        backoff_s: float = 0.2,
    ) -> None:
        if not isinstance(address, str) or not address:
            raise InvalidInput(f"address: {address!r}; expected 'host:port'")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise InvalidInput(
                f"version: {version!r}; expected a positive integer, or None for the serving one"
            )
        if not timeout > 0:
            raise InvalidInput(f"timeout: {timeout!r}; expected seconds > 0")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidInput(f"retries: {retries!r}; expected an integer >= 0")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise InvalidInput(f"max_batch_size: {max_batch_size!r}; expected an integer >= 1")
        if not backoff_s >= 0:
            raise InvalidInput(f"backoff_s: {backoff_s!r}; expected seconds >= 0")
        if not max_message_mb > 0:
            raise InvalidInput(f"max_message_mb: {max_message_mb!r}; expected megabytes > 0")
        self.address = address
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self.max_batch_size = max_batch_size
        self._model, self._data_key, self._version = model, data_key, version
        size = int(max_message_mb * 2**20)
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
                # reconnect soon after a refused connection, so retries can reach a server just started
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._stub = twin_pb2_grpc.TwinStub(self._channel)
        self._info: dict[str, Any] | None = None
        self._columns: dict[int, int] = {}
        self._lock = threading.Lock()

    # ----- calls, deadlines, retries, errors -----

    def _call(self, method: str, request: Any) -> Any:
        """One unary call with a deadline, retried with backoff on UNAVAILABLE only."""
        rpc: Callable[..., Any] = getattr(self._stub, method)
        attempt = 0
        while True:
            try:
                return rpc(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries:
                    raise self._error(method, exc, attempt + 1, self.timeout) from None
            # jitter around an exponentially growing delay (capped at 5 s) keeps clients from retrying in step
            time.sleep(min(5.0, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.5))
            attempt += 1

    def _error(self, method: str, exc: grpc.RpcError, attempts: int, timeout: float) -> TwinError:
        """The twin error a failed call stands for, with the server's message."""
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(
                f"{method} at {self.address}: no answer within the deadline of {timeout:g} s "
                f"(DEADLINE_EXCEEDED); raise timeout= or check the server's load"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return ModelNotReady(f"{method} at {self.address}: {details} (UNAVAILABLE, {attempts} tries)")
        cls = ERRORS.get(code)
        if cls is None:
            return RemoteError(f"{method} at {self.address}: {code.name}: {details}")
        return cls(details)

    # ----- which model and recording -----

    def models(self) -> list[dict[str, Any]]:
        """The served models: name, serving_version (None when none is ready), versions, data_keys."""
        reply = self._call("ListModels", twin_pb2.ListModelsRequest())
        return [
            {
                "name": m.name,
                "serving_version": m.serving_version or None,
                "versions": [
                    {
                        "version": v.version,
                        "state": twin_pb2.VersionState.Name(v.state).removeprefix("VERSION_STATE_").lower(),
                        "error": v.error or None,
                        "serving": v.serving,
                    }
                    for v in m.versions
                ],
                "data_keys": list(m.data_keys),
            }
            for m in reply.models
        ]

    def _model_name(self) -> str:
        if self._model is None:
            names = [m["name"] for m in self.models()]
            if len(names) != 1:
                raise InvalidInput(
                    f"model: None; the server at {self.address} serves {names}, pick one with model="
                )
            self._model = names[0]
        return self._model

    def info(self) -> dict[str, Any]:
        """What the local twin's info() says: identity, neurons, input sizes, required inputs, units."""
        return copy.deepcopy(self._described())

    def _described(self) -> dict[str, Any]:
        """The cached description (fetched on first use, again after a reload); not to be modified."""
        with self._lock:
            if self._info is None:
                self._info = self._fetch_info()
                self._columns = {int(n): c for c, n in enumerate(self._info["neuron_ids"])}
            return self._info

    def _fetch_info(self) -> dict[str, Any]:
        model = self._model_name()
        reply = self._call(
            "GetModelInfo", twin_pb2.GetModelInfoRequest(model=model, version=self._version or 0)
        )
        keys = [k.data_key for k in reply.data_keys]
        if self._data_key is None:
            if len(keys) != 1:
                raise InvalidInput(
                    f"data_key: None; model {model} answers for {keys}, pick one with data_key="
                )
            self._data_key = keys[0]
        if self._data_key not in keys:
            raise ModelNotFound(f"data_key: {self._data_key!r}; model {model} answers for {keys}")
        manifest = json.loads(reply.manifest_json)
        entry = manifest["recordings"][self._data_key]
        key_info = reply.data_keys[keys.index(self._data_key)]
        return {
            "name": reply.model,
            "version": int(reply.version),
            "data_key": self._data_key,
            "n_neurons": len(key_info.neuron_ids),
            "neuron_ids": list(key_info.neuron_ids),
            "image_size": [int(s) for s in entry["image_size"]],
            "recording_image_size": [int(s) for s in entry["recording_image_size"]],
            "requires": {
                "behavior": key_info.requires_behavior,
                "pupil_center": key_info.requires_pupil_center,
            },
            "members": list(manifest.get("members", [])),
            "n_members": int(key_info.n_members),
            "image_units": "raw pixel units",
            **recording_statistics(entry),
            "response_units": entry.get("response_units", RESPONSE_UNITS),
        }

    @property
    def model(self) -> str:
        return str(self._described()["name"])

    @property
    def data_key(self) -> str:
        return str(self._described()["data_key"])

    @property
    def version(self) -> int:
        return int(self._described()["version"])

    @property
    def neuron_ids(self) -> np.ndarray:
        return np.asarray(self._described()["neuron_ids"], np.int64)

    @property
    def n_neurons(self) -> int:
        return int(self._described()["n_neurons"])

    @property
    def n_members(self) -> int:
        return int(self._described()["n_members"])

    @property
    def requires(self) -> dict[str, bool]:
        return dict(self._described()["requires"])

    @property
    def image_size(self) -> tuple[int, int]:
        height, width = self._described()["image_size"]
        return int(height), int(width)

    @property
    def recording_image_size(self) -> tuple[int, int]:
        height, width = self._described()["recording_image_size"]
        return int(height), int(width)

    # ----- the twin interface -----

    def _neurons(self, neurons: Sequence[int] | np.ndarray | None) -> list[int]:
        """The unit ids, checked as the local twin checks them (the same errors, before any traffic)."""
        if neurons is None:
            return []
        self._described()
        neuron_columns(self._columns, neurons, self._data_key)
        return np.asarray(neurons).tolist()

    def _inputs(self, images: Any, behavior: Any, pupil_center: Any) -> dict[str, Any]:
        info = self._described()
        fields: dict[str, Any] = {
            "model": info["name"],
            "version": self._version or 0,
            "data_key": info["data_key"],
            "images": _tensor("images", images, _IMAGE_DTYPES, "real numbers (raw pixel units)"),
        }
        for name, value in (("behavior", behavior), ("pupil_center", pupil_center)):
            if value is not None:
                fields[name] = _tensor(name, value, _FLOAT_DTYPES, "real numbers")
        return fields

    def _predict_request(
        self, images: Any, behavior: Any, pupil_center: Any, neurons: Any, members: bool
    ) -> twin_pb2.PredictRequest:
        ids = self._neurons(neurons)
        return twin_pb2.PredictRequest(
            **self._inputs(images, behavior, pupil_center),
            neuron_ids=ids,
            return_members=members,
        )

    def _check_version(self, version: int) -> None:
        """A hot reload moved the serving version: describe the new one from the next call on."""
        if self._version is None and self._info is not None and version != self._info["version"]:
            with self._lock:
                self._info = None

    def _chunks(self, images: Any, **rows: Any) -> list[tuple[Any, dict[str, Any]]]:
        """(images, rows) pieces of at most max_batch_size images, the server's limit per request."""
        images = np.asarray(images)
        batch = int(images.shape[0]) if images.ndim else 0
        if batch <= self.max_batch_size:
            return [(images, rows)]
        for name, value in rows.items():
            shape = np.shape(value)
            if value is not None and (not shape or shape[0] != batch):
                raise InvalidInput(f"{name}: shape {shape}; expected {batch} rows, one per image")
        pieces = []
        for start in range(0, batch, self.max_batch_size):
            rows_here = slice(start, start + self.max_batch_size)
            sliced = {n: None if v is None else np.asarray(v)[rows_here] for n, v in rows.items()}
            pieces.append((images[rows_here], sliced))
        return pieces

    def _predict(
        self, images: Any, behavior: Any, pupil_center: Any, neurons: Any, members: bool
    ) -> list[twin_pb2.PredictResponse]:
        replies = []
        for part, rows in self._chunks(images, behavior=behavior, pupil_center=pupil_center):
            request = self._predict_request(part, rows["behavior"], rows["pupil_center"], neurons, members)
            replies.append(self._call("Predict", request))
            self._check_version(replies[-1].version)
        return replies

    def predict(
        self,
        images: Any,
        behavior: Any = None,
        pupil_center: Any = None,
        neurons: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and std across members, each (B, n) float32 (n: all neurons or `neurons` ids)."""
        replies = self._predict(images, behavior, pupil_center, neurons, False)
        mean = np.concatenate([_array(r.mean, "mean") for r in replies])
        return mean, np.concatenate([_array(r.std, "std") for r in replies])

    def predict_members(
        self,
        images: Any,
        behavior: Any = None,
        pupil_center: Any = None,
        neurons: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Every member's responses, (M, B, n) float32."""
        replies = self._predict(images, behavior, pupil_center, neurons, True)
        return np.concatenate([_array(r.members, "members") for r in replies], axis=1)

    def gradient(
        self, images: Any, weights: Any, behavior: Any = None, pupil_center: Any = None
    ) -> np.ndarray:
        """d(sum_n weights[b, n] * mean[b, n]) / d images[b], (B, H, W) at the resolution images came in."""
        parts = []
        for part, rows in self._chunks(images, weights=weights, behavior=behavior, pupil_center=pupil_center):
            request = twin_pb2.GradientRequest(
                **self._inputs(part, rows["behavior"], rows["pupil_center"]),
                weights=_tensor("weights", rows["weights"], _FLOAT_DTYPES, "real numbers"),
            )
            reply = self._call("Gradient", request)
            self._check_version(reply.version)
            parts.append(_array(reply.gradient, "gradient"))
        gradient = np.concatenate(parts)
        return gradient[:, 0] if gradient.ndim == 4 and gradient.shape[1] == 1 else gradient

    def predict_stream(
        self, requests: Iterable[Any], *, timeout: float | None = None
    ) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
        """(mean, std) for each request of one bidirectional stream, in order.

        A request is an images array or a mapping with images and optionally behavior, pupil_center,
        neurons. The stream is read lazily, so a generator may compute each request from the answers
        before it (see `stream()`). The deadline (`timeout`, default the client's) covers the whole
        stream; a stream is not retried.
        """
        self._described()
        refused: list[TwinError] = []  # a request that failed to encode ends the stream, then is raised

        def encode() -> Iterator[twin_pb2.PredictRequest]:
            for i, item in enumerate(requests):
                try:
                    yield item if isinstance(item, twin_pb2.PredictRequest) else self._stream_request(i, item)
                except TwinError as exc:
                    refused.append(exc)
                    return

        deadline = self.timeout if timeout is None else timeout
        replies = self._stub.PredictStream(encode(), timeout=deadline)
        try:
            for reply in replies:
                yield _array(reply.mean, "mean"), _array(reply.std, "std")
        except grpc.RpcError as exc:
            raise self._error("PredictStream", exc, 1, deadline) from None
        finally:
            replies.cancel()
        if refused:
            raise refused[0]

    def _stream_request(self, i: int, item: Any) -> twin_pb2.PredictRequest:
        fields = dict(item) if isinstance(item, Mapping) else {"images": item}
        unknown = sorted(set(fields) - {"images", "behavior", "pupil_center", "neurons"})
        if unknown or "images" not in fields:
            raise InvalidInput(
                f"requests[{i}]: keys {sorted(fields)}; expected images and optionally "
                "behavior, pupil_center, neurons"
            )
        return self._predict_request(
            fields["images"], fields.get("behavior"), fields.get("pupil_center"), fields.get("neurons"), False
        )

    def stream(self, *, timeout: float | None = None) -> PredictStream:
        """A long-lived predict stream for optimization loops: `s.predict(images)` per step."""
        return PredictStream(self, timeout)

    def evaluate(self, tier: str = "test", per_neuron: bool = False) -> dict[str, Any]:
        """Scores on the server's held-out responses of `tier`; per-neuron arrays on request."""
        info = self._described()
        reply = self._call(
            "Evaluate",
            twin_pb2.EvaluateRequest(
                model=info["name"],
                version=self._version or 0,
                data_key=info["data_key"],
                tier=tier,
                per_neuron=per_neuron,
            ),
        )
        optional = ("feve", "fev_fraction_above_threshold", "oracle_correlation")
        result: dict[str, Any] = {
            "model": reply.model,
            "version": int(reply.version),
            "data_key": reply.data_key,
            "tier": reply.tier,
            "single_trial_correlation": reply.single_trial_correlation,
            "correlation_to_average": reply.correlation_to_average,
            **{name: getattr(reply, name) if reply.HasField(name) else None for name in optional},
            "n_neurons": int(reply.n_neurons),
            "n_trials": int(reply.n_trials),
            "n_images": int(reply.n_images),
        }
        if per_neuron:
            scores = reply.neurons
            result["per_neuron"] = {
                "neuron_ids": np.asarray(scores.neuron_ids, np.int64),
                "single_trial_correlation": np.asarray(scores.single_trial_correlation),
                "correlation_to_average": np.asarray(scores.correlation_to_average),
                "feve": np.asarray(scores.feve) if len(scores.feve) else None,
            }
        return result

    def reload(self) -> dict[str, list[tuple]]:
        """Ask the server to re-scan its repository now: {"loaded": [(model, version)], "unloaded": [...],
        "failed": [(model, version, error)]} (a failed version leaves the serving one in place)."""
        reply = self._call("Reload", twin_pb2.ReloadRequest())
        with self._lock:
            self._info = None
        return {
            "loaded": [(v.model, int(v.version)) for v in reply.loaded],
            "failed": [(v.model, int(v.version), v.error) for v in reply.failed],
            "unloaded": [(v.model, int(v.version)) for v in reply.unloaded],
        }

    def close(self) -> None:
        """Close the channel (idempotent)."""
        self._channel.close()

    def __enter__(self) -> TwinClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TwinClient({self.address!r}, model={self._model!r}, data_key={self._data_key!r})"


class PredictStream:
    """One open PredictStream: each `predict` sends a request and waits for its answer."""

    _END = object()

    def __init__(self, client: TwinClient, timeout: float | None) -> None:
        self._client = client
        self._requests: queue.Queue[Any] = queue.Queue()
        self._replies = client.predict_stream(iter(self._requests.get, self._END), timeout=timeout)

    def predict(
        self,
        images: Any,
        behavior: Any = None,
        pupil_center: Any = None,
        neurons: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and std, as TwinClient.predict, over the open stream."""
        # encoded here, so a bad input raises at once and leaves the stream open
        self._requests.put(self._client._predict_request(images, behavior, pupil_center, neurons, False))
        try:
            return next(self._replies)
        except StopIteration:
            raise RemoteError("PredictStream: the server closed the stream") from None

    def close(self) -> None:
        """End the stream (idempotent)."""
        self._requests.put(self._END)
        self._replies.close()

    def __enter__(self) -> PredictStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
