"""Dynamic batching: concurrent requests for the same model run as one model call.

A request is a tuple of input arrays (or None for an absent optional input) sharing their first
dimension, its rows. Requests submitted under the same key (e.g. model, version, data key) whose inputs
have the same dtypes, trailing shapes and absent inputs are concatenated, up to `max_batch_size` rows,
waiting at most `max_queue_delay_ms` after the oldest one arrived. The batch runs once in a thread pool
(the model call is blocking numpy / ONNX Runtime) and its outputs are split back by rows.

- A request larger than `max_batch_size` rows runs alone, unsplit; callers that must bound the work of
  one request reject large ones before submitting.
- At most `max_concurrent_batches` batches run at once; while they run, new requests keep queuing and
  form larger batches, so throughput grows with load.
- The queue holds at most `max_queue_size` requests; beyond that `submit` raises `Overloaded`
  (RESOURCE_EXHAUSTED on gRPC) at once rather than let latency grow without bound.
- Cancelling a waiting `submit` removes its request from the queue; a batch already running finishes
  and the cancelled request's rows are dropped.
- An exception from `run_batch` is raised by every request of that batch.
- `max_batch_size=1` or `max_queue_delay_ms=0` disables batching: each request runs alone as soon as a
  slot is free, through the same queue (so the same bound, ordering and cancellation apply).

One batcher serves one asyncio event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from twin.errors import InvalidInput, ModelNotReady, Overloaded

__all__ = ["BatchResult", "DynamicBatcher", "RunBatch"]

# run_batch(key, inputs) -> outputs: inputs and outputs all have the batch on their first axis.
RunBatch = Callable[[Hashable, tuple[np.ndarray | None, ...]], Sequence[np.ndarray]]


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch."""

    outputs: tuple[np.ndarray, ...]  # this request's rows of every output of run_batch
    queue_time_s: float  # from submit() until its batch started running
    batch_rows: int  # rows of the batch it ran in
    batch_requests: int  # requests merged into that batch


@dataclass(eq=False)
class _Pending:
    key: Hashable
    group: Hashable
    inputs: tuple[np.ndarray | None, ...]
    rows: int
    future: asyncio.Future[BatchResult]
    enqueued: float = field(default_factory=time.monotonic)


def _signature(inputs: tuple[np.ndarray | None, ...]) -> tuple[object, ...]:
    """What must agree for two requests to be concatenated: dtype and trailing shape of each input."""
    return tuple(None if a is None else (a.dtype.str, a.shape[1:]) for a in inputs)


def _rows(inputs: Sequence[np.ndarray | None]) -> int:
    present = [a for a in inputs if a is not None]
    if not present:
        raise InvalidInput("inputs: all None; expected at least one array")
    for i, a in enumerate(inputs):
        if a is not None and (not isinstance(a, np.ndarray) or a.ndim == 0):
            raise InvalidInput(f"inputs[{i}]: {type(a).__name__}; expected a numpy array with a batch axis")
    rows = {a.shape[0] for a in present}
    if len(rows) > 1:
        shapes = [None if a is None else a.shape for a in inputs]
        raise InvalidInput(f"inputs: shapes {shapes}; expected the same number of rows in each")
    return rows.pop()


class DynamicBatcher:
    """Merge concurrent requests into batches for a blocking `run_batch(key, inputs) -> outputs`."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 32,
        max_queue_delay_ms: float = 2.0,
        max_queue_size: int = 256,
        executor: Executor | None = None,
        max_concurrent_batches: int = 1,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        """`on_batch(rows, requests)` is called as each batch starts (e.g. to record its size)."""
        for name, value, low in (
            ("max_batch_size", max_batch_size, 1),
            ("max_queue_size", max_queue_size, 1),
            ("max_concurrent_batches", max_concurrent_batches, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise InvalidInput(f"{name}: {value!r}; expected an integer >= {low}")
        if not max_queue_delay_ms >= 0:
            raise InvalidInput(f"max_queue_delay_ms: {max_queue_delay_ms!r}; expected a number >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.max_concurrent_batches = max_concurrent_batches
        self._executor = executor
        self._on_batch = on_batch
        self._groups: dict[Hashable, deque[_Pending]] = {}
        self._group_rows: dict[Hashable, int] = {}
        self._queued = 0
        self._closed = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        """False when every request runs alone (max_batch_size 1 or no queue delay)."""
        return self.max_batch_size > 1 and self.max_queue_delay_s > 0

    @property
    def queued(self) -> int:
        """Requests waiting for a batch to start."""
        return self._queued

    async def submit(self, key: Hashable, inputs: Sequence[np.ndarray | None]) -> BatchResult:
        """Queue one request and wait for its rows of the outputs. Raises `Overloaded` when full."""
        if self._closed:
            raise ModelNotReady("batcher: closed (the server is shutting down); expected a running server")
        arrays = tuple(inputs)
        rows = _rows(arrays)
        if self._queued >= self.max_queue_size:
            raise Overloaded(
                f"queue: {self._queued} requests waiting; the limit is {self.max_queue_size}, retry later"
            )
        wakeup = self._start()
        group = (key, _signature(arrays))
        pending = _Pending(key, group, arrays, rows, asyncio.get_running_loop().create_future())
        self._groups.setdefault(group, deque()).append(pending)
        self._group_rows[group] = self._group_rows.get(group, 0) + rows
        self._queued += 1
        wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._remove(pending)
            raise

    async def close(self) -> None:
        """Refuse new requests, fail the queued ones with ModelNotReady, let running batches finish."""
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        for queue in self._groups.values():
            for pending in queue:
                if not pending.future.done():
                    pending.future.set_exception(ModelNotReady("batcher: closed before the request ran"))
        self._groups.clear()
        self._group_rows.clear()
        self._queued = 0
        await asyncio.gather(*self._running, return_exceptions=True)

    # -----------------------------------------------------------------------------------------------
    # Queue

    def _start(self) -> asyncio.Event:
        """Start the dispatcher on the running loop at the first request; returns its wake-up event."""
        if self._wakeup is None or self._slots is None:
            self._wakeup = asyncio.Event()
            self._slots = asyncio.Semaphore(self.max_concurrent_batches)
            self._dispatcher = asyncio.get_running_loop().create_task(
                self._dispatch(self._wakeup, self._slots)
            )
        return self._wakeup

    def _remove(self, pending: _Pending) -> None:
        queue = self._groups.get(pending.group)
        if queue is None or pending not in queue:
            return  # already taken into a batch
        queue.remove(pending)
        self._group_rows[pending.group] -= pending.rows
        self._queued -= 1
        if not queue:
            del self._groups[pending.group], self._group_rows[pending.group]

    def _ready(self, now: float) -> tuple[Hashable | None, float | None]:
        """The group to run next (oldest first among full or expired ones), else seconds to wait."""
        best: Hashable | None = None
        best_age = wait = None
        for group, queue in self._groups.items():
            oldest = queue[0].enqueued
            due = oldest + self.max_queue_delay_s if self.enabled else oldest
            full = self._group_rows[group] >= self.max_batch_size
            if full or due <= now:
                if best_age is None or oldest < best_age:
                    best, best_age = group, oldest
            else:
                wait = due - now if wait is None else min(wait, due - now)
        return best, wait

    def _take(self, group: Hashable) -> list[_Pending]:
        """Pop the group's oldest requests that fit in one batch (always at least one)."""
        queue = self._groups[group]
        limit = self.max_batch_size if self.enabled else 1
        batch: list[_Pending] = []
        rows = 0
        while queue and (not batch or (self.enabled and rows + queue[0].rows <= limit)):
            pending = queue.popleft()
            rows += pending.rows
            batch.append(pending)
        self._group_rows[group] -= rows
        self._queued -= len(batch)
        if not queue:
            del self._groups[group], self._group_rows[group]
        return batch

    async def _dispatch(self, wakeup: asyncio.Event, slots: asyncio.Semaphore) -> None:
        while True:
            await slots.acquire()  # take the batch only once it can run: it grows meanwhile
            try:
                while True:
                    group, wait = self._ready(time.monotonic())
                    if group is not None:
                        break
                    wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), timeout=wait)
                batch = self._take(group)
            except BaseException:
                slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._run(batch, slots))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    # -----------------------------------------------------------------------------------------------
    # Running a batch

    async def _run(self, batch: list[_Pending], slots: asyncio.Semaphore) -> None:
        try:
            started = time.monotonic()
            total = sum(p.rows for p in batch)
            try:
                if self._on_batch is not None:
                    self._on_batch(total, len(batch))
                inputs = batch[0].inputs if len(batch) == 1 else _concatenate([p.inputs for p in batch])
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._executor, self._run_batch, batch[0].key, inputs)
                outputs = _check_outputs(outputs, total)
            except Exception as exc:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                return
            start = 0
            for pending in batch:
                stop = start + pending.rows
                if not pending.future.done():
                    pending.future.set_result(
                        BatchResult(
                            outputs=tuple(out[start:stop] for out in outputs),
                            queue_time_s=started - pending.enqueued,
                            batch_rows=total,
                            batch_requests=len(batch),
                        )
                    )
                start = stop
        finally:
            slots.release()


def _concatenate(requests: list[tuple[np.ndarray | None, ...]]) -> tuple[np.ndarray | None, ...]:
    """Each input of the requests stacked along the batch axis (absent inputs stay None)."""
    merged: list[np.ndarray | None] = []
    for i in range(len(requests[0])):
        parts = [r[i] for r in requests]
        present = [a for a in parts if a is not None]  # all or none: the group signature agrees
        merged.append(np.concatenate(present, axis=0) if present else None)  # (sum B_i, ...)
    return tuple(merged)


def _check_outputs(outputs: Sequence[np.ndarray], rows: int) -> tuple[np.ndarray, ...]:
    if isinstance(outputs, np.ndarray):
        raise RuntimeError(f"run_batch: returned one array {outputs.shape}; expected a sequence of arrays")
    result = tuple(outputs)
    for i, out in enumerate(result):
        if not isinstance(out, np.ndarray) or out.ndim == 0 or out.shape[0] != rows:
            shape = getattr(out, "shape", type(out).__name__)
            raise RuntimeError(f"run_batch: output {i} has shape {shape}; expected {rows} rows first")
    return result
