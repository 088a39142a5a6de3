"""gRPC status codes of `twin` errors: the one table (DESIGN.md §5) and the interceptor that applies it.

`ErrorInterceptor` turns a `TwinError` raised by any handler (unary or streaming) into the matching
status with the error's message, so servicers raise domain errors and never pick codes themselves.
`wrap_handler` rebuilds a method handler around new behaviour; other interceptors reuse it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from twin.errors import (
    DeadlineExceeded,
    FormatError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    TwinError,
)

__all__ = ["STATUS_CODES", "ErrorInterceptor", "grpc_status", "wrap_handler"]

STATUS_CODES: dict[type[BaseException], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    FormatError: grpc.StatusCode.FAILED_PRECONDITION,
    TwinError: grpc.StatusCode.FAILED_PRECONDITION,
}

# wrap(behavior) -> new behavior, for unary-response and for streaming-response methods.
UnaryWrap = Callable[[Callable[..., Any]], Callable[..., Awaitable[Any]]]
StreamWrap = Callable[[Callable[..., Any]], Callable[..., AsyncIterator[Any]]]


def grpc_status(exc: BaseException) -> grpc.StatusCode:
    """The status code an exception maps to: its closest class in STATUS_CODES, else UNKNOWN."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.UNKNOWN


async def call_unary(behavior: Callable[..., Any], request: Any, context: aio.ServicerContext) -> Any:
    """Run a unary-response handler, async or not."""
    result = behavior(request, context)
    return await result if inspect.isawaitable(result) else result


async def iterate_stream(
    behavior: Callable[..., Any], request: Any, context: aio.ServicerContext
) -> AsyncIterator[Any]:
    """Run a streaming-response handler, whether it yields (async or not) or writes with context.write()."""
    result = behavior(request, context)
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result
    elif result is not None:
        for item in result:
            yield item


def wrap_handler(
    handler: grpc.RpcMethodHandler, unary: UnaryWrap, stream: StreamWrap
) -> grpc.RpcMethodHandler:
    """The same method with its behaviour wrapped: `unary` for single responses, `stream` for streams."""
    common = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **common)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **common)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **common)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **common)


def _unary(behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await call_unary(behavior, request, context)
        except TwinError as exc:
            _end_with(context, exc)
            return None

    return handler


def _stream(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in iterate_stream(behavior, request, context):
                yield item
        except TwinError as exc:
            _end_with(context, exc)

    return handler


def _end_with(context: aio.ServicerContext, exc: TwinError) -> None:
    """Set the status the call ends with once every interceptor has returned.

    Not `context.abort`: that sends the status at once, so a client could see its error before the
    outer interceptors (metrics) have recorded the call.
    """
    context.set_code(grpc_status(exc))
    context.set_details(str(exc))


class ErrorInterceptor(aio.ServerInterceptor):
    """Ends a call that raised a `TwinError` with its status code (STATUS_CODES) and message."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return handler if handler is None else wrap_handler(handler, _unary, _stream)
