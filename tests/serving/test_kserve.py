"""KServe v2 (inference.GRPCInferenceService) on the live server: our own stubs, and the real Triton
client (`tritonclient[grpc]`) from its own virtualenv ($TWIN_TRITONCLIENT_PYTHON, see the Makefile)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest

import twin
from serving.kserve import split_model_name
from serving.server import start
from twin._proto.inference import grpc_predict_v2_pb2 as pb
from twin._proto.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from twin.errors import ModelNotFound

MODEL = "cnn-tiny"
KEY = "90002-1-1"
NAME = f"{MODEL}.{KEY}"


@pytest.fixture(scope="module")
def server(tiny_artifact, tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(tiny_artifact, root / MODEL / "1")
    with start(root, threads=1, poll_interval_s=None) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def local(tiny_artifact):
    return twin.load(tiny_artifact, threads=1).twin(KEY)


def _images(batch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 36, 64)).astype(np.uint8)


def _outputs(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    assert len(reply.raw_output_contents) == len(reply.outputs)
    arrays = {}
    for tensor, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
        assert tensor.datatype == "FP32"
        arrays[tensor.name] = np.frombuffer(raw, "<f4").reshape(tuple(tensor.shape))
    return arrays


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_model_names_split_into_model_and_data_key():
    models = ["cnn", "cnn.v2", "ln"]
    assert split_model_name("cnn.26872-17-20", models) == ("cnn", "26872-17-20")
    assert split_model_name("cnn.v2.26872-17-20", models) == ("cnn.v2", "26872-17-20")
    assert split_model_name("ln", models) == ("ln", "")
    with pytest.raises(ModelNotFound, match=r"^model_name: 'resnet.1-2-3'"):
        split_model_name("resnet.1-2-3", models)


def test_liveness_readiness_and_server_metadata(stub):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    metadata = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert (metadata.name, metadata.version) == ("twin", twin.__version__)
    for name, version, ready in [
        (NAME, "", True),
        (NAME, "1", True),
        (f"{MODEL}.90001-1-1", "", True),
        (NAME, "2", False),  # no such version
        (MODEL, "", False),  # two data keys: the name must pick one
        (f"{MODEL}.1-2-3", "", False),
        ("resnet.1-2-3", "", False),
    ]:
        assert stub.ModelReady(pb.ModelReadyRequest(name=name, version=version)).ready is ready, (
            name,
            version,
        )


def test_model_metadata_describes_inputs_and_outputs(stub, local):
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=NAME))
    assert (metadata.name, list(metadata.versions), metadata.platform) == (NAME, ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("images", "FP32", [-1, 36, 64])
    ]
    n = local.n_neurons
    assert [(t.name, list(t.shape)) for t in metadata.outputs] == [
        ("mean", [-1, n]),
        ("std", [-1, n]),
        ("members", [local.n_members, -1, n]),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="resnet.1-2-3"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_infer_with_raw_contents_matches_the_in_process_twin(stub, local):
    images = _images()
    request = pb.ModelInferRequest(model_name=NAME, id="req-7")
    request.inputs.add(name="images", datatype="FP32", shape=[3, 36, 64])
    request.raw_input_contents.append(images.astype("<f4").tobytes())
    reply = stub.ModelInfer(request)
    assert (reply.model_name, reply.model_version, reply.id) == (NAME, "1", "req-7")
    outputs = _outputs(reply)
    assert list(outputs) == ["mean", "std"]
    mean, std = local.predict(images)
    _close(outputs["mean"], mean)
    _close(outputs["std"], std)

    # UINT8 [B, 1, H, W], outputs chosen and ordered by the request, a version named
    request = pb.ModelInferRequest(model_name=NAME, model_version="1")
    request.inputs.add(name="images", datatype="UINT8", shape=[3, 1, 36, 64])
    request.raw_input_contents.append(images.tobytes())
    for name in ("members", "mean"):
        request.outputs.add(name=name)
    outputs = _outputs(stub.ModelInfer(request))
    assert list(outputs) == ["members", "mean"]
    _close(outputs["members"], local.predict_members(images))
    _close(outputs["mean"], mean)


def test_infer_with_typed_contents_matches_the_in_process_twin(stub, local):
    images = _images(2, seed=4)
    for datatype, field in (("FP32", "fp32_contents"), ("UINT8", "uint_contents")):
        request = pb.ModelInferRequest(model_name=NAME)
        tensor = request.inputs.add(name="images", datatype=datatype, shape=[2, 36, 64])
        getattr(tensor.contents, field).extend(images.ravel().tolist())
        outputs = _outputs(stub.ModelInfer(request))
        _close(outputs["mean"], local.predict(images)[0])


_TRITON_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as triton

    address, name, images_path, out_path = sys.argv[1:]
    client = triton.InferenceServerClient(url=address)
    metadata = client.get_model_metadata(name, as_json=True)
    images = np.load(images_path)
    inputs = [triton.InferInput("images", list(images.shape), "FP32")]
    inputs[0].set_data_from_numpy(images)
    outputs = [triton.InferRequestedOutput("mean"), triton.InferRequestedOutput("std")]
    result = client.infer(name, inputs, outputs=outputs, request_id="triton-1")
    np.savez(out_path, mean=result.as_numpy("mean"), std=result.as_numpy("std"))
    print(json.dumps({
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(name),
        "unknown_ready": client.is_model_ready("resnet.1-2-3"),
        "metadata": metadata,
        "id": result.get_response(as_json=True).get("id"),
    }))
    """
)


def test_the_triton_client_talks_to_the_server(server, local, tmp_path):
    python = os.environ.get("TWIN_TRITONCLIENT_PYTHON")
    if not python:
        pytest.skip(
            "TWIN_TRITONCLIENT_PYTHON is unset: `make tritonclient` builds .venv-tritonclient "
            "(tritonclient needs protobuf<7, so it cannot share .venv); `make test` sets the variable"
        )
    assert Path(python).exists(), f"TWIN_TRITONCLIENT_PYTHON={python} does not exist"
    images = _images(4, seed=11).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "client.py").write_text(_TRITON_SCRIPT)
    result = subprocess.run(
        [
            python,
            str(tmp_path / "client.py"),
            server.address,
            NAME,
            str(tmp_path / "images.npy"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["live"] and report["ready"] and report["model_ready"] and not report["unknown_ready"]
    assert report["metadata"]["name"] == NAME and report["metadata"]["versions"] == ["1"]
    assert [i["name"] for i in report["metadata"]["inputs"]] == ["images"]
    assert report["id"] == "triton-1"
    answers = np.load(tmp_path / "out.npz")
    mean, std = local.predict(images)
    _close(answers["mean"], mean)
    _close(answers["std"], std)
