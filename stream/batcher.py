"""A cross-stream dynamic batcher in front of the engines (as Triton's dynamic batcher does)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class DynamicBatcher(Generic[T, R]):
    """Collects items from many callers into batches of up to ``max_batch``, waiting at most
    ``max_wait_s`` after the first item, and runs each batch in ``executor``.

    While one batch runs, the next one fills, so batches grow with load. A failing batch is
    retried item by item, so one bad frame fails alone.

    Args:
        run: the blocking batch function: items -> results, same length and order.
        max_batch: largest batch.
        max_wait_s: longest wait for a fuller batch.
        executor: where ``run`` runs (one engine thread).
        on_batch: called with (batch size, seconds) after each batch.
        producers: how many callers can submit at present (for instance the references in
            flight) and ``caller``, which caller an item comes from: once every caller has an
            item in the batch and nothing more is queued, the batch goes without waiting, since
            no caller is left to fill it (one snapshot per reference). None: always wait for
            ``max_batch`` or ``max_wait_s``.
    """

    def __init__(
        self,
        run: Callable[[Sequence[T]], list[R]],
        *,
        max_batch: int,
        max_wait_s: float,
        executor: Executor,
        on_batch: Callable[[int, float], None] | None = None,
        producers: Callable[[], int] | None = None,
        caller: Callable[[T], object] = id,
    ) -> None:
        self._run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self._producers, self._caller = producers, caller
        self._executor, self._on_batch = executor, on_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="livemod-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result."""
        self.start()
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            if self._producers is not None and \
                    len({self._caller(item) for item, _f in batch}) >= self._producers():
                break  # every caller has an item in this batch: waiting cannot fill it further
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            items = [item for item, _ in live]
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run, items)
            except Exception as exc:  # one bad item must not fail the others: retry singly
                if len(items) == 1:
                    if not live[0][1].done():
                        live[0][1].set_exception(exc)
                    continue
                log.warning("batch of %d failed (%s); retrying item by item", len(items), exc)
                for item, fut in live:
                    try:
                        (res,) = await loop.run_in_executor(self._executor, self._run, [item])
                    except Exception as one_exc:  # noqa: BLE001 - handed to the caller
                        if not fut.done():
                            fut.set_exception(one_exc)
                    else:
                        if not fut.done():
                            fut.set_result(res)
                continue
            if self._on_batch:
                self._on_batch(len(items), time.perf_counter() - t0)
            for (_item, fut), res in zip(live, results):
                if not fut.done():
                    fut.set_result(res)
