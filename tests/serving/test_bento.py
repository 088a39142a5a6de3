"""The BentoML HTTP service, run for real with `bentoml serve` on a free loopback port.

One server per module (started as `twin serve --http-port` starts it, through `http_command`) over a
repository holding the tiny CNN as `cnn-tiny/1`, with the tiny simulation's held-out data; answers are
compared with the same artifact run in process. The last test adds a version and stops the server.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.bento_service import NPY_MEDIA_TYPE, http_command
from serving.heldout import HeldOutData
from twin.artifact import OnnxTwin, load
from twin.errors import FormatError, InvalidInput

MODEL = "cnn-tiny"
START_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    repository: Path
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A server in its own process group, so that every process it starts can be found and ended."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"server exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready after {START_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-4000:]}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, wait; returns the exit status. Kills the whole group if it did not end in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        raise


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _group_alive(pgid)


@pytest.fixture(scope="module")
def server(tiny_artifact: Path, tiny_sim: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("bento")
    repository = root / "repository"
    shutil.copytree(tiny_artifact, repository / MODEL / "1")
    port = _free_port()
    argv, env = http_command(repository, port=port, heldout=[tiny_sim], poll_interval_s=0.3)
    log = root / "server.log"
    process = _start(argv, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield Server(url, repository, process, log)
    finally:
        if process.poll() is None:
            _stop(process)
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(env["BENTOML_HOME"], ignore_errors=True)


@pytest.fixture(scope="module")
def artifact(tiny_artifact: Path) -> Any:
    return load(tiny_artifact)


@pytest.fixture(scope="module")
def data_keys(artifact: Any) -> list[str]:
    return list(artifact.data_keys)


def _post(url: str, body: dict[str, Any], timeout: float = 60.0) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _multipart(fields: dict[str, str | bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body: bytes values as .npy file uploads, strings as form fields."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = (
                f'Content-Disposition: form-data; name="{name}"; filename="{name}.npy"\r\n'
                f"Content-Type: {NPY_MEDIA_TYPE}"
            )
            data = value
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"', value.encode()
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _npy_bytes(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


def _post_npy(url: str, fields: dict[str, str | bytes]) -> tuple[int, dict[str, str], bytes]:
    body, content_type = _multipart(fields)
    request = urllib.request.Request(url, body, {"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _images(twin: OnnxTwin, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, *twin.image_size)).astype(np.float32)


def _close(actual: Any, expected: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Models and health


def test_health_and_models(server: Server, artifact: Any, data_keys: list[str]) -> None:
    for probe in ("livez", "readyz"):
        with urllib.request.urlopen(f"{server.url}/{probe}", timeout=5) as response:
            assert response.status == 200
    status, body = _post(f"{server.url}/models", {})
    assert status == 200
    (entry,) = body["models"]
    assert entry["name"] == MODEL and entry["serving_version"] == 1
    assert entry["data_keys"] == data_keys
    assert entry["versions"] == [{"version": 1, "state": "ready", "serving": True, "error": None}]
    status, info = _post(f"{server.url}/model_info", {"model": MODEL})
    assert status == 200 and info["version"] == 1
    for key in data_keys:
        assert info["data_keys"][key]["neuron_ids"] == artifact.twin(key).neuron_ids.tolist()


# ---------------------------------------------------------------------------------------------------
# Predict, gradient, npy


def test_predict_equals_in_process(server: Server, artifact: Any, data_keys: list[str]) -> None:
    for i, key in enumerate(data_keys):
        twin = artifact.twin(key)
        images = _images(twin, 3, seed=i)
        status, body = _post(
            f"{server.url}/predict",
            {"model": MODEL, "data_key": key, "images": images.tolist(), "return_members": True},
        )
        assert status == 200, body
        mean, std = twin.predict(images)
        _close(body["mean"], mean)
        _close(body["std"], std)
        _close(body["members"], twin.predict_members(images))
        assert body["neuron_ids"] == twin.neuron_ids.tolist()
        assert (body["model"], body["version"], body["data_key"]) == (MODEL, 1, key)


def test_predict_neuron_subset_and_image_layouts(server: Server, artifact: Any, data_keys: list[str]) -> None:
    twin = artifact.twin(data_keys[0])
    images = _images(twin, 2, seed=5)
    ids = twin.neuron_ids[[7, 0, 3]].tolist()
    status, body = _post(
        f"{server.url}/predict",
        {"model": MODEL, "version": 1, "data_key": twin.data_key, "images": images[:, None].tolist(),
         "neuron_ids": ids},
    )  # fmt: skip
    assert status == 200, body
    mean, std = twin.predict(images, neurons=ids)
    _close(body["mean"], mean)
    _close(body["std"], std)
    assert body["neuron_ids"] == ids


def test_gradient_equals_in_process(server: Server, artifact: Any, data_keys: list[str]) -> None:
    twin = artifact.twin(data_keys[1])
    images = _images(twin, 2, seed=7)
    weights = np.random.default_rng(8).normal(size=(2, twin.n_neurons)).astype(np.float32)
    status, body = _post(
        f"{server.url}/gradient",
        {"model": MODEL, "data_key": twin.data_key, "images": images.tolist(), "weights": weights.tolist()},
    )
    assert status == 200, body
    expected = twin.gradient(images, weights)
    np.testing.assert_allclose(
        np.asarray(body["gradient"]), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max()
    )
    # Weights over a few neurons (neuron_ids) equal those neurons' columns of all-neuron weights.
    columns = [4, 1]
    full = np.zeros_like(weights)
    full[:, columns] = weights[:, :2]
    status, body = _post(
        f"{server.url}/gradient",
        {"model": MODEL, "data_key": twin.data_key, "images": images.tolist(),
         "weights": weights[:, :2].tolist(), "neuron_ids": twin.neuron_ids[columns].tolist()},
    )  # fmt: skip
    assert status == 200, body
    expected = twin.gradient(images, full)
    np.testing.assert_allclose(
        np.asarray(body["gradient"]), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max()
    )


def test_npy_equals_json(server: Server, artifact: Any, data_keys: list[str]) -> None:
    twin = artifact.twin(data_keys[0])
    images = _images(twin, 4, seed=11).round()
    status, headers, content = _post_npy(
        f"{server.url}/predict_npy",
        {"images": _npy_bytes(images.astype(np.uint8)), "model": MODEL, "data_key": twin.data_key},
    )
    assert status == 200, content[:500]
    assert headers["content-type"] == NPY_MEDIA_TYPE
    assert (headers["x-twin-model"], headers["x-twin-version"], headers["x-twin-data-key"]) == (
        MODEL,
        "1",
        twin.data_key,
    )
    mean = np.load(io.BytesIO(content), allow_pickle=False)
    assert mean.dtype == np.float32 and mean.shape == (4, twin.n_neurons)
    status, body = _post(
        f"{server.url}/predict", {"model": MODEL, "data_key": twin.data_key, "images": images.tolist()}
    )
    assert status == 200
    np.testing.assert_array_equal(mean, np.asarray(body["mean"], np.float32))
    _close(mean, twin.predict(images)[0])


# ---------------------------------------------------------------------------------------------------
# Evaluate


def _equal_scores(actual: Any, expected: Any) -> None:
    expected = np.asarray(expected, dtype=float)
    actual = np.asarray([math.nan if v is None else v for v in np.atleast_1d(actual)], dtype=float)
    np.testing.assert_allclose(actual, np.atleast_1d(expected), rtol=1e-6, atol=1e-9, equal_nan=True)


def test_evaluate_equals_in_process_and_returns_scores_only(
    server: Server, artifact: Any, data_keys: list[str], tiny_sim: Path
) -> None:
    key = data_keys[0]
    twin = artifact.twin(key)
    status, body = _post(
        f"{server.url}/evaluate", {"model": MODEL, "data_key": key, "tier": "test", "per_neuron": True}
    )
    assert status == 200, body
    expected = HeldOutData.load(tiny_sim).evaluate(
        key, lambda x, b, p: twin.predict(x, b, p)[0], "test", True, neuron_ids=twin.neuron_ids
    )
    metrics = ("single_trial_correlation", "correlation_to_average", "feve")
    extra = ("fev_fraction_above_threshold", "oracle_correlation")
    counts = ("n_neurons", "n_trials", "n_images")
    identity = ("model", "version", "data_key", "tier")
    assert set(body) == {*identity, *metrics, *extra, *counts, "per_neuron"}
    for name in (*metrics, *extra):
        _equal_scores(body[name], expected[name])
    for name in counts:
        assert body[name] == expected[name]
    detail = body["per_neuron"]
    assert set(detail) == {"neuron_ids", *metrics}
    assert detail["neuron_ids"] == twin.neuron_ids.tolist()
    for name in metrics:
        assert len(detail[name]) == twin.n_neurons  # one score per neuron, no per-trial values
        _equal_scores(detail[name], expected["per_neuron"][name])
    status, body = _post(f"{server.url}/evaluate", {"model": MODEL, "data_key": key})  # default tier
    assert status == 200 and body["tier"] == "test"
    _equal_scores(body["single_trial_correlation"], expected["single_trial_correlation"])
    assert "per_neuron" not in body


# ---------------------------------------------------------------------------------------------------
# Load, errors, metrics


def test_concurrent_requests_are_all_correct(server: Server, artifact: Any, data_keys: list[str]) -> None:
    results: dict[int, tuple[int, Any]] = {}
    requests = []
    for i in range(16):
        twin = artifact.twin(data_keys[i % 2])
        requests.append((twin, _images(twin, 1 + i % 3, seed=100 + i)))

    def call(i: int) -> None:
        twin, images = requests[i]
        results[i] = _post(
            f"{server.url}/predict", {"model": MODEL, "data_key": twin.data_key, "images": images.tolist()}
        )

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == list(range(len(requests)))
    for i, (twin, images) in enumerate(requests):
        status, body = results[i]
        assert status == 200, body
        assert body["data_key"] == twin.data_key
        _close(body["mean"], twin.predict(images)[0])


def _bad_requests(
    key: str, shape: tuple[int, int], n_neurons: int
) -> list[tuple[str, str, dict[str, Any], int, str]]:
    good = np.full((1, *shape), 100.0).tolist()
    nan = np.full((1, *shape), 100.0)
    nan[0, 0, 0] = np.nan
    base = {"model": MODEL, "data_key": key}
    return [
        ("wrong image shape", "predict", {**base, "images": [[[1.0] * 5] * 4]}, 400, "images"),
        ("NaN pixel", "predict", {**base, "images": nan.tolist()}, 400, "images"),
        ("ragged images", "predict", {**base, "images": [[[1.0, 2.0], [3.0]]]}, 400, "images"),
        ("no images", "predict", base, 400, "images"),
        ("too many images", "predict", {**base, "images": np.zeros((33, *shape)).tolist()}, 400, "images"),
        ("unknown model", "predict", {**base, "model": "nope", "images": good}, 404, "model"),
        ("unknown version", "predict", {**base, "version": 9, "images": good}, 404, "version"),
        ("unknown data key", "predict", {**base, "data_key": "0-0-0", "images": good}, 404, "data_key"),
        ("unknown neuron", "predict", {**base, "images": good, "neuron_ids": [-5]}, 404, "neuron_ids"),
        ("bad behavior", "predict", {**base, "images": good, "behavior": [[1.0, 2.0]]}, 400, "behavior"),
        ("weight width", "gradient", {**base, "images": good, "weights": [[1.0] * (n_neurons - 1)]}, 400,
         "weights"),
        ("NaN weight", "gradient", {**base, "images": good, "weights": [[math.nan] * n_neurons]}, 400,
         "weights"),
        ("unknown tier", "evaluate", {**base, "tier": "training"}, 400, "tier"),
        ("evaluate unknown data key", "evaluate", {**base, "data_key": "0-0-0"}, 404, "data_key"),
    ]  # fmt: skip


def test_bad_requests_name_the_field_and_the_server_keeps_serving(
    server: Server, artifact: Any, data_keys: list[str]
) -> None:
    twin = artifact.twin(data_keys[0])
    failures = []
    for name, endpoint, body, expected_status, field in _bad_requests(
        twin.data_key, twin.image_size, twin.n_neurons
    ):
        status, answer = _post(f"{server.url}/{endpoint}", body)
        if status != expected_status or answer.get("field") != field or field not in answer.get("error", ""):
            failures.append((name, status, answer))
    assert not failures, failures
    # Bodies that do not fit the schema get BentoML's own 400, naming the field in detail[].loc.
    for body, field in (({"images": [[[1.0]]]}, "model"), ({"model": MODEL, "version": "x"}, "version")):
        status, answer = _post(f"{server.url}/predict", body)
        assert status == 400 and [field] in [d["loc"] for d in answer["detail"]], answer
    status, _, content = _post_npy(
        f"{server.url}/predict_npy", {"images": b"not an npy file", "model": MODEL, "data_key": twin.data_key}
    )
    assert status == 400 and json.loads(content)["field"] == "images"
    images = _images(twin, 2, seed=3)
    status, body = _post(
        f"{server.url}/predict", {"model": MODEL, "data_key": twin.data_key, "images": images.tolist()}
    )
    assert status == 200
    _close(body["mean"], twin.predict(images)[0])


def test_metrics_count_requests(server: Server) -> None:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()

    def total(name: str, **labels: str) -> float:
        found = 0.0
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                found += float(line.rsplit(" ", 1)[1])
        return found

    families = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(families) == len(set(families)), "a metric family appears twice"
    assert {"twin_batch_rows", "twin_queue_time_seconds", "twin_model_load_events_total"} <= set(families)
    request_total = "bentoml_service_request_total"
    assert total(request_total, endpoint="/predict", http_response_code="200") >= 16
    assert total(request_total, endpoint="/predict", http_response_code="400") >= 1
    assert total(request_total, endpoint="/evaluate", http_response_code="200") >= 1
    assert total("twin_batch_rows_count") >= 1
    assert total("twin_model_load_events_total", model=MODEL, outcome="loaded") >= 1


# ---------------------------------------------------------------------------------------------------
# In process: settings, readiness, evaluation without held-out data


def test_settings_and_command(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    argv, env = http_command(tmp_path, port=8080, host="0.0.0.0", heldout=[tmp_path / "a", tmp_path / "b"])
    assert argv[:5] == [sys.executable, "-m", "bentoml", "serve", "serving.bento_service:TwinHTTP"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "8080"
    assert env["TWIN_REPOSITORY"] == str(tmp_path.resolve())
    assert env["TWIN_HELDOUT"].split(os.pathsep) == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert env["BENTOML_DO_NOT_TRACK"] == "True" and Path(env["BENTOML_HOME"]).is_dir()
    other = http_command(tmp_path, port=8080)[1]["BENTOML_HOME"]
    assert other != env["BENTOML_HOME"]  # one per server
    for home in (other, env["BENTOML_HOME"]):
        shutil.rmtree(home)
    with pytest.raises(InvalidInput, match="port"):
        http_command(tmp_path, port=0)
    with pytest.raises(FormatError, match="repository"):
        http_command(tmp_path / "missing", port=8080)
    with pytest.raises(FormatError, match="heldout"):
        http_command(tmp_path, port=8080, heldout=[tmp_path / "missing"])


def test_service_in_process(tmp_path: Path, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readiness follows the repository; evaluate without held-out data is a 404 naming the data key."""
    from serving.bento_service import HttpSettings, TwinHTTP

    monkeypatch.delenv("TWIN_REPOSITORY", raising=False)
    with pytest.raises(InvalidInput, match="TWIN_REPOSITORY"):
        HttpSettings.from_env()
    monkeypatch.setenv("TWIN_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("TWIN_POLL_INTERVAL", "-1")
    with pytest.raises(InvalidInput, match="TWIN_POLL_INTERVAL"):
        HttpSettings.from_env()
    monkeypatch.setenv("TWIN_POLL_INTERVAL", "0")
    monkeypatch.setenv("TWIN_HELDOUT", "")
    service = TwinHTTP.inner()
    data_key = load(tiny_artifact).data_keys[0]
    images = np.zeros((1, *load(tiny_artifact).twin(data_key).image_size)).tolist()

    async def scenario() -> list[Any]:  # one event loop, as in the server
        try:
            assert not service.__is_ready__()  # nothing to serve yet
            shutil.copytree(tiny_artifact, tmp_path / MODEL / "1")
            service.repository.reload()
            assert service.__is_ready__()
            answers = [await service.evaluate(model=MODEL, data_key=data_key)]
            # A version that failed to load is known but not ready: 503; version 1 keeps serving.
            (tmp_path / MODEL / "2").mkdir()
            (tmp_path / MODEL / "2" / "manifest.json").write_text("{")
            service.repository.reload()
            answers.append(await service.predict(model=MODEL, version=2, data_key=data_key, images=images))
            answers.append(await service.predict(model=MODEL, data_key=data_key, images=images))
            return answers
        finally:
            await service._shutdown()

    evaluated, failed, predicted = asyncio.run(scenario())
    assert evaluated.status_code == 404
    answer = json.loads(evaluated.body)
    assert answer["field"] == "data_key" and data_key in answer["error"]
    assert failed.status_code == 503 and json.loads(failed.body)["type"] == "ModelNotReady"
    assert predicted.status_code == 200 and json.loads(predicted.body)["version"] == 1


def test_serving_does_not_import_torch() -> None:
    code = "import sys, serving.bento_service; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr or "serving.bento_service imported torch"


# ---------------------------------------------------------------------------------------------------
# Hot reload and shutdown (last: they change and stop the module's server)


def test_new_version_is_served_after_polling(server: Server, artifact: Any, data_keys: list[str]) -> None:
    staging = server.repository / MODEL / ".2.tmp"
    shutil.copytree(server.repository / MODEL / "1", staging)
    staging.rename(server.repository / MODEL / "2")
    deadline = time.monotonic() + 30
    serving = None
    while time.monotonic() < deadline:
        status, body = _post(f"{server.url}/models", {})
        serving = body["models"][0]["serving_version"]
        if serving == 2:
            break
        time.sleep(0.2)
    assert serving == 2, server.tail()
    twin = artifact.twin(data_keys[0])
    images = _images(twin, 2, seed=21)
    for version, expected in ((None, 2), (1, 1)):
        status, body = _post(
            f"{server.url}/predict",
            {"model": MODEL, "version": version, "data_key": twin.data_key, "images": images.tolist()},
        )
        assert status == 200 and body["version"] == expected
        _close(body["mean"], twin.predict(images)[0])


def test_sigterm_stops_the_server_and_its_workers(server: Server) -> None:
    assert _stop(server.process) == 0, server.tail()
    assert _wait_group_gone(server.process.pid), "a bentoml process outlived the server"


def test_twin_serve_with_http(tiny_artifact: Path, tmp_path: Path) -> None:
    """`twin serve --http-port` runs the gRPC and the HTTP server; SIGTERM ends both cleanly."""
    repository = tmp_path / "repository"
    shutil.copytree(tiny_artifact, repository / MODEL / "1")
    port = _free_port()
    twin_command = str(Path(sys.executable).with_name("twin"))
    argv = [twin_command, "serve", "--repository", str(repository), "--grpc-port", "0"]
    argv += ["--http-port", str(port)]
    log = tmp_path / "serve.log"
    # TMPDIR: the HTTP server's BENTOML_HOME lands in this test's folder.
    process = _start(argv, {"BENTOML_DO_NOT_TRACK": "True", "TMPDIR": str(tmp_path)}, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        twin = load(tiny_artifact).twin(load(tiny_artifact).data_keys[0])
        images = _images(twin, 2, seed=31)
        status, body = _post(
            f"{url}/predict", {"model": MODEL, "data_key": twin.data_key, "images": images.tolist()}
        )
        assert status == 200, body
        _close(body["mean"], twin.predict(images)[0])
        assert _stop(process) == 0, log.read_text(errors="replace")[-4000:]
        assert _wait_group_gone(process.pid), "a server process outlived `twin serve`"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
