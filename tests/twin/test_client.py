"""The gRPC client against the real server on loopback: the same answers and errors as the local twin."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import twin
from twin.client import DeadlineExceeded, TwinClient
from twin.errors import InvalidInput, ModelNotFound, ModelNotReady, Overloaded

KEY = "90002-1-1"


def _images(batch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 36, 64)).astype(np.uint8)


@pytest.fixture(scope="module")
def repository(tiny_artifact, tmp_path_factory) -> Path:
    """A model repository holding the tiny artifact as cnn-tiny version 1."""
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(tiny_artifact, root / "cnn-tiny" / "1")
    return root


@pytest.fixture(scope="module")
def server(repository, tiny_sim):
    from serving.server import start

    with start(repository, heldout=[tiny_sim], threads=1, poll_interval_s=60.0) as running:
        yield running


@pytest.fixture(scope="module")
def local(tiny_artifact):
    return twin.load(tiny_artifact, threads=1).twin(KEY)


@pytest.fixture(scope="module")
def remote(server):
    with TwinClient(server.address, data_key=KEY, timeout=20.0) as client:
        yield client


@pytest.fixture(params=["local", "remote"])
def any_twin(request, local, remote):
    """The in-process twin and the served one: tests using this prove they behave alike."""
    return local if request.param == "local" else remote


def _same(a: np.ndarray, b: np.ndarray) -> None:
    # requests here come one at a time, so each server batch is the local twin's ONNX Runtime call
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def test_info_and_attributes_equal_the_local_twin(local, remote):
    assert remote.info() == local.info()
    np.testing.assert_array_equal(remote.neuron_ids, local.neuron_ids)
    assert remote.n_neurons == local.n_neurons == 150
    assert remote.requires == local.requires
    assert remote.image_size == local.image_size and remote.recording_image_size == local.recording_image_size
    assert remote.n_members == local.n_members and remote.version == 1 and remote.model == "cnn-tiny"


def test_predictions_equal_the_local_twin(local, remote):
    images = _images()
    for a, b in zip(remote.predict(images), local.predict(images), strict=True):
        _same(a, b)
    _same(remote.predict_members(images), local.predict_members(images))
    # (B, 1, H, W) and other real dtypes are accepted as locally
    _same(remote.predict(images[:, None].astype(np.int64))[0], local.predict(images)[0])
    ids = local.neuron_ids[[7, 0, 149, 7]]
    for a, b in zip(remote.predict(images, neurons=ids), local.predict(images, neurons=ids), strict=True):
        _same(a, b)
    _same(remote.predict_members(images, neurons=ids), local.predict_members(images, neurons=ids))


def test_large_batches_go_in_chunks_the_server_accepts(local, remote):
    images = _images(70, seed=3)  # the server takes at most 32 images per request
    for a, b in zip(remote.predict(images), local.predict(images), strict=True):
        _same(a, b)
    _same(remote.predict_members(images), local.predict_members(images))
    weights = np.ones((70, 150), np.float32)
    _same(remote.gradient(images, weights), local.gradient(images, weights))
    with pytest.raises(InvalidInput, match=r"^behavior: shape \(3, 3\)"):
        remote.predict(images, behavior=np.zeros((3, 3)))


def test_gradient_equals_the_local_twin(local, remote):
    images = _images(seed=1)
    weights = np.random.default_rng(2).normal(size=(3, 150)).astype(np.float32)
    expected = local.gradient(images, weights)
    _same(remote.gradient(images, weights), expected)
    _same(remote.gradient(images[:, None], weights), local.gradient(images[:, None], weights))


def test_in_silico_experiments_run_the_same_locally_and_remotely(local, remote):
    from twin.experiments import most_exciting_images, receptive_fields

    ids = local.neuron_ids[[3, 40]]
    meis = [most_exciting_images(t, ids, steps=5) for t in (local, remote)]
    for name, value in vars(meis[0]).items():
        np.testing.assert_array_equal(getattr(meis[1], name), value)
    assert np.all(meis[0].activation > meis[0].start)  # the experiment did drive the neurons
    fields = [receptive_fields(t, ids, square=6, stride=6) for t in (local, remote)]
    np.testing.assert_array_equal(fields[1].on, fields[0].on)
    np.testing.assert_array_equal(fields[1].off, fields[0].off)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda t: t.predict(np.zeros((2, 40, 64))), "images"),
        (lambda t: t.predict(np.zeros((0, 36, 64))), "images"),
        (lambda t: t.predict(np.full((1, 36, 64), np.nan)), "images"),
        (lambda t: t.predict(np.zeros((2, 36, 64), bool)), "images"),
        (lambda t: t.predict(np.zeros((2, 36, 64)), behavior=np.zeros((3, 3))), "behavior"),
        (lambda t: t.predict(np.zeros((2, 36, 64)), neurons=[10**9]), "neurons"),
        (lambda t: t.predict_members(np.zeros((2, 36, 64)), neurons=[]), "neurons"),
        (lambda t: t.gradient(np.zeros((2, 36, 64)), np.ones((2, 149))), "weights"),
        (lambda t: t.gradient(np.zeros((2, 36, 64)), np.full((2, 150), np.inf)), "weights"),
    ],
    ids=["size", "empty", "nan", "dtype", "behavior", "neuron", "no-neurons", "weights", "weights-inf"],
)
def test_bad_inputs_raise_invalid_input_naming_the_field(any_twin, call, field):
    with pytest.raises(InvalidInput, match=rf"^{field}: "):
        call(any_twin)


def test_evaluate_scores_the_held_out_tier_like_in_process_evaluation(local, remote, tiny_sim):
    from serving.heldout import HeldOutData

    expected = HeldOutData.load(tiny_sim).evaluate(KEY, lambda x, b, p: local.predict(x, b, p)[0])
    scores = remote.evaluate("test")
    assert scores["model"] == "cnn-tiny" and scores["version"] == 1
    assert scores["data_key"] == KEY and scores["tier"] == "test"
    for name in ("single_trial_correlation", "correlation_to_average", "oracle_correlation"):
        assert scores[name] == pytest.approx(expected[name], abs=1e-4), name
    assert (scores["n_trials"], scores["n_neurons"], scores["n_images"]) == (
        expected["n_trials"],
        expected["n_neurons"],
        expected["n_images"],
    )
    detail = remote.evaluate("test", per_neuron=True)["per_neuron"]
    np.testing.assert_array_equal(detail["neuron_ids"], local.neuron_ids)
    assert detail["single_trial_correlation"].shape == (150,)
    with pytest.raises(InvalidInput, match=r"tier"):
        remote.evaluate("nonsense")


def test_model_and_data_key_are_resolved_or_refused_naming_the_choices(server):
    with TwinClient(server.address) as client:
        assert [m["name"] for m in client.models()] == ["cnn-tiny"]
        assert client.models()[0]["serving_version"] == 1
        with pytest.raises(InvalidInput, match=r"data_key: None.*90001-1-1.*90002-1-1"):
            client.info()
    for model, data_key, version, wanted in [
        ("cnn-tiny", "1-2-3", None, "1-2-3"),
        ("nope", KEY, None, "nope"),
        ("cnn-tiny", KEY, 7, "version"),
    ]:
        client = TwinClient(server.address, model, data_key, version)
        with client, pytest.raises(ModelNotFound, match=wanted):
            client.predict(_images())


def test_streams_answer_in_order(local, remote):
    batches = [_images(2, seed) for seed in range(4)]
    subset = {"images": batches[0], "neurons": [int(local.neuron_ids[5])]}
    answers = list(remote.predict_stream([*batches, subset]))
    for (mean, std), images in zip(answers, batches, strict=False):
        _same(mean, local.predict(images)[0])
        _same(std, local.predict(images)[1])
    _same(answers[-1][0], local.predict(batches[0])[0][:, [5]])
    # an open stream for a feedback loop: each step depends on the last answer
    with remote.stream() as stream:
        images = batches[0].astype(np.float32)
        for _ in range(3):
            mean, _ = stream.predict(images)
            _same(mean, local.predict(images)[0])
            images = np.clip(images + mean.mean(), 0, 255)
        with pytest.raises(InvalidInput, match=r"^images: "):
            stream.predict(np.zeros((1, 36)).astype(bool))
        stream.predict(images)  # still open after a refused input
    # a request that cannot be encoded ends the stream after the answers before it, naming it
    answers = []
    with pytest.raises(InvalidInput, match=r"^requests\[1\]: keys \['imgs'\]"):
        answers.extend(remote.predict_stream([batches[0], {"imgs": batches[1]}]))
    assert len(answers) == 1
    # one the server refuses ends the stream with its status, mapped like a unary call's
    with pytest.raises(InvalidInput, match=r"^images: contains NaN"):
        list(remote.predict_stream([batches[0], np.full((1, 36, 64), np.nan)]))


def test_reload_reports_and_keeps_serving(remote):
    assert remote.reload() == {"loaded": [], "failed": [], "unloaded": []}
    assert remote.predict(_images(1))[0].shape == (1, 150)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_client_started_before_the_server_gets_through_by_retrying(repository):
    from serving.server import start

    port = _free_port()
    started: list = []
    timer = threading.Timer(0.5, lambda: started.append(start(repository, port=port, threads=1)))
    timer.start()
    try:
        with TwinClient(f"127.0.0.1:{port}", data_key=KEY, retries=6, timeout=10.0) as client:
            assert client.predict(_images(1))[0].shape == (1, 150)
    finally:
        timer.join()
        for running in started:
            running.stop(grace=0)


def test_unavailable_after_the_retries_names_the_address():
    port = _free_port()
    begin = time.monotonic()
    with (
        TwinClient(f"127.0.0.1:{port}", data_key=KEY, retries=1, backoff_s=0.05) as client,
        pytest.raises(ModelNotReady, match=rf"127\.0\.0\.1:{port}.*UNAVAILABLE"),
    ):
        client.info()
    assert time.monotonic() - begin < 5


def test_invalid_input_is_not_retried(server):
    with TwinClient(server.address, data_key=KEY, retries=3, backoff_s=10.0) as client:
        client.info()
        begin = time.monotonic()
        with pytest.raises(InvalidInput):
            client.gradient(_images(1), np.ones((1, 3)))
        assert time.monotonic() - begin < 2.5  # a retry would have slept >= 2.5 s (5 s cap x 0.5)


def test_a_full_queue_raises_overloaded_and_the_server_goes_on(repository):
    """RESOURCE_EXHAUSTED (the batcher's queue is full) is Overloaded, raised at once, not retried."""
    from serving.server import start

    with start(
        repository, threads=1, poll_interval_s=None, max_queue_size=1, max_queue_delay_ms=500.0
    ) as srv:
        outcomes: list[object] = []

        def call() -> None:
            with TwinClient(srv.address, data_key=KEY, timeout=20.0, retries=3, backoff_s=2.0) as client:
                begin = time.monotonic()
                try:
                    client.predict(_images(1))
                    outcomes.append("ok")
                except Overloaded as exc:
                    outcomes.append((exc, time.monotonic() - begin))

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        refused = [o for o in outcomes if o != "ok"]
        assert len(outcomes) == 8 and "ok" in outcomes and refused
        for exc, seconds in refused:  # type: ignore[misc]
            assert "queue" in str(exc) and seconds < 1.5  # a retry would have slept >= 1 s
        with TwinClient(srv.address, data_key=KEY, timeout=20.0) as client:
            assert client.predict(_images(1))[0].shape == (1, 150)


def test_a_too_small_deadline_is_a_clear_error(server):
    wanted = r"at 127\.0\.0\.1:\d+: no answer within the deadline"
    with (
        TwinClient(server.address, data_key=KEY, timeout=1e-4) as client,
        pytest.raises(DeadlineExceeded, match=wanted),
    ):
        client.predict(_images(64))
    assert issubclass(DeadlineExceeded, TimeoutError)


def test_importing_the_client_pulls_in_no_model_runtime():
    code = (
        "import sys, twin, twin.client\n"
        "twin.TwinClient\n"
        "print([m for m in ('torch', 'onnxruntime', 'onnx', 'serving') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
