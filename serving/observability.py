"""Prometheus metrics of the server: RPCs, latency, batching, queueing and model loads.

Metrics live in a private `CollectorRegistry` (never the process-global one), so two servers in one
process, or a test beside a server, never mix their numbers. `start_metrics_server` serves them over
HTTP; `MetricsInterceptor` records every gRPC call (unary and streaming) by method and status code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from grpc import aio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server

from serving.status import call_unary, iterate_stream, wrap_handler

__all__ = ["Metrics", "MetricsInterceptor", "MetricsServer", "start_metrics_server"]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_QUEUE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """The server's metrics, registered in their own registry (`self.registry`)."""

    def __init__(self, namespace: str = "twin") -> None:
        self.registry = CollectorRegistry()
        common: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        self.requests = Counter(
            "grpc_requests", "gRPC calls handled, by method and status code", ["rpc", "code"], **common
        )
        self.latency = Histogram(
            "grpc_request_duration_seconds",
            "Time from a call's start to its end (a whole stream for streaming calls), by method",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            **common,
        )
        self.batch_rows = Histogram(
            "batch_rows",
            "Rows (images) per model call after dynamic batching",
            buckets=_BATCH_BUCKETS,
            **common,
        )
        self.batch_requests = Histogram(
            "batch_requests", "Requests merged into one model call", buckets=_BATCH_BUCKETS, **common
        )
        self.queue_time = Histogram(
            "queue_time_seconds",
            "Time a request waited before its batch started",
            buckets=_QUEUE_BUCKETS,
            **common,
        )
        self.model_loads = Counter(
            "model_load_events",
            "Model version load events, by model, version and outcome (loaded, failed, unloaded)",
            ["model", "version", "outcome"],
            **common,
        )

    def observe_call(self, rpc: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count one finished call and its duration."""
        self.requests.labels(rpc=rpc, code=code.name).inc()
        self.latency.labels(rpc=rpc).observe(seconds)

    def observe_batch(self, rows: int, requests: int) -> None:
        """Record one model call's size; fits `DynamicBatcher(on_batch=...)`."""
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def observe_queue_time(self, seconds: float) -> None:
        """Record how long one request waited for its batch (`BatchResult.queue_time_s`)."""
        self.queue_time.observe(seconds)

    def model_event(self, model: str, version: int, outcome: str, error: str | None = None) -> None:
        """Count one load event; fits `ModelRepository(on_event=...)` (the error text is not a label)."""
        self.model_loads.labels(model=model, version=str(version), outcome=outcome).inc()

    def render(self) -> bytes:
        """The metrics in the Prometheus text format, as the HTTP endpoint serves them."""
        return generate_latest(self.registry)


@dataclass
class MetricsServer:
    """A running metrics HTTP endpoint (`GET /metrics`)."""

    port: int
    server: WSGIServer
    thread: Thread

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(metrics: Metrics, port: int = 0, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve `metrics` over HTTP on `addr:port` in a daemon thread; port 0 picks a free one."""
    server, thread = start_http_server(port, addr=addr, registry=metrics.registry)
    return MetricsServer(port=int(server.server_port), server=server, thread=thread)


# ---------------------------------------------------------------------------------------------------
# gRPC interceptor


def _code(context: aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """The status the client sees: what the handler set or aborted with; UNKNOWN for an unmapped error."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN


class MetricsInterceptor(aio.ServerInterceptor):
    """Records every call's method (`twin.v1.Twin/Predict`), status code and duration in `metrics`.

    Place it first (outermost) in the server's interceptors, before `ErrorInterceptor`, so it sees the
    status codes that errors map to. A streaming call's duration is the whole stream's.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        rpc = handler_call_details.method.lstrip("/")
        metrics = self.metrics

        def unary(behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
            async def observed(request: Any, context: aio.ServicerContext) -> Any:
                start, exc = time.perf_counter(), None
                try:
                    return await call_unary(behavior, request, context)
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    metrics.observe_call(rpc, _code(context, exc), time.perf_counter() - start)

            return observed

        def stream(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
            async def observed(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                start, exc = time.perf_counter(), None
                try:
                    async for item in iterate_stream(behavior, request, context):
                        yield item
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    metrics.observe_call(rpc, _code(context, exc), time.perf_counter() - start)

            return observed

        return wrap_handler(handler, unary, stream)
