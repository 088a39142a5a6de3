"""Metrics of a real grpc.aio server on loopback, read by scraping the real HTTP endpoint."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from serving.observability import Metrics, MetricsInterceptor, start_metrics_server
from serving.status import ErrorInterceptor, call_unary, grpc_status, iterate_stream, wrap_handler
from twin._proto.twin.v1 import twin_pb2, twin_pb2_grpc
from twin.errors import DeadlineExceeded, InvalidInput, ModelNotFound, ModelNotReady, Overloaded, TwinError


class Servicer(twin_pb2_grpc.TwinServicer):
    """Just enough of the API to exercise every kind of call and ending."""

    async def ListModels(self, request, context):
        return twin_pb2.ListModelsResponse(models=[twin_pb2.ModelSummary(name="m", serving_version=1)])

    async def GetModelInfo(self, request, context):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"model: {request.model!r} is not served")

    async def Predict(self, request, context):
        raise Overloaded("queue: 9 requests waiting; the limit is 8, retry later")

    async def Gradient(self, request, context):
        raise RuntimeError("a bug")

    async def PredictStream(self, request_iterator, context):
        async for request in request_iterator:
            if request.request_id == "bad":
                raise InvalidInput("images: shape [1]; expected 3-D or 4-D")
            yield twin_pb2.PredictResponse(request_id=request.request_id)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def exercise(port: int) -> dict[str, grpc.StatusCode]:
    codes = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = twin_pb2_grpc.TwinStub(channel)
        listed = await stub.ListModels(twin_pb2.ListModelsRequest())
        assert listed.models[0].name == "m"
        codes["ListModels"] = grpc.StatusCode.OK
        for name, call, request in (
            ("GetModelInfo", stub.GetModelInfo, twin_pb2.GetModelInfoRequest(model="x")),
            ("Predict", stub.Predict, twin_pb2.PredictRequest()),
            ("Gradient", stub.Gradient, twin_pb2.GradientRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(request)
            codes[name] = info.value.code()
            if name == "Predict":
                assert "the limit is 8" in info.value.details()

        async def requests(ids):
            for request_id in ids:
                yield twin_pb2.PredictRequest(request_id=request_id)

        answers = [r.request_id async for r in stub.PredictStream(requests(["a", "b", "c"]))]
        assert answers == ["a", "b", "c"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.PredictStream(requests(["a", "bad"])):
                pass
        codes["PredictStream"] = info.value.code()
    return codes


def test_grpc_calls_are_counted_by_method_and_status_and_served_over_http():
    metrics = Metrics()
    http = start_metrics_server(metrics, port=0)

    async def main():
        server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics), ErrorInterceptor()])
        twin_pb2_grpc.add_TwinServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return await exercise(port)
        finally:
            await server.stop(None)

    try:
        codes = asyncio.run(main())
        metrics.observe_batch(rows=12, requests=3)
        metrics.observe_queue_time(0.002)
        metrics.model_event("m", 3, "loaded")
        metrics.model_event("m", 4, "failed", "FormatError: manifest.json: not JSON")
        samples = scrape(http.port)
    finally:
        http.close()

    assert codes == {
        "ListModels": grpc.StatusCode.OK,
        "GetModelInfo": grpc.StatusCode.NOT_FOUND,
        "Predict": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Gradient": grpc.StatusCode.UNKNOWN,
        "PredictStream": grpc.StatusCode.INVALID_ARGUMENT,
    }

    def requests(rpc, code):
        return samples.get(("twin_grpc_requests_total", (("code", code), ("rpc", f"twin.v1.Twin/{rpc}"))), 0)

    assert requests("ListModels", "OK") == 1
    assert requests("GetModelInfo", "NOT_FOUND") == 1
    assert requests("Predict", "RESOURCE_EXHAUSTED") == 1
    assert requests("Gradient", "UNKNOWN") == 1
    assert requests("PredictStream", "OK") == 1
    assert requests("PredictStream", "INVALID_ARGUMENT") == 1
    latency = ("twin_grpc_request_duration_seconds_count", (("rpc", "twin.v1.Twin/PredictStream"),))
    assert samples[latency] == 2
    assert samples[("twin_batch_rows_sum", ())] == 12
    assert samples[("twin_batch_requests_count", ())] == 1
    assert samples[("twin_queue_time_seconds_count", ())] == 1
    loaded = ("twin_model_load_events_total", (("model", "m"), ("outcome", "loaded"), ("version", "3")))
    failed = ("twin_model_load_events_total", (("model", "m"), ("outcome", "failed"), ("version", "4")))
    assert samples[loaded] == 1 and samples[failed] == 1


def test_metrics_live_in_a_private_registry():
    first, second = Metrics(), Metrics()  # no "duplicated timeseries" error: separate registries
    first.observe_batch(4, 2)
    assert b"twin_batch_rows_count 1.0" in first.render()
    assert b"twin_batch_rows_count 0.0" in second.render()
    assert REGISTRY.get_sample_value("twin_batch_rows_count") is None


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (ModelNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (ModelNotReady("x"), grpc.StatusCode.UNAVAILABLE),
        (Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (TwinError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (ValueError("x"), grpc.StatusCode.UNKNOWN),
    ],
)
def test_status_table(error, code):
    assert grpc_status(error) == code


def test_a_twin_error_reaches_the_client_only_after_the_outer_interceptors_finished():
    """A scrape right after a client saw an error counts that error: the status waits for the metrics.

    The outer interceptor here takes 0.3 s to record each call; the client must not see the call's end
    before it has (context.abort would send the status first).
    """
    recorded: list[str] = []

    def slow(behavior):
        async def observed(request, context):
            try:
                return await call_unary(behavior, request, context)
            finally:
                await asyncio.sleep(0.3)
                recorded.append("unary")

        return observed

    def slow_stream(behavior):
        async def observed(request, context):
            try:
                async for item in iterate_stream(behavior, request, context):
                    yield item
            finally:
                await asyncio.sleep(0.3)
                recorded.append("stream")

        return observed

    class SlowRecorder(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            return wrap_handler(await continuation(details), slow, slow_stream)

    async def main():
        server = grpc.aio.server(interceptors=[SlowRecorder(), ErrorInterceptor()])
        twin_pb2_grpc.add_TwinServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        seen = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = twin_pb2_grpc.TwinStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Predict(twin_pb2.PredictRequest())
                seen["unary"] = (info.value.code(), info.value.details(), list(recorded))

                async def requests():
                    for request_id in ("a", "bad"):
                        yield twin_pb2.PredictRequest(request_id=request_id)

                answers = []
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for answer in stub.PredictStream(requests()):
                        answers.append(answer.request_id)
                seen["stream"] = (info.value.code(), answers, list(recorded))
        finally:
            await server.stop(None)
        return seen

    seen = asyncio.run(main())
    code, details, recorded_then = seen["unary"]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "the limit is 8" in details
    assert recorded_then == ["unary"]
    code, answers, recorded_then = seen["stream"]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and answers == ["a"]
    assert recorded_then == ["unary", "stream"]
