"""The gRPC server: twin.v1 `Twin` and KServe v2 `GRPCInferenceService` over one model repository.

`start(repository, ...)` loads the repository (ROOT/<model>/<version>/, as `twin export` writes), starts
a `grpc.aio` server on its own event loop in a background thread and returns a `RunningServer`:

- services: twin.v1.Twin (serving/servicer.py), inference.GRPCInferenceService (serving/kserve.py;
  KServe models are named "<model>.<data_key>"), grpc.health.v1.Health (overall "" and per service;
  NOT_SERVING from the moment `stop()` begins) and server reflection for all of them;
- Predict, Gradient and ModelInfer share one dynamic batcher (serving/runtime.py) running ONNX Runtime in
  a thread pool; a request holds its model version until its batch ran, so a hot reload never cuts it;
- hot reload: the repository is re-scanned every `poll_interval_s` seconds (None: only on the Reload
  RPC); a version that fails to load is reported and the serving one stays;
- Prometheus metrics (serving/observability.py) over HTTP when `metrics_port` is given (0: a free port);
- messages up to `max_message_mb` MiB each way; a larger one is refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from serving.kserve import KServeServicer
from serving.observability import Metrics, MetricsInterceptor, MetricsServer, start_metrics_server
from serving.repository import ModelRepository
from serving.runtime import Runtime, load_heldout
from serving.servicer import TwinServicer
from serving.status import ErrorInterceptor
from twin._proto.inference import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from twin._proto.twin.v1 import twin_pb2, twin_pb2_grpc
from twin.errors import InvalidInput

__all__ = ["SERVICES", "RunningServer", "start"]

log = logging.getLogger(__name__)

TWIN_SERVICE = twin_pb2.DESCRIPTOR.services_by_name["Twin"].full_name
KSERVE_SERVICE = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVICES = (TWIN_SERVICE, KSERVE_SERVICE)

# Batches running at once (each runs ONNX Runtime with its own intra-op threads), and worker threads:
# those plus room for Evaluate and Reload, which run in the same pool without batching.
_CONCURRENT_BATCHES = 2
_WORKERS = _CONCURRENT_BATCHES + 2


@dataclass
class _Serving:
    """What runs on the event loop."""

    server: aio.Server
    health: health_aio.HealthServicer
    runtime: Runtime
    port: int


class RunningServer:
    """A started server: its address and ports; `stop()` ends it (also on leaving a `with` block)."""

    def __init__(
        self,
        host: str,
        serving: _Serving,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        repository: ModelRepository,
        executor: ThreadPoolExecutor,
        metrics: Metrics,
        metrics_server: MetricsServer | None,
    ) -> None:
        self.host = host
        self.port: int = serving.port
        self.address: str = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.metrics_port: int | None = None if metrics_server is None else metrics_server.port
        self.metrics = metrics
        self.repository = repository
        self._serving = serving
        self._loop = loop
        self._thread = thread
        self._executor = executor
        self._metrics_server = metrics_server
        self._lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()

    @property
    def accepting(self) -> bool:
        """False once `stop()` began."""
        return not self._stopping

    def stop(self, grace: float = 5.0) -> None:
        """Health to NOT_SERVING, then stop: in-flight calls get `grace` seconds to finish. Idempotent."""
        with self._lock:
            already, self._stopping = self._stopping, True
        if already:
            self._stopped.wait()
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(grace), self._loop)
            future.result(timeout=grace + 30)
        except Exception:
            log.exception("gRPC server on %s: unclean shutdown", self.address)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            if not self._thread.is_alive():
                self._loop.close()
            self.repository.close()
            self._executor.shutdown(wait=True, cancel_futures=True)
            if self._metrics_server is not None:
                self._metrics_server.close()
            log.info("gRPC server on %s stopped", self.address)
            self._stopped.set()

    async def _shutdown(self, grace: float) -> None:
        serving = self._serving
        await serving.health.enter_graceful_shutdown()
        await serving.server.stop(grace)
        await serving.runtime.close()

    def wait(self) -> None:
        """Block until the server has stopped."""
        self._stopped.wait()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped.is_set() else "running"
        return f"RunningServer({self.address!r}, metrics_port={self.metrics_port}, {state})"


async def _serve(
    runtime: Runtime,
    metrics: Metrics,
    host: str,
    port: int,
    max_message_bytes: int,
    accepting: Any,
) -> _Serving:
    """Build and start the aio server on the running loop."""
    server = aio.server(
        interceptors=[MetricsInterceptor(metrics), ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    twin_pb2_grpc.add_TwinServicer_to_server(TwinServicer(runtime), server)
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        KServeServicer(runtime, accepting), server
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((*SERVICES, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(target)
    except RuntimeError as exc:
        raise InvalidInput(f"port: cannot listen on {target} ({exc}); expected a free port") from None
    if not bound:
        raise InvalidInput(f"port: cannot listen on {target}; expected a free port")
    await server.start()
    for service in ("", *SERVICES):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    return _Serving(server=server, health=health, runtime=runtime, port=bound)


def _check(name: str, value: Any, low: float, integer: bool = True) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value >= low:
        what = "an integer" if integer else "a number"
        raise InvalidInput(f"{name}: {value!r}; expected {what} >= {low:g}")


def start(
    repository: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    heldout: Sequence[str | os.PathLike[str]] = (),
    max_batch_size: int = 32,
    max_queue_delay_ms: float = 2.0,
    max_queue_size: int = 256,
    poll_interval_s: float | None = 2.0,
    metrics_port: int | None = None,
    threads: int | None = None,
    max_message_mb: int = 64,
) -> RunningServer:
    """Load the model repository and serve it over gRPC on `host:port` (port 0: a free one).

    heldout: recording folders, or folders of recordings, whose held-out responses (under held_out/, as
    `twin simulate` writes them) Evaluate scores against; merged by data key. threads: ONNX Runtime
    intra-op threads per session (None: its default). Returns once the server accepts calls.
    """
    _check("port", port, 0)
    _check("max_batch_size", max_batch_size, 1)
    _check("max_queue_delay_ms", max_queue_delay_ms, 0, integer=False)
    _check("max_queue_size", max_queue_size, 1)
    _check("max_message_mb", max_message_mb, 1)
    if poll_interval_s is not None:
        _check("poll_interval_s", poll_interval_s, 1e-3, integer=False)
    if metrics_port is not None:
        _check("metrics_port", metrics_port, 0)
    if threads is not None:
        _check("threads", threads, 1)
    if isinstance(heldout, str | os.PathLike):
        heldout = [heldout]

    from twin.artifact import load

    def loader(path: Path) -> Any:
        return load(path, threads=threads)

    data = load_heldout(list(heldout))
    metrics = Metrics()
    models = ModelRepository(repository, loader, on_event=metrics.model_event)
    models.reload()
    executor = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="twin-model")
    runtime = Runtime(
        models,
        executor,
        metrics,
        heldout=data,
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        max_queue_size=max_queue_size,
        max_concurrent_batches=_CONCURRENT_BATCHES,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="twin-grpc", daemon=True)
    thread.start()
    holder: list[RunningServer] = []
    metrics_server = None
    try:
        if metrics_port is not None:
            metrics_server = start_metrics_server(metrics, metrics_port, addr=host)
        future = asyncio.run_coroutine_threadsafe(
            _serve(
                runtime,
                metrics,
                host,
                port,
                max_message_mb * 2**20,
                lambda: bool(holder) and holder[0].accepting,
            ),
            loop,
        )
        serving = future.result(timeout=60)
    except BaseException:
        if metrics_server is not None:
            metrics_server.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        models.close()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    running = RunningServer(host, serving, loop, thread, models, executor, metrics, metrics_server)
    holder.append(running)
    if poll_interval_s is not None:
        models.start_polling(poll_interval_s)
    for status in models.models():
        log.info(
            "model %s: serving version %s; versions %s",
            status.name,
            status.serving_version,
            [(v.version, v.state) for v in status.versions],
        )
    log.info("gRPC server on %s (%s)", running.address, ", ".join(SERVICES))
    return running
