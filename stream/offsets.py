"""Each agent's ledger of its partitions: the next offset to handle, in-order acks, and the seeks that keep Faust honest.

Why it exists: faust-streaming 0.15 can lose fetched records around a rebalance or a seek
(its fetch loop drops the rest of a batch when the flow stops, yet counts the records as read)
and then commits across the hole (upstream issue #606; the fix, PR #707, is not released).
``OrderedAcks`` is pure bookkeeping; ``Reconciler`` applies it to a Faust consumer through
``faustcompat``, the one module that touches Faust internals.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from livemod.stream import faustcompat
from livemod.stream.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PendingAck:
    """One event waiting for its ack; ``done`` once its handling finished.

    ``gap`` is set on the first event after a hole in the partition's offsets that was
    confirmed as real (offsets ``gap[0]..gap[1]`` do not exist): the agent tells Faust so
    that its commits can pass the hole.
    """

    event: Any  # faust.types.EventT: needs .message.offset, .message.tp and .ack()
    done: bool = False
    gap: tuple[int, int] | None = None


class OrderedAcks:
    """One agent's ledger of each partition: the next offset it must handle, and in-order acks.

    Faust's fetch loop can lose records around a rebalance or a seek: it throws away the rest
    of a fetched batch when the flow is suspended or a partition is paused, yet counts those
    records as read, so they are not fetched again; a later record then looks like a hole in
    the offsets, which Faust fills with an automatic "gap" and commits as if it had been
    handled. The agent therefore keeps its own account and does not trust the order of what it
    is given:

    - a partition's events are handed out only once its starting offset is known (``begin``,
      after each rebalance, from the committed offset); earlier ones are refused and come
      again after the rewind;
    - then strictly in sequence: an event past the next expected offset is refused and marks
      the partition for a rewind to that offset (``to_rewind``); an offset below it is a copy
      of one already in hand and is acked right after the first copy, never handed out twice;
    - a hole that survives ``confirm_gap`` rewinds (the first event after each is the same
      later offset: a transaction marker or a compacted record) is accepted as real;
    - acks go out strictly in offset order per partition, because Faust commits the highest
      contiguous acked offset and its gap check is off by one for out-of-order acks.
    """

    def __init__(self, confirm_gap: int = 3) -> None:
        self.confirm_gap = confirm_gap
        self._pending: dict[Any, collections.deque[PendingAck]] = collections.defaultdict(collections.deque)
        self._next: dict[Any, int] = {}
        self._progress: dict[Any, float] = {}  # monotonic time of the last in-sequence event
        self._dirty: set[Any] = set()  # refused an event past the expected offset since the last rewind
        self._after_rewind: set[Any] = set()  # no event yet since the last rewind
        self._votes: dict[Any, tuple[int, int, int]] = {}  # (expected, first offset after a rewind, times)
        self._stalls: dict[Any, int] = {}  # stalled rewinds since the last progress

    def begin(self, tp: Any, offset: int, now: float) -> int:
        """Set where a partition starts, unless it has started already; returns its next offset."""
        if tp not in self._next:
            self._next[tp] = offset
            self._progress[tp] = now
        return self._next[tp]

    def next_offset(self, tp: Any) -> int | None:
        """The offset the partition must deliver next; None before ``begin``."""
        return self._next.get(tp)

    def track(self, event: Any, now: float | None = None) -> PendingAck | None:
        """Register an event in arrival order; pass the result to ``done`` once it is handled.

        Returns:
            None when the event must not be handled: a copy of an offset in hand, an offset past
            a hole, or a partition not started yet.
        """
        now = time.monotonic() if now is None else now
        tp, offset = event.message.tp, event.message.offset
        expected = self._next.get(tp)
        if expected is None:
            return None  # not started: delivered again after the rewind that starts it
        first_after_rewind = tp in self._after_rewind
        self._after_rewind.discard(tp)
        entry = PendingAck(event)
        if offset < expected:
            self._pending[tp].append(entry)
            self.done(entry)
            return None
        if offset > expected:
            if not first_after_rewind:
                self._dirty.add(tp)
                return None
            prev_expected, prev_offset, times = self._votes.get(tp, (expected, offset, 0))
            times = times + 1 if (prev_expected, prev_offset) == (expected, offset) else 1
            self._votes[tp] = (expected, offset, times)
            if times < self.confirm_gap:
                self._dirty.add(tp)
                return None
            entry.gap = (expected, offset - 1)
        self._votes.pop(tp, None)
        self._stalls.pop(tp, None)
        self._dirty.discard(tp)
        self._next[tp] = offset + 1
        self._progress[tp] = now
        self._pending[tp].append(entry)
        return entry

    def done(self, entry: PendingAck) -> None:
        """Mark one event handled and ack every handled event at the head of its partition."""
        entry.done = True
        queue = self._pending[entry.event.message.tp]
        while queue and queue[0].done:
            queue.popleft().event.ack()

    def to_rewind(self, now: float, idle_s: float,
                  highwater: Callable[[Any], int | None]) -> list[tuple[Any, int, str]]:
        """Partitions to seek back to their next offset, with why: "skipped" (an event past the
        expected offset came), "stalled" (idle for ``idle_s`` while the broker holds more)."""
        out = []
        for tp, expected in self._next.items():
            if tp in self._dirty:
                out.append((tp, expected, "skipped"))
            elif now - self._progress.get(tp, now) >= idle_s * 2 ** min(self._stalls.get(tp, 0), 5):
                high = highwater(tp)  # the waiting records may be a trailing transaction marker: back off
                if high is not None and high > expected:
                    out.append((tp, expected, "stalled"))
                    self._stalls[tp] = self._stalls.get(tp, 0) + 1
        return out

    def rewound(self, tp: Any, now: float) -> None:
        """The partition was sought back to its next offset."""
        self._dirty.discard(tp)
        self._after_rewind.add(tp)
        self._progress[tp] = now

    def busy(self, now: float) -> None:
        """The agent is held back (no free slot): idle partitions are not stalled."""
        for tp in self._next:
            self._progress[tp] = now

    def outstanding(self) -> int:
        """Events tracked and not yet acked."""
        return sum(len(q) for q in self._pending.values())

    def reset(self) -> int:
        """Forget every partition (they were revoked); returns how many events were unacked."""
        n = self.outstanding()
        self._pending.clear()
        self._next.clear()
        self._progress.clear()
        self._dirty.clear()
        self._after_rewind.clear()
        self._votes.clear()
        self._stalls.clear()
        return n


class Reconciler:
    """Starts each newly assigned source partition at its committed offset, and seeks back any
    partition that skipped ahead of, or stalled behind, the offset its agent must handle next.

    Runs after each rebalance and once a second (see OrderedAcks for why).

    Args:
        app: the Faust app.
        ledgers: source topic -> (its agent's ledger, its agent's slots; a locked semaphore
            means the agent is held back by backpressure, not stalled).
        metrics: where rewinds are counted.
        idle_s: a partition with records waiting and no progress for this long is sought back.
    """

    def __init__(self, app: Any, ledgers: dict[str, tuple[OrderedAcks, asyncio.Semaphore]], metrics: Metrics,
                 idle_s: float = 2.0) -> None:
        self.app, self.ledgers, self.metrics, self.idle_s = app, ledgers, metrics, idle_s
        self.gaps = faustcompat.GapGuard(set(ledgers))
        self._lock = asyncio.Lock()

    async def admit(self, acks: OrderedAcks, event: Any) -> PendingAck | None:
        """Pass an event through its agent's ledger; None when it must not be handled now."""
        msg = event.message
        entry = acks.track(event)
        if entry is None:
            expected = acks.next_offset(msg.tp)
            if expected is not None and msg.offset < expected:
                log.debug("offset %s of %s delivered again; already in hand", msg.offset, msg.tp)
            else:
                self.metrics.offsets_refused.labels(msg.topic).inc()
                log.debug("offset %s of %s refused (expected %s): it comes again after a rewind",
                          msg.offset, msg.tp, expected)
        elif entry.gap is not None:
            self.metrics.offset_gaps.labels(msg.topic).inc()
            log.warning("offsets %s..%s of %s do not exist (confirmed by %d re-reads); going on from %s",
                        entry.gap[0], entry.gap[1], msg.tp, acks.confirm_gap, msg.offset)
            await self.gaps.confirm(msg.tp, entry.gap[0], entry.gap[1])
        return entry

    async def tick(self) -> None:
        app = self.app
        if not getattr(app, "livemod_rebalanced", False) or app.rebalancing or app.consumer is None:
            return
        async with self._lock:
            consumer = app.consumer
            try:
                self.gaps.install(consumer)
                now = time.monotonic()
                fresh = [tp for tp in consumer.assignment()
                         if tp.topic in self.ledgers and self.ledgers[tp.topic][0].next_offset(tp) is None]
                rewinds: list[tuple[Any, int, str]] = []
                if fresh:
                    committed = {tp: faustcompat.committed_offset(consumer, tp) for tp in fresh}
                    unknown = [tp for tp, off in committed.items() if off is None]
                    earliest = await consumer.earliest_offsets(*unknown) if unknown else {}
                    for tp in fresh:
                        start = committed[tp] if committed[tp] is not None else (earliest.get(tp) or 0)
                        rewinds.append((tp, self.ledgers[tp.topic][0].begin(tp, start, now), "rebalance"))
                for acks, slots in self.ledgers.values():
                    if slots.locked():
                        acks.busy(now)  # held back by backpressure, not stalled
                        continue
                    rewinds += acks.to_rewind(now, self.idle_s, consumer.highwater)
                if app.rebalancing:
                    return
                for tp, target, why in rewinds:
                    await consumer.seek(tp, target)
                    faustcompat.forget_gaps(consumer, tp)  # gaps Faust noted before the rewind are not holes
                    self.ledgers[tp.topic][0].rewound(tp, time.monotonic())
                    self.metrics.offset_rewinds.labels(tp.topic, why).inc()
                    log.log(logging.DEBUG if why == "rebalance" else logging.INFO,
                            "rewound %s to offset %s (%s)", tp, target, why)
            except Exception:  # noqa: BLE001 - the next tick tries again; a failure must not kill the worker
                log.exception("reconciling partition offsets failed")
