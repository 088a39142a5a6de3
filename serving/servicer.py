"""The twin.v1 `Twin` service (protos/twin/v1/twin.proto) over a model repository.

Handlers raise `twin.errors` exceptions; `serving.status.ErrorInterceptor` turns them into status codes.
Predict, PredictStream and Gradient go through the shared `Runtime` (leases, checks, dynamic batching);
Evaluate scores a model on held-out data the server keeps and returns scores, never responses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from grpc import aio

from serving.repository import FAILED, LOADING, READY, UNLOADING, ModelRepository, ModelStatus, VersionStatus
from serving.runtime import Runtime, within_deadline
from serving.tensors import FLOAT_DTYPES, IMAGE_DTYPES, optional_tensor, to_tensor
from twin._proto.twin.v1 import twin_pb2, twin_pb2_grpc

__all__ = ["TwinServicer", "version_status"]

_STATES = {
    LOADING: twin_pb2.VERSION_STATE_LOADING,
    READY: twin_pb2.VERSION_STATE_READY,
    FAILED: twin_pb2.VERSION_STATE_FAILED,
    UNLOADING: twin_pb2.VERSION_STATE_UNLOADING,
}
_DEFAULT_TIER = "test"


def version_status(status: VersionStatus) -> twin_pb2.VersionStatus:
    """A repository VersionStatus as its twin.v1 message."""
    return twin_pb2.VersionStatus(
        model=status.model,
        version=status.version,
        state=_STATES.get(status.state, twin_pb2.VERSION_STATE_UNSPECIFIED),
        error=status.error or "",
        serving=status.serving,
    )


def _dtype_codes(dtypes: tuple[np.dtype, ...]) -> list[str]:
    return [f"DATA_TYPE_{d.name.upper()}" for d in dtypes]


def _metrics(manifest: dict[str, Any], entry: dict[str, Any]) -> list[twin_pb2.Metric]:
    """Scores recorded at export: the ensemble's test scores of this recording, its validation score."""
    found: list[twin_pb2.Metric] = []
    test = entry.get("test_metrics") or {}
    ensemble = test.get("ensemble", test) if isinstance(test, dict) else {}
    for name, value in ensemble.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and not name.startswith("n_"):
            found.append(twin_pb2.Metric(tier="test", name=name, value=float(value)))
    validation = (manifest.get("validation_metrics") or {}).get("validation_correlation")
    value = validation.get("ensemble") if isinstance(validation, dict) else validation
    if isinstance(value, int | float) and not isinstance(value, bool):
        found.append(twin_pb2.Metric(tier="validation", name="single_trial_correlation", value=float(value)))
    return found


def _data_key_info(manifest: dict[str, Any], data_key: str) -> twin_pb2.DataKeyInfo:
    entry = manifest["recordings"][data_key]
    height, width = (int(s) for s in entry["image_size"])
    rec_height, rec_width = (int(s) for s in entry["recording_image_size"])
    requires = {k: bool(v) for k, v in entry["requires"].items()}
    ignored = " (this model ignores it)"
    inputs = [
        twin_pb2.InputSpec(
            name="images",
            shape=[-1, height, width],
            dtypes=_dtype_codes(IMAGE_DTYPES),
            description=(
                f"raw pixel units (e.g. 0-255 grayscale); (B, H, W) or (B, 1, H, W) at the model's "
                f"{height}x{width} or the recording's {rec_height}x{rec_width}"
            ),
            required=True,
        ),
        twin_pb2.InputSpec(
            name="behavior",
            shape=[-1, 3],
            dtypes=_dtype_codes(FLOAT_DTYPES),
            description="pupil dilation, its derivative, running speed; raw units"
            + ("" if requires.get("behavior") else ignored),
            required=requires.get("behavior", False),
        ),
        twin_pb2.InputSpec(
            name="pupil_center",
            shape=[-1, 2],
            dtypes=_dtype_codes(FLOAT_DTYPES),
            description="horizontal and vertical eye position; raw units"
            + ("" if requires.get("pupil_center") else ignored),
            required=requires.get("pupil_center", False),
        ),
    ]
    coordinates = np.asarray(entry.get("cortical_coordinates", []), np.float32).reshape(-1)
    return twin_pb2.DataKeyInfo(
        data_key=data_key,
        neuron_ids=[int(n) for n in entry["neuron_ids"]],
        cortical_coordinates=coordinates.tolist(),
        inputs=inputs,
        requires_behavior=requires.get("behavior", False),
        requires_pupil_center=requires.get("pupil_center", False),
        metrics=_metrics(manifest, entry),
        n_members=len(manifest.get("members", [])),
    )


class TwinServicer(twin_pb2_grpc.TwinServicer):
    """twin.v1.Twin: models, predictions, gradients, held-out evaluation and reloads."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def repository(self) -> ModelRepository:
        return self.runtime.repository

    # ----- models -----

    def _summary(self, status: ModelStatus) -> twin_pb2.ModelSummary:
        return twin_pb2.ModelSummary(
            name=status.name,
            serving_version=status.serving_version or 0,
            versions=[version_status(v) for v in status.versions],
            data_keys=self.repository.serving_data_keys(status),
        )

    def summaries(self) -> list[twin_pb2.ModelSummary]:
        """Every model in the repository, by name."""
        return [self._summary(status) for status in self.repository.models()]

    async def ListModels(
        self, request: twin_pb2.ListModelsRequest, context: aio.ServicerContext
    ) -> twin_pb2.ListModelsResponse:
        return twin_pb2.ListModelsResponse(models=self.summaries())

    async def GetModelInfo(
        self, request: twin_pb2.GetModelInfoRequest, context: aio.ServicerContext
    ) -> twin_pb2.GetModelInfoResponse:
        with self.repository.acquire(request.model, request.version or None) as lease:
            manifest = lease.artifact.manifest
            versions = self.repository.model(request.model).versions
            return twin_pb2.GetModelInfoResponse(
                model=lease.model,
                version=lease.version,
                versions=[version_status(v) for v in versions],
                data_keys=[_data_key_info(manifest, key) for key in manifest["data_keys"]],
                package_version=str(manifest.get("package_version", "")),
                manifest_json=json.dumps(manifest),
            )

    # ----- predictions and gradients -----

    async def _predict(
        self, request: twin_pb2.PredictRequest, context: aio.ServicerContext
    ) -> twin_pb2.PredictResponse:
        lease, twin = self.runtime.acquire(request.model, request.version, request.data_key)
        with lease:
            prediction = await within_deadline(
                self.runtime.predict(
                    lease,
                    twin,
                    optional_tensor(request, "images", dtypes=IMAGE_DTYPES, ndim=(3, 4)),
                    optional_tensor(request, "behavior", dtypes=FLOAT_DTYPES, ndim=2),
                    optional_tensor(request, "pupil_center", dtypes=FLOAT_DTYPES, ndim=2),
                    neuron_ids=request.neuron_ids,
                    members=request.return_members,
                ),
                context,
            )
            response = twin_pb2.PredictResponse(
                model=lease.model,
                version=lease.version,
                data_key=twin.data_key,
                mean=to_tensor(prediction.mean, "mean"),
                std=to_tensor(prediction.std, "std"),
                neuron_ids=prediction.neuron_ids.tolist(),
                request_id=request.request_id,
            )
            if prediction.members is not None:
                response.members.CopyFrom(to_tensor(prediction.members, "members"))
            return response

    async def Predict(
        self, request: twin_pb2.PredictRequest, context: aio.ServicerContext
    ) -> twin_pb2.PredictResponse:
        return await self._predict(request, context)

    async def PredictStream(
        self, request_iterator: AsyncIterator[twin_pb2.PredictRequest], context: aio.ServicerContext
    ) -> AsyncIterator[twin_pb2.PredictResponse]:
        async for request in request_iterator:
            yield await self._predict(request, context)

    async def Gradient(
        self, request: twin_pb2.GradientRequest, context: aio.ServicerContext
    ) -> twin_pb2.GradientResponse:
        lease, twin = self.runtime.acquire(request.model, request.version, request.data_key)
        with lease:
            result = await within_deadline(
                self.runtime.gradient(
                    lease,
                    twin,
                    optional_tensor(request, "images", dtypes=IMAGE_DTYPES, ndim=(3, 4)),
                    optional_tensor(request, "weights", dtypes=FLOAT_DTYPES, ndim=2),
                    optional_tensor(request, "behavior", dtypes=FLOAT_DTYPES, ndim=2),
                    optional_tensor(request, "pupil_center", dtypes=FLOAT_DTYPES, ndim=2),
                    neuron_ids=request.neuron_ids,
                ),
                context,
            )
            return twin_pb2.GradientResponse(
                model=lease.model,
                version=lease.version,
                data_key=twin.data_key,
                gradient=to_tensor(result.gradient, "gradient"),
                request_id=request.request_id,
            )

    # ----- evaluation -----

    async def Evaluate(
        self, request: twin_pb2.EvaluateRequest, context: aio.ServicerContext
    ) -> twin_pb2.EvaluateResponse:
        lease, twin = self.runtime.acquire(request.model, request.version, request.data_key)
        tier = request.tier or _DEFAULT_TIER
        with lease:
            scores = await within_deadline(self.runtime.evaluate(twin, tier, request.per_neuron), context)
        response = twin_pb2.EvaluateResponse(
            model=lease.model,
            version=lease.version,
            data_key=twin.data_key,
            tier=tier,
            single_trial_correlation=scores["single_trial_correlation"],
            correlation_to_average=scores["correlation_to_average"],
            n_trials=int(scores["n_trials"]),
            n_neurons=int(scores["n_neurons"]),
            n_images=int(scores["n_images"]),
        )
        for name in ("feve", "fev_fraction_above_threshold", "oracle_correlation"):
            if scores.get(name) is not None:
                setattr(response, name, float(scores[name]))
        if request.per_neuron:
            detail = scores["per_neuron"]
            response.neurons.CopyFrom(
                twin_pb2.NeuronScores(
                    neuron_ids=np.asarray(detail["neuron_ids"], np.int64).tolist(),
                    single_trial_correlation=np.asarray(detail["single_trial_correlation"], float).tolist(),
                    correlation_to_average=np.asarray(detail["correlation_to_average"], float).tolist(),
                    feve=[] if detail["feve"] is None else np.asarray(detail["feve"], float).tolist(),
                )
            )
        return response

    # ----- repository -----

    async def Reload(
        self, request: twin_pb2.ReloadRequest, context: aio.ServicerContext
    ) -> twin_pb2.ReloadResponse:
        loop = asyncio.get_running_loop()
        report = await loop.run_in_executor(self.runtime.executor, self.repository.reload)
        return twin_pb2.ReloadResponse(
            loaded=[version_status(v) for v in report.loaded],
            failed=[version_status(v) for v in report.failed],
            unloaded=[version_status(v) for v in report.unloaded],
            models=self.summaries(),
        )
