"""The gRPC server on loopback with the tiny exported artifact: every twin.v1 RPC, health, reflection,
metrics, batching, queue limits, deadlines, hot reload and `twin serve`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import twin
from serving.heldout import HeldOutData
from serving.server import start
from serving.tensors import from_tensor, to_tensor
from twin._proto.inference import grpc_predict_v2_pb2 as kserve_pb2
from twin._proto.inference import grpc_predict_v2_pb2_grpc as kserve_grpc
from twin._proto.twin.v1 import twin_pb2 as pb
from twin._proto.twin.v1 import twin_pb2_grpc
from twin.client import TwinClient
from twin.data import find_held_out, load_held_out, load_recording, restore
from twin.errors import FormatError, InvalidInput

MODEL = "cnn-tiny"
KEY = "90002-1-1"
OTHER = "90001-1-1"
ROOT = Path(__file__).resolve().parents[2]


def _images(batch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 36, 64)).astype(np.uint8)


def _predict_request(images: np.ndarray, **fields) -> pb.PredictRequest:
    return pb.PredictRequest(model=MODEL, data_key=KEY, images=to_tensor(images), **fields)


def _stub(address: str) -> tuple[grpc.Channel, twin_pb2_grpc.TwinStub]:
    channel = grpc.insecure_channel(
        address,
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )
    return channel, twin_pb2_grpc.TwinStub(channel)


def _copy_version(artifact: Path, model_dir: Path, version: int) -> Path:
    """Copy the artifact in as a new version, renamed into place at the end (as a deployment would)."""
    staging = model_dir / f".staging-{version}"
    shutil.copytree(artifact, staging)
    return staging.rename(model_dir / str(version))


def _wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def repository(tiny_artifact, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(tiny_artifact, root / MODEL / "1")
    return root


@pytest.fixture(scope="module")
def server(repository, tiny_sim):
    with start(
        repository, heldout=[tiny_sim], threads=1, poll_interval_s=None, metrics_port=0, max_queue_delay_ms=5
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    channel, stub = _stub(server.address)
    with channel:
        yield stub


@pytest.fixture(scope="module")
def local(tiny_artifact):
    return twin.load(tiny_artifact, threads=1).twin(KEY)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_serving_server_never_imports_torch():
    code = "import sys, serving.server, serving.kserve, serving.servicer\nprint('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------
# Models


def test_list_models_and_model_info(stub, local, tiny_artifact):
    (summary,) = stub.ListModels(pb.ListModelsRequest()).models
    assert summary.name == MODEL and summary.serving_version == 1
    assert list(summary.data_keys) == [OTHER, KEY]
    (version,) = summary.versions
    assert (version.version, version.state, version.serving, version.error) == (
        1,
        pb.VERSION_STATE_READY,
        True,
        "",
    )

    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    info = stub.GetModelInfo(pb.GetModelInfoRequest(model=MODEL))
    assert (info.model, info.version, info.package_version) == (MODEL, 1, manifest["package_version"])
    assert json.loads(info.manifest_json) == manifest
    assert [v.version for v in info.versions] == [1]
    keys = {k.data_key: k for k in info.data_keys}
    assert list(keys) == [OTHER, KEY]
    entry = keys[KEY]
    np.testing.assert_array_equal(entry.neuron_ids, local.neuron_ids)
    coordinates = np.asarray(manifest["recordings"][KEY]["cortical_coordinates"], np.float32)
    np.testing.assert_array_equal(np.reshape(entry.cortical_coordinates, (-1, 3)), coordinates)
    assert not entry.requires_behavior and not entry.requires_pupil_center and entry.n_members == 1
    inputs = {i.name: i for i in entry.inputs}
    assert list(inputs) == ["images", "behavior", "pupil_center"]
    assert list(inputs["images"].shape) == [-1, 36, 64] and inputs["images"].required
    assert pb.DATA_TYPE_UINT8 in inputs["images"].dtypes and not inputs["behavior"].required
    metrics = {(m.tier, m.name): m.value for m in entry.metrics}
    expected = manifest["recordings"][KEY]["test_metrics"]["ensemble"]["single_trial_correlation"]
    assert metrics[("test", "single_trial_correlation")] == pytest.approx(expected)
    assert ("validation", "single_trial_correlation") in metrics
    assert stub.GetModelInfo(pb.GetModelInfoRequest(model=MODEL, version=1)) == info


# ---------------------------------------------------------------------------------------------------
# Predictions and gradients


def test_predict_equals_the_in_process_twin(stub, local):
    images = _images()
    reply = stub.Predict(_predict_request(images, request_id="r-1"))
    assert (reply.model, reply.version, reply.data_key, reply.request_id) == (MODEL, 1, KEY, "r-1")
    mean, std = local.predict(images)
    _close(from_tensor(reply.mean, "mean"), mean)
    _close(from_tensor(reply.std, "std"), std)
    np.testing.assert_array_equal(reply.neuron_ids, local.neuron_ids)
    assert not reply.HasField("members")
    # members on request; (B, 1, H, W) float32 as well as (B, H, W) uint8
    reply = stub.Predict(_predict_request(images[:, None].astype(np.float32), return_members=True))
    _close(from_tensor(reply.members, "members"), local.predict_members(images))
    _close(from_tensor(reply.mean, "mean"), mean)


def test_predict_answers_a_neuron_subset_in_the_order_asked(stub, local):
    images = _images(2, seed=3)
    ids = local.neuron_ids[[7, 0, 149, 7]]
    reply = stub.Predict(_predict_request(images, neuron_ids=ids.tolist(), return_members=True))
    np.testing.assert_array_equal(reply.neuron_ids, ids)
    mean, std = local.predict(images, neurons=ids)
    _close(from_tensor(reply.mean, "mean"), mean)
    _close(from_tensor(reply.std, "std"), std)
    _close(from_tensor(reply.members, "members"), local.predict_members(images, neurons=ids))


def test_gradient_equals_the_in_process_twin(stub, local):
    images = _images(2, seed=1)
    weights = np.random.default_rng(2).normal(size=(2, 150)).astype(np.float32)
    reply = stub.Gradient(
        pb.GradientRequest(
            model=MODEL, data_key=KEY, images=to_tensor(images), weights=to_tensor(weights), request_id="g"
        )
    )
    assert (reply.version, reply.data_key, reply.request_id) == (1, KEY, "g")
    _close(from_tensor(reply.gradient, "gradient"), local.gradient(images, weights))
    # weights over a subset of neurons expand to full width with zeros (a repeated id adds up)
    ids = local.neuron_ids[[4, 9, 4]]
    subset = np.asarray([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], np.float32)
    full = np.zeros((2, 150), np.float32)
    for j, column in enumerate([4, 9, 4]):
        full[:, column] += subset[:, j]
    reply = stub.Gradient(
        pb.GradientRequest(
            model=MODEL,
            data_key=KEY,
            images=to_tensor(images[:, None]),
            weights=to_tensor(subset),
            neuron_ids=ids.tolist(),
        )
    )
    gradient = from_tensor(reply.gradient, "gradient")
    assert gradient.shape == (2, 1, 36, 64)  # the shape the images came in
    _close(gradient[:, 0], local.gradient(images, full))


def test_predict_stream_answers_each_request_in_order(stub, local):
    batches = [_images(1 + i % 3, seed=10 + i) for i in range(6)]
    requests = [_predict_request(b, request_id=f"step-{i}") for i, b in enumerate(batches)]
    replies = list(stub.PredictStream(iter(requests)))
    assert [r.request_id for r in replies] == [f"step-{i}" for i in range(6)]
    for reply, images in zip(replies, batches, strict=True):
        _close(from_tensor(reply.mean, "mean"), local.predict(images)[0])

    # a feedback loop: each request is built from the previous answer on one open stream
    import queue

    outbox: queue.Queue = queue.Queue()
    stream = stub.PredictStream(iter(outbox.get, None))
    images = _images(1, seed=20).astype(np.float32)
    for step in range(3):
        outbox.put(_predict_request(images, request_id=str(step)))
        reply = next(stream)
        assert reply.request_id == str(step)
        mean = from_tensor(reply.mean, "mean")
        _close(mean, local.predict(images)[0])
        images = np.clip(images + 10 * mean.mean(), 0, 255).astype(np.float32)
    outbox.put(None)
    assert list(stream) == []


# ---------------------------------------------------------------------------------------------------
# Evaluation on held-out data


@pytest.fixture(scope="module")
def heldout_data(tiny_sim) -> HeldOutData:
    return HeldOutData.load(tiny_sim)


@pytest.mark.parametrize("data_key", [KEY, OTHER])
def test_evaluate_equals_in_process_held_out_evaluation(stub, heldout_data, tiny_artifact, data_key):
    model = twin.load(tiny_artifact, threads=1).twin(data_key)
    data = heldout_data
    for tier in ("test", "final_test"):
        expected = data.evaluate(
            data_key, lambda x, b, p: model.predict(x, b, p)[0], tier, True, neuron_ids=model.neuron_ids
        )
        reply = stub.Evaluate(
            pb.EvaluateRequest(
                model=MODEL, data_key=data_key, tier="" if tier == "test" else tier, per_neuron=True
            )
        )
        assert (reply.model, reply.version, reply.data_key, reply.tier) == (MODEL, 1, data_key, tier)
        for name in ("single_trial_correlation", "correlation_to_average"):
            assert getattr(reply, name) == pytest.approx(expected[name], abs=1e-5), name
        for name in ("feve", "fev_fraction_above_threshold", "oracle_correlation"):
            if expected[name] is None:
                assert not reply.HasField(name), name
            else:
                assert getattr(reply, name) == pytest.approx(expected[name], abs=1e-5), name
        assert (reply.n_trials, reply.n_neurons, reply.n_images) == (
            expected["n_trials"],
            expected["n_neurons"],
            expected["n_images"],
        )
        per_neuron = expected["per_neuron"]
        np.testing.assert_array_equal(reply.neurons.neuron_ids, per_neuron["neuron_ids"])
        for name in ("single_trial_correlation", "correlation_to_average", "feve"):
            want = per_neuron[name]
            got = np.asarray(getattr(reply.neurons, name))
            if want is None:
                assert got.size == 0
            else:
                np.testing.assert_allclose(got, want, atol=1e-5, equal_nan=True)
    assert not stub.Evaluate(pb.EvaluateRequest(model=MODEL, data_key=data_key)).HasField("neurons")


def _held_out_windows(tiny_sim: Path) -> list[bytes]:
    """Byte patterns of the true responses (4 consecutive non-zero values of a trial or of a neuron, as
    float32 and float64): what a response message carrying them, in a tensor or a repeated field, holds."""
    patterns = []
    for folder in sorted(tiny_sim.glob("static*")):
        recording = load_recording(folder, progress=False)
        held_out = find_held_out(folder, recording.data_key)
        assert held_out is not None
        responses = restore(recording, load_held_out(held_out))
        for tier in ("test", "final_test", "validation"):
            rows = responses[recording.tier_indices(tier)]
            for series in (rows[:20], rows.T[:20]):
                for line in series:
                    for first in range(0, line.size - 4, 4):
                        window = line[first : first + 4]
                        if np.all(window != 0) and len(set(window.tolist())) == 4:
                            patterns.append(window.astype("<f4").tobytes())
                            patterns.append(window.astype("<f8").tobytes())
                            break
    return patterns


def test_no_response_carries_the_held_out_responses(server, stub, tiny_sim):
    patterns = _held_out_windows(tiny_sim)
    assert len(patterns) > 100
    canary = pb.NeuronScores(feve=np.frombuffer(patterns[1], "<f8").tolist()).SerializeToString()
    assert patterns[1] in canary  # the search finds responses where a message would carry them
    images = _images(4, seed=5)
    replies: list[Message] = [
        stub.ListModels(pb.ListModelsRequest()),
        stub.GetModelInfo(pb.GetModelInfoRequest(model=MODEL)),
        stub.Predict(_predict_request(images, return_members=True)),
        *stub.PredictStream(iter([_predict_request(images)])),
        stub.Gradient(
            pb.GradientRequest(
                model=MODEL, data_key=KEY, images=to_tensor(images), weights=to_tensor(np.ones((4, 150)))
            )
        ),
        stub.Reload(pb.ReloadRequest()),
    ]
    for data_key in (KEY, OTHER):
        for tier in ("test", "final_test", "validation"):
            replies.append(
                stub.Evaluate(pb.EvaluateRequest(model=MODEL, data_key=data_key, tier=tier, per_neuron=True))
            )
    channel = grpc.insecure_channel(server.address)
    kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
    request = kserve_pb2.ModelInferRequest(model_name=f"{MODEL}.{KEY}")
    request.inputs.add(name="images", datatype="UINT8", shape=images.shape)
    request.raw_input_contents.append(images.tobytes())
    request.outputs.add(name="members")
    replies += [
        kserve.ModelInfer(request),
        kserve.ModelMetadata(kserve_pb2.ModelMetadataRequest(name=f"{MODEL}.{KEY}")),
    ]
    channel.close()
    for reply in replies:
        wire = reply.SerializeToString()
        leaked = [p for p in patterns if p in wire]
        assert not leaked, f"{type(reply).__name__} carries held-out responses"


# ---------------------------------------------------------------------------------------------------
# Health, reflection, metrics


def test_health_reports_serving_for_the_server_and_each_service(server):
    from serving.health import probe

    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "twin.v1.Twin", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    assert probe(server.address) == "SERVING"
    assert probe(server.address, "no.such.Service") == "UNKNOWN_SERVICE"


def test_twin_health_exits_0_only_when_serving(server):
    """`twin health` as the container's HEALTHCHECK runs it: its status on stdout, exit 0 when SERVING."""

    def health(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "twin.cli", "health", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{unused.getsockname()[1]}"
    for args, code, status in (
        ([server.address], 0, "SERVING"),
        ([server.address, "--service", "twin.v1.Twin"], 0, "SERVING"),
        ([server.address, "--service", "no.such.Service"], 1, "UNKNOWN_SERVICE"),
        ([closed, "--timeout", "0.5"], 1, "UNREACHABLE"),
    ):
        done = health(*args)
        assert (done.returncode, done.stdout.strip()) == (code, status), (args, done.stderr)


def test_reflection_lists_the_services_and_describes_them(server):
    with grpc.insecure_channel(server.address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="twin.v1.Twin"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        ]
        listed, twin_file, kserve_file = list(reflection.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {"twin.v1.Twin", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    assert twin_file.file_descriptor_response.file_descriptor_proto
    assert kserve_file.file_descriptor_response.file_descriptor_proto


def _metrics_text(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_endpoint_counts_calls_batches_and_loads(server, stub):
    stub.Predict(_predict_request(_images(2)))
    with pytest.raises(grpc.RpcError):
        stub.Predict(pb.PredictRequest(model="no-such-model"))
    text = _metrics_text(server)
    assert _sample(text, "twin_grpc_requests_total", rpc="twin.v1.Twin/Predict", code="OK") >= 1
    assert _sample(text, "twin_grpc_requests_total", rpc="twin.v1.Twin/Predict", code="NOT_FOUND") >= 1
    assert _sample(text, "twin_grpc_request_duration_seconds_count", rpc="twin.v1.Twin/Predict") >= 2
    assert _sample(text, "twin_batch_rows_count") >= 1 and _sample(text, "twin_queue_time_seconds_count") >= 1
    assert _sample(text, "twin_model_load_events_total", model=MODEL, version="1", outcome="loaded") == 1


def test_concurrent_requests_are_merged_into_batches(server, stub, local):
    registry = server.metrics.registry

    def merged() -> float:
        single = registry.get_sample_value("twin_batch_requests_bucket", {"le": "1.0"}) or 0.0
        return (registry.get_sample_value("twin_batch_requests_count") or 0.0) - single

    before = merged()
    batches = [_images(1, seed=100 + i) for i in range(16)]
    for _ in range(3):  # concurrency on a busy machine is not guaranteed on the first try
        futures = [stub.Predict.future(_predict_request(b)) for b in batches]
        for future, images in zip(futures, batches, strict=True):
            _close(from_tensor(future.result().mean, "mean"), local.predict(images)[0])
        if merged() > before:
            break
    assert merged() > before, "no batch merged more than one request"


# ---------------------------------------------------------------------------------------------------
# Queue limits, deadlines, cancellation


@pytest.fixture(scope="module")
def queue_server(repository, tiny_paths):
    """One request fits in the queue; a lone request waits 300 ms for company before it runs."""
    with start(
        repository,
        heldout=[tiny_paths[OTHER]],
        threads=1,
        poll_interval_s=None,
        max_queue_size=1,
        max_queue_delay_ms=300,
    ) as running:
        yield running


def test_a_full_queue_answers_resource_exhausted_and_recovers(queue_server, local):
    channel, stub = _stub(queue_server.address)
    with channel:
        images = _images(1)
        futures = [stub.Predict.future(_predict_request(images)) for _ in range(6)]
        codes = []
        for future in futures:
            try:
                _close(from_tensor(future.result().mean, "mean"), local.predict(images)[0])
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                assert "queue" in exc.details()
                codes.append(exc.code())
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        _close(from_tensor(stub.Predict(_predict_request(images)).mean, "mean"), local.predict(images)[0])


def test_deadlines_and_cancellations_leave_the_queue(queue_server, local):
    channel, stub = _stub(queue_server.address)
    with channel:
        images = _images(1, seed=7)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(_predict_request(images), timeout=0.1)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        future = stub.Predict.future(_predict_request(images))
        time.sleep(0.1)
        assert future.cancel()
        time.sleep(0.05)
        # had either request stayed queued, this one would find the queue (of one) full
        reply = stub.Predict(_predict_request(images), timeout=10)
        _close(from_tensor(reply.mean, "mean"), local.predict(images)[0])


def test_evaluate_names_a_data_key_without_held_out_data(queue_server):
    channel, stub = _stub(queue_server.address)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(model=MODEL, data_key=KEY))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert KEY in caught.value.details() and "held-out" in caught.value.details()


# ---------------------------------------------------------------------------------------------------
# Hot reload


@pytest.fixture
def model_dir(tiny_artifact, tmp_path) -> Path:
    folder = tmp_path / "repository" / MODEL
    folder.mkdir(parents=True)
    shutil.copytree(tiny_artifact, folder / "1")
    return folder


def test_polling_serves_a_new_version_without_restart(model_dir, tiny_artifact, local):
    with start(model_dir.parent, threads=1, poll_interval_s=0.1) as running:
        channel, stub = _stub(running.address)
        with channel:
            _copy_version(tiny_artifact, model_dir, 2)
            _wait_for(lambda: stub.ListModels(pb.ListModelsRequest()).models[0].serving_version == 2)
            images = _images(2)
            reply = stub.Predict(_predict_request(images))
            assert reply.version == 2
            _close(from_tensor(reply.mean, "mean"), local.predict(images)[0])
            assert stub.Predict(_predict_request(images, version=1)).version == 1


def test_reload_swaps_versions_while_requests_finish_on_the_old_one(model_dir, tiny_artifact, local):
    # batches of two run at once; a lone image waits 1.5 s for company: a request kept in flight
    with start(
        model_dir.parent, threads=1, poll_interval_s=None, max_batch_size=2, max_queue_delay_ms=1500
    ) as running:
        channel, stub = _stub(running.address)
        with channel:
            pair, lone = _images(2), _images(1, seed=9)
            _copy_version(tiny_artifact, model_dir, 2)
            reply = stub.Reload(pb.ReloadRequest())
            assert [(v.model, v.version) for v in reply.loaded] == [(MODEL, 2)]
            assert not reply.failed and not reply.unloaded
            assert reply.models[0].serving_version == 2
            assert stub.Predict(_predict_request(pair)).version == 2

            in_flight = stub.Predict.future(_predict_request(lone))
            time.sleep(0.2)  # it holds version 2 now, waiting in the queue
            shutil.rmtree(model_dir / "2")
            shutil.rmtree(model_dir / "1")
            _copy_version(tiny_artifact, model_dir, 3)
            reply = stub.Reload(pb.ReloadRequest())
            assert [v.version for v in reply.loaded] == [3]
            assert sorted(v.version for v in reply.unloaded) == [1, 2]
            assert not in_flight.done()
            finished = in_flight.result(timeout=10)
            assert finished.version == 2  # answered by the version it started on
            _close(from_tensor(finished.mean, "mean"), local.predict(lone)[0])
            assert stub.Predict(_predict_request(pair)).version == 3

            # a damaged version is reported and leaves the serving one in place
            broken = _copy_version(tiny_artifact, model_dir, 4)
            graph = broken / f"responses-{KEY}.onnx"
            data = bytearray(graph.read_bytes())
            data[len(data) // 2] ^= 0xFF
            graph.write_bytes(bytes(data))
            reply = stub.Reload(pb.ReloadRequest())
            assert not reply.loaded and [v.version for v in reply.failed] == [4]
            assert "sha256" in reply.failed[0].error and reply.failed[0].state == pb.VERSION_STATE_FAILED
            (summary,) = stub.ListModels(pb.ListModelsRequest()).models
            assert summary.serving_version == 3
            states = {v.version: (v.state, v.serving) for v in summary.versions}
            assert states == {3: (pb.VERSION_STATE_READY, True), 4: (pb.VERSION_STATE_FAILED, False)}
            assert "sha256" in next(v.error for v in summary.versions if v.version == 4)
            assert stub.Predict(_predict_request(pair)).version == 3
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(_predict_request(pair, version=4))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_twin_reload_loads_reports_failures_and_exits_1_for_them(model_dir, tiny_artifact):
    from click.testing import CliRunner

    from twin.cli import cli

    with start(model_dir.parent, threads=1, poll_interval_s=None) as running:
        runner = CliRunner()
        done = runner.invoke(cli, ["reload", running.address])
        assert (done.exit_code, done.output) == (0, "no change\n")
        _copy_version(tiny_artifact, model_dir, 2)
        shutil.rmtree(model_dir / "1")
        done = runner.invoke(cli, ["reload", running.address])
        assert done.exit_code == 0, done.output
        assert done.output.splitlines() == [f"loaded {MODEL} version 2", f"unloaded {MODEL} version 1"]
        broken = _copy_version(tiny_artifact, model_dir, 3)
        (broken / f"gradient-{KEY}.onnx").unlink()
        done = runner.invoke(cli, ["reload", running.address])
        assert done.exit_code == 1
        assert re.fullmatch(rf"failed {MODEL} version 3: .*gradient-{KEY}\.onnx.*\n", done.output, re.S)
        with TwinClient(running.address) as client:
            assert client.reload()["failed"] == []  # failed once; unchanged since, so not retried
            assert client.models()[0]["serving_version"] == 2
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{unused.getsockname()[1]}"
    done = CliRunner().invoke(cli, ["reload", closed, "--timeout", "1"])
    assert done.exit_code == 1 and done.output.startswith("Error: reload: ")


# ---------------------------------------------------------------------------------------------------
# Lifecycle and the command line


def test_stop_turns_health_to_not_serving_and_is_idempotent(repository):
    running = start(repository, threads=1, poll_interval_s=None)
    seen: list[int] = []
    channel = grpc.insecure_channel(running.address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

    def follow() -> None:
        try:
            for reply in watch:
                seen.append(reply.status)
        except grpc.RpcError:
            pass

    follower = threading.Thread(target=follow)
    follower.start()
    _wait_for(lambda: seen, timeout=5)
    running.stop(grace=0.5)
    running.stop()
    running.wait()
    follower.join(timeout=5)
    channel.close()
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert seen[:1] == [serving] and not_serving in seen


def test_start_refuses_bad_arguments_and_a_busy_port(server, repository, tiny_sim, tiny_paths):
    with pytest.raises(InvalidInput, match=r"^port: "):
        start(repository, port=server.port, poll_interval_s=None)
    with pytest.raises(InvalidInput, match=r"^max_batch_size: "):
        start(repository, max_batch_size=0)
    with pytest.raises(FormatError, match=r"model repository: .*not a directory"):
        start(repository / "missing")
    with pytest.raises(
        FormatError, match=rf"{OTHER}.*{re.escape(str(tiny_sim))}.*{re.escape(str(tiny_paths[OTHER]))}"
    ):
        start(repository, heldout=[tiny_sim, tiny_paths[OTHER]], poll_interval_s=None)


def _serve_process(repository: Path) -> tuple[subprocess.Popen, str]:
    """`twin serve` on free ports; returns the process and its gRPC address once it serves."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twin.cli",
            "serve",
            "--repository",
            str(repository),
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--poll-interval",
            "0",
            "--threads",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"serving gRPC on (\S+?)(,|$)", line.strip())
        if found:
            return process, found.group(1)
    process.wait(timeout=10)
    raise AssertionError("twin serve did not start:\n" + "".join(lines))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_twin_serve_serves_until_a_signal_then_exits_cleanly(repository, sig):
    from serving.health import probe

    process, address = _serve_process(repository)
    try:
        assert probe(address, timeout=10) == "SERVING"
        channel, stub = _stub(address)
        with channel:
            assert stub.ListModels(pb.ListModelsRequest()).models[0].name == MODEL
        process.send_signal(sig)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert probe(address, timeout=1) == "UNREACHABLE"


def test_requests_run_in_parallel_threads_without_mixing_answers(stub, local):
    """Many clients at once, different batch sizes and subsets: each gets its own answer."""
    jobs = [(_images(1 + i % 4, seed=200 + i), local.neuron_ids[[i % 150, (7 * i) % 150]]) for i in range(24)]

    def call(job):
        images, ids = job
        return stub.Predict(_predict_request(images, neuron_ids=ids.tolist()))

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(call, jobs))
    for reply, (images, ids) in zip(replies, jobs, strict=True):
        _close(from_tensor(reply.mean, "mean"), local.predict(images, neurons=ids)[0])
