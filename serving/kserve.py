"""The KServe v2 `inference.GRPCInferenceService` (protos/inference/grpc_predict_v2.proto), Triton-style.

Model naming: one KServe model per (model, data key), named "<model>.<data_key>", e.g.
"cnn-tiny.26872-17-20"; a model with a single data key also answers to plain "<model>". `model_version`
is the repository version as a decimal string; empty means the serving version. So a Triton client
picks a recording by model name alone, with no request parameters.

ModelInfer inputs: `images` (FP32, UINT8, UINT16, FP16 or FP64; [B, H, W] or [B, 1, H, W] in raw pixel
units), `behavior` [B, 3] and `pupil_center` [B, 2] (FP16/FP32/FP64) where the model needs them, in
`raw_input_contents` or typed contents. Outputs: `mean` and `std` [B, N] FP32 by default, or those named
in the request's `outputs` from {mean, std, members}; `members` is [M, B, N]. Outputs travel in
`raw_output_contents` only, which is what tritonclient decodes. Predictions go through the same batcher
as twin.v1 Predict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from grpc import aio

import twin
from serving.repository import READY
from serving.runtime import Runtime, within_deadline
from serving.tensors import FLOAT_DTYPES, IMAGE_DTYPES, from_kserve_inputs, set_kserve_outputs
from twin._proto.inference import grpc_predict_v2_pb2 as pb2
from twin._proto.inference import grpc_predict_v2_pb2_grpc as pb2_grpc
from twin.errors import InvalidInput, ModelNotFound, TwinError

__all__ = ["OUTPUTS", "KServeServicer", "kserve_models", "split_model_name"]

OUTPUTS = ("mean", "std", "members")
_DEFAULT_OUTPUTS = ("mean", "std")
_INPUT_DTYPES = {"images": IMAGE_DTYPES, "behavior": FLOAT_DTYPES, "pupil_center": FLOAT_DTYPES}
_PLATFORM = "onnxruntime_onnx"


def _version(text: str) -> int:
    """A KServe model_version string as a repository version (0: the serving one)."""
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(
            f"model_version: {text!r}; expected a positive integer, or empty for the serving version"
        )
    return int(text)


def split_model_name(name: str, models: list[str]) -> tuple[str, str]:
    """(model, data key) of a KServe model name: "<model>.<data_key>", or "<model>" (data key "")."""
    if name in models:
        return name, ""
    for model in sorted(models, key=len, reverse=True):  # the longest match: names may contain dots
        if name.startswith(model + ".") and len(name) > len(model) + 1:
            return model, name[len(model) + 1 :]
    raise ModelNotFound(
        f"model_name: {name!r} is not served; expected '<model>.<data_key>' with a model in {sorted(models)}"
    )


def kserve_models(runtime: Runtime) -> list[str]:
    """The KServe model names of every serving version: "<model>.<data_key>"."""
    repository = runtime.repository
    return [f"{s.name}.{key}" for s in repository.models() for key in repository.serving_data_keys(s)]


class KServeServicer(pb2_grpc.GRPCInferenceServiceServicer):
    """KServe v2 over the twin runtime: liveness, readiness, metadata and inference."""

    def __init__(self, runtime: Runtime, is_ready: Any = None) -> None:
        """`is_ready()` says whether the server accepts requests (False while shutting down)."""
        self.runtime = runtime
        self._is_ready = is_ready or (lambda: True)

    def _resolve(self, name: str, version: str) -> tuple[str, int, str]:
        models = [status.name for status in self.runtime.repository.models()]
        model, data_key = split_model_name(name, models)
        return model, _version(version), data_key

    async def ServerLive(self, request: pb2.ServerLiveRequest, context: aio.ServicerContext) -> Any:
        return pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb2.ServerReadyRequest, context: aio.ServicerContext) -> Any:
        """Ready when accepting requests and every model in the repository has a serving version."""
        models = self.runtime.repository.models()
        ready = self._is_ready() and bool(models) and all(m.serving_version is not None for m in models)
        return pb2.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request: pb2.ModelReadyRequest, context: aio.ServicerContext) -> Any:
        """Ready when the version (default: the serving one) is loaded and answers for the data key."""
        try:
            model, version, data_key = self._resolve(request.name, request.version)
            lease, _ = self.runtime.acquire(model, version, data_key)
        except TwinError:
            return pb2.ModelReadyResponse(ready=False)
        lease.release()
        return pb2.ModelReadyResponse(ready=self._is_ready())

    async def ServerMetadata(self, request: pb2.ServerMetadataRequest, context: aio.ServicerContext) -> Any:
        return pb2.ServerMetadataResponse(name="twin", version=twin.__version__, extensions=[])

    async def ModelMetadata(self, request: pb2.ModelMetadataRequest, context: aio.ServicerContext) -> Any:
        model, version, data_key = self._resolve(request.name, request.version)
        lease, onnx_twin = self.runtime.acquire(model, version, data_key)
        with lease:
            versions = [
                str(v.version) for v in self.runtime.repository.model(model).versions if v.state == READY
            ]
            height, width = onnx_twin.image_size
            inputs = [
                pb2.ModelMetadataResponse.TensorMetadata(
                    name="images", datatype="FP32", shape=[-1, height, width]
                )
            ]
            for name, width_ in (("behavior", 3), ("pupil_center", 2)):
                if onnx_twin.requires.get(name):
                    inputs.append(
                        pb2.ModelMetadataResponse.TensorMetadata(
                            name=name, datatype="FP32", shape=[-1, width_]
                        )
                    )
            n = onnx_twin.n_neurons
            outputs = [
                pb2.ModelMetadataResponse.TensorMetadata(name="mean", datatype="FP32", shape=[-1, n]),
                pb2.ModelMetadataResponse.TensorMetadata(name="std", datatype="FP32", shape=[-1, n]),
                pb2.ModelMetadataResponse.TensorMetadata(
                    name="members", datatype="FP32", shape=[onnx_twin.n_members, -1, n]
                ),
            ]
            return pb2.ModelMetadataResponse(
                name=request.name, versions=versions, platform=_PLATFORM, inputs=inputs, outputs=outputs
            )

    async def ModelInfer(self, request: pb2.ModelInferRequest, context: aio.ServicerContext) -> Any:
        model, version, data_key = self._resolve(request.model_name, request.model_version)
        wanted = [o.name for o in request.outputs] or list(_DEFAULT_OUTPUTS)
        unknown = [name for name in wanted if name not in OUTPUTS]
        if unknown or len(set(wanted)) != len(wanted):
            raise InvalidInput(f"outputs: {wanted}; expected distinct names from {list(OUTPUTS)}")
        arrays = from_kserve_inputs(request, _INPUT_DTYPES)
        extra = sorted(set(arrays) - set(_INPUT_DTYPES))
        if extra:
            raise InvalidInput(
                f"inputs: {extra} are not inputs of this model; expected {list(_INPUT_DTYPES)}"
            )
        images = arrays.get("images")
        if images is not None and images.ndim not in (3, 4):
            raise InvalidInput(f"images: shape {list(images.shape)}; expected [B, H, W] or [B, 1, H, W]")
        for name, width in (("behavior", 3), ("pupil_center", 2)):
            if name in arrays and arrays[name].ndim != 2:
                raise InvalidInput(f"{name}: shape {list(arrays[name].shape)}; expected [B, {width}]")
        lease, onnx_twin = self.runtime.acquire(model, version, data_key)
        with lease:
            prediction = await within_deadline(
                self.runtime.predict(
                    lease,
                    onnx_twin,
                    images,
                    arrays.get("behavior"),
                    arrays.get("pupil_center"),
                    members="members" in wanted,
                ),
                context,
            )
            response = pb2.ModelInferResponse(
                model_name=request.model_name, model_version=str(lease.version), id=request.id
            )
        values: dict[str, np.ndarray | None] = {
            "mean": prediction.mean,
            "std": prediction.std,
            "members": prediction.members,
        }
        set_kserve_outputs(response, {name: values[name] for name in wanted})
        return response
