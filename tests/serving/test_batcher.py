"""The dynamic batcher on a real numpy model, real threads and a real asyncio loop."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batcher import DynamicBatcher
from twin.errors import InvalidInput, ModelNotReady, Overloaded

WEIGHTS = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)


def model(images, behavior=None):
    """A tiny blocking 'twin': (B, 3, 4) images (+ (B, 2) behaviour) -> (B, 5) mean and (B,) energy."""
    flat = images.reshape(len(images), -1).astype(np.float32)  # (B, 12)
    mean = np.tanh(flat @ WEIGHTS)  # (B, 5)
    if behavior is not None:
        mean = mean * (1 + behavior[:, :1])
    return mean, (flat**2).sum(axis=1)


class Recorder:
    """run_batch that calls `model`, counts calls and records each batch's rows (thread-safe)."""

    def __init__(self, block: threading.Event | None = None, fail_on: float | None = None):
        self.lock = threading.Lock()
        self.rows: list[int] = []
        self.started = threading.Event()
        self.block = block
        self.fail_on = fail_on

    def __call__(self, key, inputs):
        images, behavior = inputs
        with self.lock:
            self.rows.append(len(images))
        self.started.set()
        if self.block is not None:
            self.block.wait(10)
        if self.fail_on is not None and np.any(images == self.fail_on):
            raise ValueError(f"bad pixel {self.fail_on}")
        return model(images, behavior)


@pytest.fixture
def executor():
    with ThreadPoolExecutor(2) as pool:
        yield pool


def _images(rows, seed):
    return np.random.default_rng(seed).random((rows, 3, 4)).astype(np.float32)


def test_batched_results_equal_unbatched_and_requests_merge(executor):
    recorder = Recorder()
    sizes = [1, 3, 2, 5, 1, 4, 2, 2, 3, 1, 5, 2, 1, 1, 3, 2]
    requests = [
        (_images(b, i), None if i % 2 else _images(b, 100 + i)[:, 0, :2]) for i, b in enumerate(sizes)
    ]

    async def main():
        batcher = DynamicBatcher(
            recorder, max_batch_size=8, max_queue_delay_ms=20, executor=executor, max_concurrent_batches=2
        )
        results = await asyncio.gather(*(batcher.submit("m", inputs) for inputs in requests))
        await batcher.close()
        return results

    results = asyncio.run(main())
    for (images, behavior), result in zip(requests, results, strict=True):
        mean, energy = model(images, behavior)
        np.testing.assert_allclose(result.outputs[0], mean, rtol=1e-6)
        np.testing.assert_allclose(result.outputs[1], energy, rtol=1e-6)
        assert result.batch_rows <= 8 and result.queue_time_s >= 0
    assert sum(recorder.rows) == sum(sizes)
    assert max(recorder.rows) <= 8
    assert len(recorder.rows) < len(sizes)  # merged
    assert any(r.batch_requests > 1 for r in results)


def test_concurrent_requests_within_the_delay_make_one_call(executor):
    recorder = Recorder()

    async def main():
        batcher = DynamicBatcher(recorder, max_batch_size=64, max_queue_delay_ms=50, executor=executor)
        results = await asyncio.gather(*(batcher.submit("m", (_images(2, i), None)) for i in range(10)))
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert recorder.rows == [20]
    assert all(r.batch_rows == 20 and r.batch_requests == 10 for r in results)
    assert all(r.queue_time_s >= 0.04 for r in results)  # waited for the delay to gather the batch


def test_a_full_batch_runs_without_waiting_for_the_delay(executor):
    recorder = Recorder()

    async def main():
        batcher = DynamicBatcher(recorder, max_batch_size=4, max_queue_delay_ms=10_000, executor=executor)
        start = time.monotonic()
        await asyncio.gather(*(batcher.submit("m", (_images(1, i), None)) for i in range(4)))
        elapsed = time.monotonic() - start
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < 5
    assert recorder.rows == [4]


def test_requests_that_cannot_be_concatenated_run_apart(executor):
    recorder = Recorder()

    async def main():
        batcher = DynamicBatcher(recorder, max_batch_size=64, max_queue_delay_ms=20, executor=executor)
        await asyncio.gather(
            batcher.submit("a", (_images(2, 0), None)),
            batcher.submit("b", (_images(2, 1), None)),  # another model
            batcher.submit("a", (_images(2, 2), _images(2, 3)[:, 0, :2])),  # behaviour present
            batcher.submit("a", (_images(2, 4).astype(np.float64), None)),  # another dtype
            batcher.submit("a", (_images(3, 5), None)),  # merges with the first
        )
        await batcher.close()

    asyncio.run(main())
    assert sorted(recorder.rows) == [2, 2, 2, 5]


def test_a_request_larger_than_the_batch_runs_alone(executor):
    recorder = Recorder()

    async def main():
        batcher = DynamicBatcher(recorder, max_batch_size=4, max_queue_delay_ms=20, executor=executor)
        big, small = _images(10, 0), _images(1, 1)
        results = await asyncio.gather(batcher.submit("m", (big, None)), batcher.submit("m", (small, None)))
        await batcher.close()
        return big, results

    big, results = asyncio.run(main())
    np.testing.assert_allclose(results[0].outputs[0], model(big)[0], rtol=1e-6)
    assert sorted(recorder.rows) == [1, 10]


@pytest.mark.parametrize("settings", [{"max_batch_size": 1}, {"max_batch_size": 8, "max_queue_delay_ms": 0}])
def test_batching_can_be_disabled(executor, settings):
    recorder = Recorder()

    async def main():
        batcher = DynamicBatcher(recorder, executor=executor, **settings)
        assert not batcher.enabled
        results = await asyncio.gather(*(batcher.submit("m", (_images(2, i), None)) for i in range(6)))
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert recorder.rows == [2] * 6
    assert all(r.batch_requests == 1 for r in results)


def test_a_full_queue_refuses_with_overloaded(executor):
    release = threading.Event()
    recorder = Recorder(block=release)

    async def main():
        batcher = DynamicBatcher(
            recorder, max_batch_size=8, max_queue_delay_ms=1, max_queue_size=2, executor=executor
        )
        running = asyncio.ensure_future(batcher.submit("m", (_images(1, 0), None)))
        await asyncio.get_running_loop().run_in_executor(None, recorder.started.wait, 5)
        waiting = [asyncio.ensure_future(batcher.submit("m", (_images(1, i), None))) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert batcher.queued == 2
        with pytest.raises(Overloaded, match="queue: 2 requests waiting; the limit is 2"):
            await batcher.submit("m", (_images(1, 3), None))
        release.set()
        await asyncio.gather(running, *waiting)
        await batcher.close()

    asyncio.run(main())
    assert recorder.rows == [1, 2]


def test_a_cancelled_request_leaves_the_batch(executor):
    release = threading.Event()
    recorder = Recorder(block=release)

    async def main():
        batcher = DynamicBatcher(recorder, max_batch_size=8, max_queue_delay_ms=1, executor=executor)
        first = asyncio.ensure_future(batcher.submit("m", (_images(1, 0), None)))
        await asyncio.get_running_loop().run_in_executor(None, recorder.started.wait, 5)
        cancelled = asyncio.ensure_future(batcher.submit("m", (_images(3, 1), None)))
        kept_images = _images(2, 2)
        kept = asyncio.ensure_future(batcher.submit("m", (kept_images, None)))
        await asyncio.sleep(0.01)
        assert batcher.queued == 2
        cancelled.cancel()
        await asyncio.sleep(0)
        assert batcher.queued == 1
        release.set()
        result = await kept
        await first
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await batcher.close()
        return kept_images, result

    kept_images, result = asyncio.run(main())
    assert recorder.rows == [1, 2]  # the cancelled request's 3 rows never ran
    np.testing.assert_allclose(result.outputs[0], model(kept_images)[0], rtol=1e-6)


def test_an_error_reaches_every_request_of_its_batch(executor):
    recorder = Recorder(fail_on=-1.0)

    async def main():
        batcher = DynamicBatcher(recorder, max_batch_size=64, max_queue_delay_ms=30, executor=executor)
        poisoned = _images(2, 0)
        poisoned[1, 0, 0] = -1.0
        results = await asyncio.gather(
            batcher.submit("m", (_images(2, 1), None)),
            batcher.submit("m", (poisoned, None)),
            batcher.submit("m", (_images(1, 2), None)),
            return_exceptions=True,
        )
        after = await batcher.submit("m", (_images(1, 3), None))  # the batcher keeps working
        await batcher.close()
        return results, after

    results, after = asyncio.run(main())
    assert recorder.rows == [5, 1]
    assert all(isinstance(r, ValueError) and "bad pixel" in str(r) for r in results)
    assert after.outputs[0].shape == (1, 5)


def test_outputs_without_the_batch_rows_are_an_error(executor):
    async def main():
        batcher = DynamicBatcher(lambda key, inputs: (np.zeros(3),), max_queue_delay_ms=1, executor=executor)
        with pytest.raises(RuntimeError, match="output 0 has shape"):
            await batcher.submit("m", (np.zeros((2, 4)),))
        await batcher.close()

    asyncio.run(main())


def test_invalid_inputs_and_settings():
    with pytest.raises(InvalidInput, match="max_batch_size: 0; expected an integer >= 1"):
        DynamicBatcher(lambda key, inputs: inputs, max_batch_size=0)
    with pytest.raises(InvalidInput, match="max_queue_delay_ms: -1"):
        DynamicBatcher(lambda key, inputs: inputs, max_queue_delay_ms=-1)

    async def main():
        batcher = DynamicBatcher(lambda key, inputs: inputs)
        with pytest.raises(InvalidInput, match=r"inputs: shapes \[\(2, 3\), \(3, 2\)\]; expected the same"):
            await batcher.submit("m", (np.zeros((2, 3)), np.zeros((3, 2))))
        with pytest.raises(InvalidInput, match="all None"):
            await batcher.submit("m", (None,))
        await batcher.close()
        with pytest.raises(ModelNotReady, match="closed"):
            await batcher.submit("m", (np.zeros((1, 3)),))

    asyncio.run(main())


def test_close_fails_queued_requests(executor):
    release = threading.Event()
    recorder = Recorder(block=release)

    async def main():
        batcher = DynamicBatcher(recorder, max_batch_size=8, max_queue_delay_ms=1, executor=executor)
        first = asyncio.ensure_future(batcher.submit("m", (_images(1, 0), None)))
        await asyncio.get_running_loop().run_in_executor(None, recorder.started.wait, 5)
        queued = asyncio.ensure_future(batcher.submit("m", (_images(1, 1), None)))
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.01)
        release.set()
        await closing
        assert (await first).outputs[0].shape == (1, 5)  # the running batch finished
        with pytest.raises(ModelNotReady, match="closed before the request ran"):
            await queued

    asyncio.run(main())
