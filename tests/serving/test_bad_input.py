"""Every kind of bad request gets a clear status and a message naming the field, and the server keeps
answering valid requests correctly after each one."""

from __future__ import annotations

import re
import shutil
from typing import Any

import grpc
import numpy as np
import pytest

import twin
from serving.server import start
from serving.tensors import from_tensor, to_tensor
from twin._proto.inference import grpc_predict_v2_pb2 as kserve_pb2
from twin._proto.inference import grpc_predict_v2_pb2_grpc as kserve_grpc
from twin._proto.twin.v1 import twin_pb2 as pb
from twin._proto.twin.v1 import twin_pb2_grpc

MODEL, BEHAVIOR = "cnn-tiny", "behavior-tiny"
KEY, OTHER = "90002-1-1", "90001-1-1"
MAX_BATCH = 8
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def server(tiny_artifact, tiny_behavior_artifact, tiny_paths, tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(tiny_artifact, root / MODEL / "1")
    shutil.copytree(tiny_behavior_artifact, root / BEHAVIOR / "1")
    with start(
        root,
        heldout=[tiny_paths[OTHER]],
        threads=1,
        poll_interval_s=None,
        max_batch_size=MAX_BATCH,
        max_message_mb=1,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(
        server.address, options=[("grpc.max_send_message_length", 8 << 20)]
    ) as channel:
        yield channel


@pytest.fixture(scope="module")
def local(tiny_artifact, tiny_behavior_artifact) -> dict[str, Any]:
    return {
        MODEL: twin.load(tiny_artifact, threads=1).twin(KEY),
        BEHAVIOR: twin.load(tiny_behavior_artifact, threads=1).twin(KEY),
    }


# ---------------------------------------------------------------------------------------------------
# Requests

IMAGES = np.random.default_rng(0).integers(0, 256, (2, 36, 64)).astype(np.uint8)
BEHAVIOUR = np.asarray([[0.5, 0.0, 1.0], [1.5, -0.1, 0.0]], np.float32)
PUPIL = np.asarray([[10.0, -3.0], [0.0, 2.0]], np.float32)


def _fields(defaults: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The request's fields: defaults with changes; None drops a field, arrays become Tensors."""
    fields = {**defaults, **changes}
    return {k: to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in fields.items() if v is not None}


def predict(**changes: Any) -> pb.PredictRequest:
    return pb.PredictRequest(**_fields({"model": MODEL, "data_key": KEY, "images": IMAGES}, changes))


def predict_behavior(**changes: Any) -> pb.PredictRequest:
    defaults = {
        "model": BEHAVIOR,
        "data_key": KEY,
        "images": IMAGES,
        "behavior": BEHAVIOUR,
        "pupil_center": PUPIL,
    }
    return pb.PredictRequest(**_fields(defaults, changes))


def gradient(**changes: Any) -> pb.GradientRequest:
    defaults = {"model": MODEL, "data_key": KEY, "images": IMAGES, "weights": np.ones((2, 150), np.float32)}
    return pb.GradientRequest(**_fields(defaults, changes))


def evaluate(**changes: Any) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(**_fields({"model": MODEL, "data_key": OTHER}, changes))


def infer(
    inputs: list[tuple[str, str, list[int], bytes | None]] | None = None,
    name: str = f"{MODEL}.{KEY}",
    version: str = "",
    outputs: tuple[str, ...] = (),
    typed: dict[str, list[float]] | None = None,
) -> kserve_pb2.ModelInferRequest:
    """A ModelInferRequest; an input with bytes goes in raw_input_contents, else in typed `typed`."""
    request = kserve_pb2.ModelInferRequest(model_name=name, model_version=version)
    for input_name, datatype, shape, raw in inputs or [
        ("images", "FP32", [2, 36, 64], IMAGES.astype("<f4").tobytes())
    ]:
        tensor = request.inputs.add(name=input_name, datatype=datatype, shape=shape)
        if raw is not None:
            request.raw_input_contents.append(raw)
        for field, values in (typed or {}).items():
            getattr(tensor.contents, field).extend(values)
    for output in outputs:
        request.outputs.add(name=output)
    return request


def _nan_images() -> np.ndarray:
    images = IMAGES.astype(np.float32)
    images[1, 3, 4] = np.nan
    return images


def _inf_images() -> np.ndarray:
    images = IMAGES.astype(np.float64)
    images[0, 0, 0] = np.inf
    return images


CASES = [
    # images
    pytest.param(
        "Predict",
        lambda: predict(images=np.zeros((2, 40, 64), np.uint8)),
        INVALID,
        r"images: shape",
        id="images-size",
    ),
    pytest.param(
        "Predict",
        lambda: predict(images=np.zeros((36, 64), np.uint8)),
        INVALID,
        r"images: shape \[36, 64\] \(2-D\)",
        id="images-ndim",
    ),
    pytest.param(
        "Predict",
        lambda: predict(images=IMAGES.astype(np.int64)),
        INVALID,
        r"images: dtype DATA_TYPE_INT64; expected one of",
        id="images-dtype",
    ),
    pytest.param(
        "Predict",
        lambda: predict(images=pb.Tensor(shape=[2, 36, 64], data=IMAGES.tobytes())),
        INVALID,
        r"images: dtype DATA_TYPE_UNSPECIFIED",
        id="images-no-dtype",
    ),
    pytest.param(
        "Predict",
        lambda: predict(images=pb.Tensor(shape=[2, 36, 64], dtype=pb.DATA_TYPE_UINT8, data=bytes(100))),
        INVALID,
        r"images: 100 bytes; expected 4608",
        id="images-bytes",
    ),
    pytest.param(
        "Predict",
        lambda: predict(images=_nan_images()),
        INVALID,
        r"images: contains NaN or inf",
        id="images-nan",
    ),
    pytest.param(
        "Gradient",
        lambda: gradient(images=_inf_images()),
        INVALID,
        r"images: contains NaN or inf",
        id="images-inf",
    ),
    pytest.param(
        "Predict",
        lambda: predict(images=np.zeros((0, 36, 64), np.uint8)),
        INVALID,
        r"images: shape \(0, 36, 64\), an empty batch",
        id="images-empty",
    ),
    pytest.param(
        "Predict",
        lambda: predict(images=np.zeros((MAX_BATCH + 1, 36, 64), np.uint8)),
        INVALID,
        rf"images: a batch of {MAX_BATCH + 1}; .* at most {MAX_BATCH}",
        id="images-over-limit",
    ),
    pytest.param("Predict", lambda: predict(images=None), INVALID, r"images: missing", id="images-missing"),
    # behaviour and pupil centre
    pytest.param(
        "Predict",
        lambda: predict_behavior(behavior=None),
        INVALID,
        r"behavior: None; .* needs \(2, 3\)",
        id="behavior-missing",
    ),
    pytest.param(
        "Gradient",
        lambda: gradient(model=BEHAVIOR, behavior=BEHAVIOUR),
        INVALID,
        r"pupil_center: None; .* needs \(2, 2\)",
        id="pupil-missing",
    ),
    pytest.param(
        "Predict",
        lambda: predict_behavior(behavior=np.zeros((3, 3), np.float32)),
        INVALID,
        r"behavior: shape \(3, 3\); expected \(2, 3\)",
        id="behavior-rows",
    ),
    pytest.param(
        "Predict",
        lambda: predict_behavior(pupil_center=np.full((2, 2), np.inf, np.float32)),
        INVALID,
        r"pupil_center: contains NaN or inf",
        id="pupil-inf",
    ),
    pytest.param(
        "Predict",
        lambda: predict_behavior(behavior=BEHAVIOUR.astype(np.uint8)),
        INVALID,
        r"behavior: dtype DATA_TYPE_UINT8",
        id="behavior-dtype",
    ),
    # names: neurons, models, versions, data keys
    pytest.param(
        "Predict",
        lambda: predict(neuron_ids=[1, 10**9]),
        NOT_FOUND,
        r"neuron_ids: 1 ids are not neurons of recording 90002-1-1 \(e.g. \[1000000000\]\)",
        id="neuron-unknown",
    ),
    pytest.param(
        "Predict",
        lambda: predict(model="no-such-model"),
        NOT_FOUND,
        r"model: 'no-such-model' is not in the repository",
        id="model-unknown",
    ),
    pytest.param(
        "GetModelInfo",
        lambda: pb.GetModelInfoRequest(model="no-such-model"),
        NOT_FOUND,
        r"model: 'no-such-model'",
        id="info-model-unknown",
    ),
    pytest.param(
        "Predict",
        lambda: predict(version=7),
        NOT_FOUND,
        r"version: 7 of model 'cnn-tiny' is not loaded",
        id="version-unknown",
    ),
    pytest.param(
        "Predict",
        lambda: predict(version=-1),
        INVALID,
        r"version: -1; expected a positive integer",
        id="version-negative",
    ),
    pytest.param(
        "Predict",
        lambda: predict(data_key="1-2-3"),
        NOT_FOUND,
        r"data_key: '1-2-3'; artifact cnn-tiny holds",
        id="data-key-unknown",
    ),
    pytest.param(
        "Predict",
        lambda: predict(data_key=""),
        INVALID,
        r"data_key: None; artifact cnn-tiny holds .*pick one",
        id="data-key-missing",
    ),
    # gradient weights
    pytest.param(
        "Gradient",
        lambda: gradient(weights=np.ones((2, 149), np.float32)),
        INVALID,
        r"weights: shape \(2, 149\); expected \(2, 150\)",
        id="weights-width",
    ),
    pytest.param(
        "Gradient",
        lambda: gradient(neuron_ids=[1, 2, 3]),
        INVALID,
        r"weights: shape \(2, 150\); expected \(2, 3\), one per image and the neuron_ids",
        id="weights-subset-width",
    ),
    pytest.param(
        "Gradient",
        lambda: gradient(weights=np.ones(150, np.float32)),
        INVALID,
        r"weights: shape \[150\] \(1-D\); expected 2-D",
        id="weights-ndim",
    ),
    pytest.param(
        "Gradient",
        lambda: gradient(weights=None),
        INVALID,
        r"weights: missing; expected \(2, 150\)",
        id="weights-missing",
    ),
    pytest.param(
        "Gradient",
        lambda: gradient(weights=np.full((2, 150), np.nan)),
        INVALID,
        r"weights: contains NaN or inf",
        id="weights-nan",
    ),
    pytest.param(
        "Gradient",
        lambda: gradient(weights=np.ones((2, 2)), neuron_ids=[1, -5]),
        NOT_FOUND,
        r"neuron_ids: 1 ids are not neurons",
        id="weights-neuron-unknown",
    ),
    # evaluation
    pytest.param(
        "Evaluate",
        lambda: evaluate(tier="nonsense"),
        INVALID,
        r"tier: 'nonsense' is not a tier",
        id="evaluate-tier",
    ),
    pytest.param(
        "Evaluate",
        lambda: evaluate(data_key=KEY),
        NOT_FOUND,
        r"data_key: '90002-1-1' has no held-out data",
        id="evaluate-no-held-out",
    ),
    # a stream ends with the status of its first bad request
    pytest.param(
        "PredictStream",
        lambda: [predict(), predict(images=np.zeros((2, 36, 65), np.uint8))],
        INVALID,
        r"images: shape",
        id="stream-images",
    ),
    # KServe v2
    pytest.param(
        "ModelInfer",
        lambda: infer(name="no-such-model.1-2-3"),
        NOT_FOUND,
        r"model_name: 'no-such-model.1-2-3' is not served",
        id="kserve-model",
    ),
    pytest.param(
        "ModelInfer",
        lambda: infer(version="latest"),
        INVALID,
        r"model_version: 'latest'; expected a positive integer",
        id="kserve-version",
    ),
    pytest.param(
        "ModelInfer",
        lambda: infer(name=f"{MODEL}.1-2-3"),
        NOT_FOUND,
        r"data_key: '1-2-3'",
        id="kserve-data-key",
    ),
    pytest.param(
        "ModelInfer",
        lambda: infer(inputs=[("pixels", "FP32", [1, 36, 64], bytes(4 * 36 * 64))]),
        INVALID,
        r"inputs: \['pixels'\] are not inputs",
        id="kserve-input-name",
    ),
    pytest.param(
        "ModelInfer",
        lambda: infer(outputs=("mean", "spikes")),
        INVALID,
        r"outputs: \['mean', 'spikes'\]; expected distinct names",
        id="kserve-output-name",
    ),
    pytest.param(
        "ModelInfer",
        lambda: infer(inputs=[("images", "FP32", [2, 36, 64], bytes(10))]),
        INVALID,
        r"raw_input_contents\[0\] \(images\): 10 bytes; expected 18432",
        id="kserve-raw-bytes",
    ),
    pytest.param(
        "ModelInfer",
        lambda: infer(inputs=[("images", "FP32", [2, 36, 64], None)], typed={"fp32_contents": [1.0] * 5}),
        INVALID,
        r"inputs\[0\] \(images\): 5 values in contents.fp32_contents; expected 4608",
        id="kserve-typed-count",
    ),
    pytest.param(
        "ModelInfer",
        lambda: infer(inputs=[("images", "BOOL", [2, 36, 64], bytes(4608))]),
        INVALID,
        r"inputs\[0\] \(images\): datatype 'BOOL'; expected one of",
        id="kserve-datatype",
    ),
    pytest.param(
        "ModelInfer",
        lambda: infer(inputs=[("images", "FP32", [4608], IMAGES.astype("<f4").tobytes())]),
        INVALID,
        r"images: shape \[4608\]; expected \[B, H, W\]",
        id="kserve-images-ndim",
    ),
    # bigger than max_message_mb: refused by gRPC itself, before any decoding
    pytest.param(
        "Predict",
        lambda: predict(images=np.zeros((MAX_BATCH, 150, 150))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        r".*larger than max",
        id="oversize-message",
    ),
]


def _call(channel: grpc.Channel, rpc: str, request: Any) -> Any:
    if rpc == "ModelInfer":
        return kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    stub = twin_pb2_grpc.TwinStub(channel)
    if rpc == "PredictStream":
        return list(stub.PredictStream(iter(request), timeout=30))
    return getattr(stub, rpc)(request, timeout=30)


def _still_right(channel: grpc.Channel, local: dict[str, Any]) -> None:
    """Valid requests to both models answer what the in-process twins answer."""
    stub = twin_pb2_grpc.TwinStub(channel)
    for reply, expected in (
        (stub.Predict(predict(), timeout=30), local[MODEL].predict(IMAGES)),
        (stub.Predict(predict_behavior(), timeout=30), local[BEHAVIOR].predict(IMAGES, BEHAVIOUR, PUPIL)),
    ):
        np.testing.assert_allclose(from_tensor(reply.mean, "mean"), expected[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(from_tensor(reply.std, "std"), expected[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("rpc", "request_factory", "code", "message"), CASES)
def test_bad_input_gets_a_clear_status_and_the_server_keeps_serving(
    channel, local, rpc, request_factory, code, message
):
    with pytest.raises(grpc.RpcError) as caught:
        _call(channel, rpc, request_factory())
    assert caught.value.code() == code, caught.value.details()
    assert re.match(message, caught.value.details() or ""), caught.value.details()
    _still_right(channel, local)
