"""The dynamic batcher: size and wait limits, ordering of results, isolation of a failing item."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from livemod.stream.batcher import DynamicBatcher


def _run_batches(items, *, max_batch, max_wait_s, fail_on=None, delay=0.0):
    batches: list[list[int]] = []

    def run(xs):
        batches.append(list(xs))
        time.sleep(delay)
        if fail_on is not None and fail_on in xs:
            raise ValueError(f"bad {fail_on}")
        return [x * 10 for x in xs]

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(run, max_batch=max_batch, max_wait_s=max_wait_s, executor=ex)
            res = await asyncio.gather(*(b.submit(x) for x in items), return_exceptions=True)
            await b.stop()
            return res

    return asyncio.run(main()), batches


@pytest.mark.parametrize(
    "n, max_batch, expected_sizes",
    [(1, 8, [1]), (8, 8, [8]), (10, 4, [4, 4, 2]), (5, 16, [5])],
)
def test_batches_fill_up_to_max(n, max_batch, expected_sizes):
    res, batches = _run_batches(list(range(n)), max_batch=max_batch, max_wait_s=0.05)
    assert res == [x * 10 for x in range(n)]
    assert [len(b) for b in batches] == expected_sizes


def test_failing_item_fails_alone():
    res, batches = _run_batches([1, 2, 3], max_batch=8, max_wait_s=0.05, fail_on=2)
    assert res[0] == 10 and res[2] == 30 and isinstance(res[1], ValueError)
    assert batches[0] == [1, 2, 3] and [1] in batches and [3] in batches


def test_wait_is_bounded():
    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(lambda xs: list(xs), max_batch=64, max_wait_s=0.05, executor=ex)
            t0 = time.perf_counter()
            await b.submit(1)
            dt = time.perf_counter() - t0
            await b.stop()
            return dt

    assert asyncio.run(main()) < 1.0


@pytest.mark.parametrize(
    "items, producers, goes_early",
    [
        (["a", "b", "c"], 3, True),  # every reference in flight has its frame queued: nothing can fill the batch
        (["a", "b"], 3, False),  # a third reference may still send a frame: wait
        (["a", "a", "a"], 3, False),  # three frames, one caller: the other two may still send
        (["a", "b", "c", "a"], 3, True),
    ],
)
def test_a_batch_goes_once_every_producer_has_an_item_in_it(items, producers, goes_early):
    """The worker's image references give one frame each: with fewer in flight than max_batch,
    waiting max_wait_s for a fuller batch only adds latency (it capped the ceiling at ~400 refs/s)."""
    batches: list[list[str]] = []

    async def main() -> float:
        with ThreadPoolExecutor(1) as ex:
            b = DynamicBatcher(lambda xs: batches.append(list(xs)) or list(xs), max_batch=16, max_wait_s=0.5,
                               executor=ex, producers=lambda: producers, caller=lambda x: x)
            t0 = time.perf_counter()
            await asyncio.gather(*(b.submit(x) for x in items))
            dt = time.perf_counter() - t0
            await b.stop()
            return dt

    dt = asyncio.run(main())
    assert batches == [items]
    assert (dt < 0.25) == goes_early
