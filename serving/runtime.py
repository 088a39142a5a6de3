"""What both gRPC APIs (twin.v1 and KServe v2) share: model leases, request checks, batched ORT calls.

A request takes a lease on a model version (`ModelRepository.acquire`) and holds it until its answer is
back, so a hot reload that retires the version lets it finish there. Inputs are checked and converted
(dtype, shape, finiteness, resizing from the recording's resolution) before they are queued, so one bad
request never fails a batch it would have shared. Predict and Gradient run through one `DynamicBatcher`
keyed by (model, version, data key, kind); its batches run ONNX Runtime in a thread pool. The key holds
the twin itself, so a batch still running for a request cancelled meanwhile (which gave its lease back)
keeps its ONNX Runtime sessions alive until it ends. Evaluate runs in the same pool, unbatched (it
feeds the server's own held-out images in chunks).

Each request carries at most `max_batch_size` images (as Triton's batching models do): larger sets are
refused with INVALID_ARGUMENT naming `images`, and clients send them in chunks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from grpc import aio

from serving.batcher import DynamicBatcher
from serving.heldout import HeldOutData, HeldOutRecording
from serving.observability import Metrics
from serving.repository import ModelLease, ModelRepository
from twin.artifact import OnnxTwin
from twin.errors import DeadlineExceeded, FormatError, InvalidInput, ModelNotFound

__all__ = ["BatchKey", "Gradient", "Prediction", "Runtime", "load_heldout", "within_deadline"]

T = TypeVar("T")

PREDICT, GRADIENT = "predict", "gradient"


@dataclass(frozen=True)
class BatchKey:
    """Requests under equal keys may share a model call. `twin` compares by identity, so a version
    number removed and added again never mixes its requests with the old artifact's."""

    model: str
    version: int
    data_key: str
    kind: str  # PREDICT or GRADIENT
    twin: OnnxTwin = field(repr=False)


@dataclass(frozen=True)
class Prediction:
    """One request's answer: (B, n) mean and std, (M, B, n) members when asked for, n unit ids."""

    mean: np.ndarray
    std: np.ndarray
    members: np.ndarray | None
    neuron_ids: np.ndarray


@dataclass(frozen=True)
class Gradient:
    """d sum(weights * mean) / d images, float32, in the shape of the request's images."""

    gradient: np.ndarray


def _run_batch(key: Any, inputs: tuple[np.ndarray | None, ...]) -> Sequence[np.ndarray]:
    """One model call for a whole batch (in a worker thread). Outputs have the batch first."""
    assert isinstance(key, BatchKey)
    # The inputs were checked (OnnxTwin.check_inputs, Runtime._weights) before they were queued.
    if key.kind == PREDICT:
        images, behavior, pupil_center = inputs
        mean, std, members = key.twin.run(_feed(images, behavior, pupil_center))
        return mean, std, np.ascontiguousarray(np.swapaxes(members, 0, 1))  # (B, M, N)
    images, weights, behavior, pupil_center = inputs
    assert weights is not None
    return (key.twin.run_gradient({**_feed(images, behavior, pupil_center), "weights": weights}),)


def _feed(images: Any, behavior: np.ndarray | None, pupil_center: np.ndarray | None) -> dict[str, Any]:
    """A graph feed from batched, checked inputs (behaviour, pupil centre only where the model uses them)."""
    named = {"images": images, "behavior": behavior, "pupil_center": pupil_center}
    return {name: value for name, value in named.items() if value is not None}


def _columns(twin: OnnxTwin, ids: Sequence[int], field: str = "neuron_ids") -> np.ndarray | None:
    """Column of each unit id in the twin's responses (None: no ids, all columns). NOT_FOUND if unknown."""
    if len(ids) == 0:
        return None
    wanted = np.asarray(ids, np.int64)
    known = twin.neuron_ids
    order = np.argsort(known, kind="stable")
    position = np.minimum(np.searchsorted(known, wanted, sorter=order), known.size - 1)
    columns = order[position]
    unknown = wanted[known[columns] != wanted]
    if unknown.size:
        raise ModelNotFound(
            f"{field}: {unknown.size} ids are not neurons of recording {twin.data_key} "
            f"(e.g. {unknown[:5].tolist()}); expected unit ids of its {known.size} neurons (GetModelInfo)"
        )
    return columns


async def within_deadline(awaitable: Awaitable[T], context: aio.ServicerContext) -> T:
    """Await `awaitable` until the call's deadline; past it the call ends with DEADLINE_EXCEEDED.

    The awaitable is cancelled at the deadline (a queued request leaves the queue), as it is when the
    client cancels the call.
    """
    remaining = context.time_remaining()
    try:
        return await asyncio.wait_for(awaitable, timeout=remaining)
    except TimeoutError:
        raise DeadlineExceeded("deadline: passed before the answer was ready; retry later") from None


class Runtime:
    """Leases, checks, batching and evaluation over one model repository; used on one event loop."""

    def __init__(
        self,
        repository: ModelRepository,
        executor: Executor,
        metrics: Metrics,
        *,
        heldout: HeldOutData | None = None,
        max_batch_size: int = 32,
        max_queue_delay_ms: float = 2.0,
        max_queue_size: int = 256,
        max_concurrent_batches: int = 2,
    ) -> None:
        self.repository = repository
        self.executor = executor
        self.metrics = metrics
        self.heldout = heldout
        self.max_batch_size = max_batch_size
        self.batcher = DynamicBatcher(
            _run_batch,
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            max_queue_size=max_queue_size,
            executor=executor,
            max_concurrent_batches=max_concurrent_batches,
            on_batch=metrics.observe_batch,
        )

    # -----------------------------------------------------------------------------------------------
    # Models

    def acquire(self, model: str, version: int, data_key: str) -> tuple[ModelLease, OnnxTwin]:
        """A lease on the version (0: the serving one) and the twin of `data_key` (may be empty when the
        model has one). The caller releases the lease."""
        lease = self.repository.acquire(model, version or None)
        try:
            return lease, lease.artifact.twin(data_key or None)
        except BaseException:
            lease.release()
            raise

    # -----------------------------------------------------------------------------------------------
    # Checks

    def _inputs(
        self, twin: OnnxTwin, images: np.ndarray | None, behavior: Any, pupil_center: Any
    ) -> tuple[dict[str, np.ndarray], bool]:
        """The model's feed (float32, the model's resolution) and whether the images were resized."""
        if images is None:
            raise InvalidInput(
                f"images: missing; expected (B, H, W) or (B, 1, H, W) with (H, W) = {twin.image_size} "
                f"(model) or {twin.recording_image_size} (recording)"
            )
        rows = int(images.shape[0]) if images.ndim else 0
        if rows > self.max_batch_size:
            raise InvalidInput(
                f"images: a batch of {rows}; this server takes at most {self.max_batch_size} images per "
                "request (max_batch_size), send larger sets in chunks"
            )
        return twin.check_inputs(images, behavior, pupil_center)

    # -----------------------------------------------------------------------------------------------
    # Calls

    async def predict(
        self,
        lease: ModelLease,
        twin: OnnxTwin,
        images: np.ndarray | None,
        behavior: np.ndarray | None = None,
        pupil_center: np.ndarray | None = None,
        neuron_ids: Sequence[int] = (),
        members: bool = False,
    ) -> Prediction:
        """Mean, std (and members) of the twin for a batch of images, through the batcher."""
        feed, _ = self._inputs(twin, images, behavior, pupil_center)
        columns = _columns(twin, neuron_ids)
        key = BatchKey(lease.model, lease.version, twin.data_key, PREDICT, twin)
        result = await self.batcher.submit(
            key, (feed["images"], feed.get("behavior"), feed.get("pupil_center"))
        )
        self.metrics.observe_queue_time(result.queue_time_s)
        mean, std, per_member = result.outputs
        ids = twin.neuron_ids
        if columns is not None:
            mean, std, per_member, ids = (
                mean[:, columns],
                std[:, columns],
                per_member[:, :, columns],
                ids[columns],
            )
        return Prediction(
            mean=mean,
            std=std,
            members=np.swapaxes(per_member, 0, 1) if members else None,
            neuron_ids=ids,
        )

    async def gradient(
        self,
        lease: ModelLease,
        twin: OnnxTwin,
        images: np.ndarray | None,
        weights: np.ndarray | None,
        behavior: np.ndarray | None = None,
        pupil_center: np.ndarray | None = None,
        neuron_ids: Sequence[int] = (),
    ) -> Gradient:
        """The input gradient of sum(weights * mean); weights name all neurons or `neuron_ids`' columns."""
        feed, resized = self._inputs(twin, images, behavior, pupil_center)
        assert images is not None
        rows = feed["images"].shape[0]
        full = self._weights(twin, weights, rows, neuron_ids)
        key = BatchKey(lease.model, lease.version, twin.data_key, GRADIENT, twin)
        result = await self.batcher.submit(
            key, (feed["images"], full, feed.get("behavior"), feed.get("pupil_center"))
        )
        self.metrics.observe_queue_time(result.queue_time_s)
        (gradient,) = result.outputs  # (B, h, w) at the model's resolution
        if resized:
            gradient = twin.gradient_at_recording_resolution(gradient)
        return Gradient(gradient.reshape(images.shape).astype(np.float32, copy=False))

    @staticmethod
    def _weights(
        twin: OnnxTwin, weights: np.ndarray | None, rows: int, neuron_ids: Sequence[int]
    ) -> np.ndarray:
        """(B, N) float32 weights over all neurons; columns named by `neuron_ids` expand with zeros."""
        columns = _columns(twin, neuron_ids)
        width = twin.n_neurons if columns is None else columns.size
        what = "all neurons" if columns is None else "the neuron_ids given"
        if weights is None:
            raise InvalidInput(f"weights: missing; expected ({rows}, {width}), one per image and {what}")
        if weights.shape != (rows, width):
            raise InvalidInput(
                f"weights: shape {tuple(weights.shape)}; expected ({rows}, {width}), one per image and {what}"
            )
        with np.errstate(over="ignore"):
            w = weights.astype(np.float32)
        if not np.all(np.isfinite(w)):
            raise InvalidInput("weights: contains NaN or inf (or beyond float32); expected finite values")
        if columns is None:
            return w
        full = np.zeros((rows, twin.n_neurons), np.float32)
        np.add.at(full, (np.arange(rows)[:, None], columns[None, :]), w)  # a repeated id adds up
        return full

    def heldout_recording(self, data_key: str) -> HeldOutRecording:
        """The held-out data of one data key; NOT_FOUND naming it when the server holds none."""
        if self.heldout is None:
            raise ModelNotFound(
                f"data_key: {data_key!r} has no held-out data here; this server holds none "
                "(start it with heldout=... / --heldout)"
            )
        return self.heldout.recording(data_key)

    async def evaluate(self, twin: OnnxTwin, tier: str, per_neuron: bool) -> dict[str, Any]:
        """Scores of the twin on the server's held-out `tier` of its recording (scores only)."""
        recording = self.heldout_recording(twin.data_key)

        def predict(images: np.ndarray, behavior: Any, pupil_center: Any) -> np.ndarray:
            return twin.predict(images, behavior, pupil_center)[0]

        run = partial(recording.evaluate, predict, tier, per_neuron, neuron_ids=twin.neuron_ids)
        return await asyncio.get_running_loop().run_in_executor(self.executor, run)

    async def close(self) -> None:
        """Refuse new requests; let running batches finish."""
        await self.batcher.close()


def load_heldout(paths: Sequence[str | os.PathLike[str]]) -> HeldOutData | None:
    """Held-out data of every path (a recording, or a folder of recordings), merged by data key.

    None for no paths. A data key found under two paths is a FormatError naming both.
    """
    if not paths:
        return None
    merged: dict[str, HeldOutRecording] = {}
    origin: dict[str, Path] = {}
    for path in map(Path, paths):
        data = HeldOutData.load(path)
        for key in data.data_keys:
            if key in merged:
                raise FormatError(
                    f"heldout: data_key {key} is under both {origin[key]} and {path}; expected each once"
                )
            merged[key], origin[key] = data.recording(key), path
    return HeldOutData(merged)
