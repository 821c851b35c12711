"""The Faust worker: frame-refs in, alerts out, with a dead-letter topic and at-least-once delivery.

Delivery guarantees, in order of what happens to one reference:
1. The agent takes the message without acking it (``noack``) and starts a task for it; at
   most ``worker.max_in_flight`` tasks run at once (backpressure: the agent stops pulling).
2. The task waits for the stream's previous reference (per-stream order), decodes in a
   thread, sends every sampled frame to the cross-stream dynamic batcher, judges frames in
   order, publishes alerts and waits for the broker's acknowledgement, then saves the rule
   and sampler state in the changelog-backed table.
3. Only then is the message acked, and acks are released strictly in offset order per
   partition (Faust commits the highest contiguous acked offset; its gap check is off by
   one when acks arrive out of order, so we never let them). The agent hands out a
   partition's messages only in offset sequence from its committed offset, and seeks the
   partition back when Faust skipped or stalled (see OrderedAcks).
4. Errors: retriable ones are retried with backoff, then dead-lettered; the rest are
   dead-lettered at once. A message that went to the DLQ is acked like a handled one.
A crash after an alert was published but before the state was saved replays that reference:
the alert is published again with the same id (its id depends only on the frames), so
consumers dedupe on the ``alert-id`` header. A crash after the state was saved replays into
a no-op (the rules remember the frame ids they judged).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import faust
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from livemod.core.errors import ConfigError, LivemodError
from livemod.decoders.sampling import SamplerState
from livemod.core.types import SampledFrame
from livemod.engines.types import FrameScores
from livemod.rules.evaluate import StreamState
from livemod.rules.policy import Policy
from livemod.stream.batcher import DynamicBatcher
from livemod.stream.metrics import Metrics
from livemod.stream.pipeline import Decision, Moderator
from livemod.stream.schemas import DeadLetter, FrameRef, parse_frame_ref
from livemod.stream.settings import Settings
from livemod.stream.webhook import deliver, secret_from_env

log = logging.getLogger(__name__)

ALERT_ID_HEADER = "alert-id"
SCHEMA_HEADER = "livemod-schema"


class InternalError(LivemodError):
    """An unexpected exception (a bug): dead-lettered with its type and message."""

    reason = "internal_error"


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


def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): base, 2 x base, 4 x base, ... up to cap."""
    return min(base_s * 2 ** max(attempt - 1, 0), cap_s)


class StreamLocks:
    """One FIFO lock per stream id, forgotten when nobody holds or waits for it.

    Tasks that enter in offset order run in offset order (asyncio.Lock wakes waiters first in,
    first out, and a newcomer queues behind waiters), so a stream's references are judged in order.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


@dataclass
class _Fail:
    exc: BaseException


_END = object()


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    k = settings.kafka
    if k.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=str(k.ssl_cafile) if k.ssl_cafile else None)
    if k.ssl_certfile:
        ctx.load_cert_chain(str(k.ssl_certfile), str(k.ssl_keyfile) if k.ssl_keyfile else None)
    return ctx


def _credentials(settings: Settings) -> Any:
    k = settings.kafka
    ctx = _ssl_context(settings)
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value() if k.sasl_password else None,
            ssl_context=ctx,
            mechanism=k.sasl_mechanism or "PLAIN",
        )
    return ctx


class _App(faust.App):
    """faust.App with a hook after each rebalance has fully ended (recovery done, flow resumed)."""

    livemod_on_rebalance_end: Any = None
    livemod_topics: tuple[Any, ...] = ()
    livemod_rebalanced = False  # True once the first group join (and table recovery) has ended

    async def on_start(self) -> None:
        """Create missing topics with our partition counts before the consumer subscribes.

        Faust declares only its internal topics (the table changelog); a source topic that the
        broker auto-created would get the broker's default count and break co-partitioning.
        """
        await super().on_start()
        for topic in self.livemod_topics:
            await topic.maybe_declare()

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        self.livemod_rebalanced = True
        if self.livemod_on_rebalance_end is not None:
            asyncio.ensure_future(self.livemod_on_rebalance_end())


@dataclass
class Worker:
    """One livemod worker: a Faust app around a Moderator.

    Args:
        settings: the root settings (kafka, worker, engines sections).
        moderator: decoders + engines + rules.
        metrics: the worker's metrics (a fresh registry by default).
    """

    settings: Settings
    moderator: Moderator
    metrics: Metrics = field(default_factory=Metrics)

    REWIND_IDLE_S = 2.0  # a partition with records waiting and no progress for this long is sought back

    def __post_init__(self) -> None:
        s, k, w = self.settings, self.settings.kafka, self.settings.worker
        self.worker_id = w.id or f"{socket.gethostname()}-{os.getpid()}"
        data_root = Path(tempfile.gettempdir()) / "livemod-faust"
        data_root.mkdir(parents=True, exist_ok=True)
        app_kwargs: dict[str, Any] = dict(
            broker=k.bootstrap_servers,
            store="memory://",
            # Faust makes a data folder even for the memory store: keep it out of the working directory
            datadir=str(data_root / "{conf.name}-data"),
            autodiscover=False,
            topic_partitions=k.partitions,
            topic_replication_factor=k.replication_factor,
            broker_session_timeout=k.session_timeout_s,
            broker_heartbeat_interval=k.heartbeat_interval_s,
            broker_rebalance_timeout=k.rebalance_timeout_s,
            consumer_auto_offset_reset="earliest",
            stream_recovery_delay=0.5,
            web_enabled=True,
            web_host=w.web_host,
            web_bind=w.web_host,
            web_port=w.web_port,
            web_metrics_enabled=False,
            web_graph_enabled=False,
            web_tables_enabled=False,
            web_stats_enabled=False,
        )
        if k.producer_max_batch_size:
            app_kwargs["producer_max_batch_size"] = k.producer_max_batch_size
        creds = _credentials(s)
        if creds is not None:
            app_kwargs["broker_credentials"] = creds
        self.app = _App(k.app_id, **app_kwargs)
        self.app.livemod_on_rebalance_end = self._reconcile
        raw = dict(key_serializer="raw", value_serializer="raw")
        self.refs_topic = self.app.topic(k.frame_refs_topic, partitions=k.partitions, **raw)
        self.alerts_topic = self.app.topic(k.alerts_topic, partitions=k.partitions, **raw)
        self.dlq_topic = self.app.topic(k.dlq_topic, partitions=k.partitions, **raw)
        self.reviews_topic = self.app.topic(k.reviews_topic, partitions=k.partitions, **raw)
        self.callbacks_dlq_topic = self.app.topic(k.callbacks_dlq_topic, partitions=k.partitions, **raw)
        self.app.livemod_topics = (self.refs_topic, self.alerts_topic, self.dlq_topic, self.reviews_topic,
                                   self.callbacks_dlq_topic)
        self.state = self.app.Table(
            "stream-state", default=dict, partitions=k.partitions,
            schema=faust.Schema(key_serializer="json", value_serializer="json"),
        )
        self.acks = OrderedAcks()
        self.cb_acks = OrderedAcks()
        self.decode_pool = ThreadPoolExecutor(w.decode_threads, thread_name_prefix="livemod-decode")
        self.engine_pool = ThreadPoolExecutor(1, thread_name_prefix="livemod-engine")
        self.judge_pool = ThreadPoolExecutor(1, thread_name_prefix="livemod-judge")
        self.batcher: DynamicBatcher[tuple[SampledFrame, Policy], dict[str, FrameScores]] = DynamicBatcher(
            self.moderator.score,
            max_batch=s.engines.max_batch,
            max_wait_s=s.engines.batch_wait_ms / 1000,
            executor=self.engine_pool,
            on_batch=lambda n, dt: self.metrics.infer_seconds.observe(dt),
        )
        self.moderator.on_batch = self._on_engine_batch
        self._slots = asyncio.Semaphore(w.max_in_flight)
        self._stream_locks = StreamLocks()
        self._cb_slots = asyncio.Semaphore(16)
        self._http: Any = None
        self._generation = 0  # bumped when partitions are revoked
        self._reconcile_lock = asyncio.Lock()
        self._faust_add_gap: Any = None
        self._tasks = 0
        self._stop = threading.Event()
        self.metrics.backend.labels(self.moderator.choice.backend, self.moderator.choice.reason).set(1)
        self._wire()

    # ---- wiring ----------------------------------------------------------------------------

    def _wire(self) -> None:
        app = self.app

        @app.agent(self.refs_topic, name="livemod-refs")
        async def refs(stream: faust.StreamT) -> None:
            async for event in stream.noack().events():
                log.debug("received offset %s of %s", event.message.offset, event.message.tp)
                entry = await self._admit(self.acks, event)
                if entry is None:
                    continue
                await self._slots.acquire()
                log.debug("dispatching offset %s of %s", event.message.offset, event.message.tp)
                self.metrics.in_flight.inc()
                asyncio.ensure_future(self._handle(event, entry))

        @app.agent(self.alerts_topic, name="livemod-callbacks")
        async def callbacks(stream: faust.StreamT) -> None:
            async for event in stream.noack().events():
                entry = await self._admit(self.cb_acks, event)
                if entry is None:
                    continue
                await self._cb_slots.acquire()
                asyncio.ensure_future(self._callback(event, entry))

        @app.on_partitions_revoked.connect
        async def on_revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
            # Let references in flight finish and ack (bounded), then forget the rest: a late
            # finisher must not ack an offset that the next owner will deliver again.
            deadline = time.monotonic() + self.settings.kafka.rebalance_timeout_s / 2
            while self._tasks and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self._generation += 1
            dropped = self.acks.reset() + self.cb_acks.reset()
            if dropped:
                log.warning("partitions revoked with %d references unfinished; they will be consumed again", dropped)

        @app.timer(interval=5.0)
        async def lag() -> None:
            self._update_lag()

        @app.timer(interval=1.0)
        async def watch_offsets() -> None:
            await self._reconcile()

        @app.page("/metrics")
        async def metrics(web: Any, request: Any) -> Any:
            self._update_lag()
            return web.bytes(self.metrics.render(), content_type="text/plain; version=0.0.4")

        @app.page("/debug/tasks")
        async def tasks(web: Any, request: Any) -> Any:
            import io
            buf = io.StringIO()
            for task in asyncio.all_tasks():
                buf.write(f"--- {task.get_name()}\n")
                c: Any = task.get_coro()
                while c is not None:
                    f = getattr(c, "cr_frame", None) or getattr(c, "ag_frame", None) or getattr(c, "gi_frame", None)
                    if f is not None:
                        buf.write(f"    {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}\n")
                    c = getattr(c, "cr_await", None) or getattr(c, "ag_await", None) or getattr(c, "gi_yieldfrom", None)
            return web.text(buf.getvalue())

        @app.page("/health")
        async def health(web: Any, request: Any) -> Any:
            return web.json({"status": "ok", "worker": self.worker_id})

        @app.page("/ready")
        async def ready(web: Any, request: Any) -> Any:
            try:
                assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
            except ConsumerNotStarted:  # starting up: not ready, not an error
                assigned = []
            # a worker may legitimately own nothing (more workers than partitions): ready means
            # it joined the group, recovered its tables and is not rebalancing now
            ok = app.livemod_rebalanced and not app.rebalancing
            self.metrics.ready.set(1 if ok else 0)
            body = {"ready": ok, "worker": self.worker_id, "backend": self.moderator.choice.backend,
                    "models": self.moderator.models, "assigned": assigned}
            return web.json(body, status=200 if ok else 503)

    async def _admit(self, acks: OrderedAcks, event: Any) -> PendingAck | None:
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
            if self._faust_add_gap is not None:
                await self._faust_add_gap(msg.tp, entry.gap[0], entry.gap[1])
        return entry

    async def _reconcile(self) -> None:
        """Start each newly assigned source partition at its committed offset, and seek back any
        partition that skipped ahead of, or stalled behind, the offset its agent must handle next.

        Runs after each rebalance and once a second. See OrderedAcks for why it is needed.
        """
        app = self.app
        if not app.livemod_rebalanced or app.rebalancing or app.consumer is None:
            return
        async with self._reconcile_lock:
            consumer = app.consumer
            try:
                self._take_over_gaps(consumer)
                ledgers = {self.settings.kafka.frame_refs_topic: (self.acks, self._slots),
                           self.settings.kafka.alerts_topic: (self.cb_acks, self._cb_slots)}
                now = time.monotonic()
                fresh = [tp for tp in consumer.assignment()
                         if tp.topic in ledgers and ledgers[tp.topic][0].next_offset(tp) is None]
                rewinds: list[tuple[TP, int, str]] = []
                if fresh:
                    committed = {tp: consumer._committed_offset.get(tp) for tp in fresh}  # no public accessor
                    unknown = [tp for tp, off in committed.items() if off is None]
                    earliest = await consumer.earliest_offsets(*unknown) if unknown else {}
                    for tp in fresh:
                        start = committed[tp] if committed[tp] is not None else (earliest.get(tp) or 0)
                        rewinds.append((tp, ledgers[tp.topic][0].begin(tp, start, now), "rebalance"))
                for acks, slots in ledgers.values():
                    if slots.locked():
                        acks.busy(now)  # held back by backpressure, not stalled
                        continue
                    rewinds += acks.to_rewind(now, self.REWIND_IDLE_S, consumer.highwater)
                if app.rebalancing:
                    return
                for tp, target, why in rewinds:
                    await consumer.seek(tp, target)
                    consumer._gap.pop(tp, None)  # gaps Faust noted before the rewind are not holes
                    ledgers[tp.topic][0].rewound(tp, time.monotonic())
                    self.metrics.offset_rewinds.labels(tp.topic, why).inc()
                    log.log(logging.DEBUG if why == "rebalance" else logging.INFO,
                            "rewound %s to offset %s (%s)", tp, target, why)
            except Exception:  # noqa: BLE001 - the next tick tries again; a failure must not kill the worker
                log.exception("reconciling partition offsets failed")

    def _take_over_gaps(self, consumer: Any) -> None:
        """Stop Faust from treating holes in our source topics' offsets as handled.

        Its fetch loop records a hole whenever an offset arrives past the last one read, and
        commits across it; after a dropped batch that commits references nobody handled. The
        agents' ledgers confirm real holes themselves and hand them to the original method.
        """
        if self._faust_add_gap is not None:
            return
        original = consumer._add_gap  # private: re-check on faust-streaming upgrades
        sources = {self.settings.kafka.frame_refs_topic, self.settings.kafka.alerts_topic}

        async def add_gap(tp: TP, offset_from: int, offset_to: int) -> None:
            if tp.topic not in sources:
                await original(tp, offset_from, offset_to)

        consumer._add_gap = add_gap
        self._faust_add_gap = original

    def _on_engine_batch(self, model: str, size: int, stage: str) -> None:
        self.metrics.batch_size.labels(model, stage).observe(size)
        self.metrics.frames_classified.labels(model, stage).inc(size)

    def _update_lag(self) -> None:
        consumer = self.app.consumer
        if consumer is None:
            return
        try:
            for tp in consumer.assignment():
                if tp.topic != self.settings.kafka.frame_refs_topic:
                    continue
                high = consumer.highwater(tp)
                committed = consumer._committed_offset.get(tp) or 0  # faust keeps no public accessor
                if high is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - committed))
        except Exception:  # noqa: BLE001 - metrics must never break the worker
            log.debug("lag update failed", exc_info=True)

    # ---- references ------------------------------------------------------------------------

    async def _handle(self, event: faust.types.EventT, entry: PendingAck) -> None:
        msg = event.message
        outcome = "handled"
        generation = self._generation
        self._tasks += 1
        try:
            try:
                ref = parse_frame_ref(msg.value)
            except LivemodError as exc:
                outcome = "dead_letter"
                await self._dead_letter(msg, exc, attempts=1)
                return
            async with self._stream_locks.hold(ref.stream_id):
                log.debug("%s: handling offset %s of %s", ref.key, msg.offset, msg.tp)
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        await self._process(ref, msg)
                        log.debug("%s: handled offset %s of %s", ref.key, msg.offset, msg.tp)
                        break
                    except LivemodError as exc:
                        if exc.retriable and attempts <= self.settings.worker.retries:
                            self.metrics.retries.labels(exc.reason).inc()
                            delay = backoff_delay(attempts, self.settings.worker.retry_backoff_s,
                                                  self.settings.worker.retry_backoff_max_s)
                            log.warning("%s: %s (attempt %d); retrying in %.1f s", ref.key, exc, attempts, delay)
                            await asyncio.sleep(delay)
                            continue
                        outcome = "dead_letter"
                        await self._dead_letter(msg, exc, attempts=attempts)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # a bug: keep going, keep the message in the DLQ
                        log.exception("%s: unexpected error", ref.key)
                        outcome = "dead_letter"
                        err = InternalError(f"{type(exc).__name__}: {exc}")
                        await self._dead_letter(msg, err, attempts=attempts)
                        break
        except asyncio.CancelledError:
            outcome = "cancelled"  # shutting down: not acked, so it is consumed again
            raise
        except Exception:  # the DLQ itself failed: do not ack, the message is consumed again
            log.exception("could not dead-letter offset %s of %s", msg.offset, msg.tp)
            outcome = "unacked"
        finally:
            self.metrics.refs.labels(outcome).inc()
            self.metrics.in_flight.dec()
            self._slots.release()
            self._tasks -= 1
            if outcome in ("handled", "dead_letter") and generation == self._generation:
                self.acks.done(entry)
            log.debug("offset %s of %s: %s; %d awaiting their ack", msg.offset, msg.tp, outcome, self.acks.outstanding())

    async def _process(self, ref: FrameRef, msg: Any) -> None:
        moderator = self.moderator
        policy = moderator.policy(ref.policy)
        if ref.wall_start is None:  # the message timestamp makes frame times (and alert ids) replay-stable
            ref = ref.model_copy(update={"wall_start": float(msg.timestamp)})
        saved = self.state[ref.stream_id] or {}
        rules_state = StreamState.from_dict(saved.get("rules"))
        if ref.kind == "end":
            rules_state, decision = moderator.end(rules_state, ref, policy)
            await self._publish(ref, decision)
            # the sampler starts afresh too: a stream that comes back is a new broadcast
            self.state[ref.stream_id] = {"rules": rules_state.to_dict(), "sampler": None}
            return
        sampler = SamplerState.from_dict(saved["sampler"]) if saved.get("sampler") else None
        sampler = sampler or SamplerState(mode=self.settings.decoder.sampling.mode)
        decoded_before = sampler.decoded
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        stop = threading.Event()
        t0 = time.perf_counter()

        def pump() -> None:
            try:
                for frame in moderator.decode(ref, sampler, stop):
                    asyncio.run_coroutine_threadsafe(queue.put(frame), loop).result()
                    if stop.is_set():
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop
                asyncio.run_coroutine_threadsafe(queue.put(_Fail(exc)), loop).result()
            else:
                asyncio.run_coroutine_threadsafe(queue.put(_END), loop).result()

        pump_future = loop.run_in_executor(self.decode_pool, pump)
        pending: collections.deque[tuple[SampledFrame, asyncio.Future[dict[str, FrameScores]]]] = collections.deque()
        failure: BaseException | None = None

        async def drain(everything: bool) -> None:
            nonlocal rules_state
            while pending and (everything or pending[0][1].done()):
                frame, fut = pending.popleft()
                scores = await fut
                rules_state = await self._judge(rules_state, ref, frame, scores, policy)

        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, _Fail):
                    failure = item.exc
                    break
                self.metrics.frames_sampled.labels(item.reason).inc()
                if item.reason == "duplicate":
                    self.metrics.frames_duplicate.inc()
                pending.append((item, asyncio.ensure_future(self.batcher.submit((item, policy)))))
                await drain(False)
            await drain(True)
        finally:
            stop.set()
            for _frame, fut in pending:
                fut.cancel()
            while not queue.empty():  # let a blocked pump finish
                queue.get_nowait()
            if not pump_future.done():
                await pump_future
            self.metrics.decode_seconds.observe(time.perf_counter() - t0)
            self.metrics.frames_decoded.inc(max(0, sampler.decoded - decoded_before))
            self.state[ref.stream_id] = {"rules": rules_state.to_dict(), "sampler": sampler.to_dict()}
        if failure is not None:
            if isinstance(failure, LivemodError):
                raise failure
            raise InternalError(f"decoder: {type(failure).__name__}: {failure}") from failure

    async def _judge(
        self, state: StreamState, ref: FrameRef, frame: SampledFrame, scores: dict[str, FrameScores], policy: Policy
    ) -> StreamState:
        loop = asyncio.get_running_loop()
        state, decision = await loop.run_in_executor(
            self.judge_pool, self.moderator.judge, state, ref, frame, scores, policy
        )
        self.metrics.e2e_seconds.observe(max(0.0, time.time() - frame.wall_clock))
        for fs in scores.values():
            for label, rc in fs.rechecks.items():
                self.metrics.rechecks.labels(fs.model, label, str(rc.after > rc.before).lower()).inc()
        await self._publish(ref, decision)
        return state

    async def _publish(self, ref: FrameRef, decision: Decision) -> None:
        """Publish a decision's alerts and review records and wait for the broker's acknowledgements."""
        now = time.time()
        sends = []
        for alert in decision.alerts:
            alert["latency"]["published_at"] = round(now, 3)
            alert["worker"] = self.worker_id
            body = json.dumps(alert, sort_keys=True).encode()
            sends.append(await self.alerts_topic.send(
                key=ref.stream_id.encode(), value=body,
                headers=[(ALERT_ID_HEADER, alert["id"].encode()), (SCHEMA_HEADER, b"alerts/1")],
            ))
            self.metrics.alerts.labels(alert["rule"], alert["label"], alert["severity"]).inc()
        for review in decision.reviews:
            sends.append(await self.reviews_topic.send(key=ref.stream_id.encode(), value=json.dumps(review).encode()))
            self.metrics.reviews.labels(review["kind"]).inc()
        for fut in sends:
            await fut  # the broker acknowledged it

    async def _dead_letter(self, msg: Any, exc: LivemodError, *, attempts: int) -> None:
        record = DeadLetter(
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key.decode("utf-8", "replace") if isinstance(msg.key, bytes) else msg.key,
            value=base64.b64encode(msg.value or b"").decode(),
            headers={k: base64.b64encode(v or b"").decode() for k, v in (msg.headers or [])},
            error_class=type(exc).__name__,
            reason=exc.reason,
            message=str(exc)[:2000],
            retriable=exc.retriable,
            attempts=attempts,
            worker_id=self.worker_id,
        )
        log.warning("dead-letter %s[%s]@%s: %s (%s)", msg.topic, msg.partition, msg.offset, exc.reason, exc)
        fut = await self.dlq_topic.send(
            key=msg.key if isinstance(msg.key, bytes) else None,
            value=record.model_dump_json().encode(),
            headers=[("reason", exc.reason.encode()), ("error-class", type(exc).__name__.encode())],
        )
        await fut
        self.metrics.dlq.labels(self.settings.kafka.dlq_topic, exc.reason).inc()

    # ---- callbacks -------------------------------------------------------------------------

    async def _callback(self, event: faust.types.EventT, entry: PendingAck) -> None:
        msg = event.message
        generation = self._generation
        try:
            try:
                alert = json.loads(msg.value)
                policy = self.moderator.policy(alert.get("policy"))
            except (ValueError, ConfigError):
                return  # not ours to deliver
            if policy.webhook is None:
                return
            if self._http is None:
                import aiohttp

                self._http = aiohttp.ClientSession()
            hook = policy.webhook
            result = await deliver(self._http, hook.url, msg.value, alert.get("id", ""), secret_from_env(hook.secret_env),
                                   ttl_s=hook.ttl_s, backoff_s=self.settings.worker.retry_backoff_s,
                                   backoff_max_s=self.settings.worker.retry_backoff_max_s)
            self.metrics.callbacks.labels("delivered" if result.ok else "dead_letter").inc()
            if not result.ok:
                record = {"v": 1, "alert_id": alert.get("id"), "url": hook.url, "attempts": result.attempts,
                          "status": result.status, "error": result.error, "worker_id": self.worker_id,
                          "time": time.time(), "alert": alert}
                fut = await self.callbacks_dlq_topic.send(key=msg.key, value=json.dumps(record).encode(),
                                                          headers=[(ALERT_ID_HEADER, str(alert.get("id")).encode())])
                await fut
                self.metrics.dlq.labels(self.settings.kafka.callbacks_dlq_topic, "callback_ttl").inc()
        finally:
            self._cb_slots.release()
            if generation == self._generation:
                self.cb_acks.done(entry)


def make_worker(settings: Settings, moderator: Moderator | None = None) -> Worker:
    """Build a worker (loads the models unless a Moderator is given)."""
    return Worker(settings, moderator or Moderator(settings))


def run_worker(settings: Settings) -> int:
    """Run one worker until SIGTERM/SIGINT (`livemod worker`)."""
    logging.getLogger().setLevel(settings.log_level)
    logging.getLogger("livemod").setLevel(settings.log_level)
    worker = make_worker(settings)
    log.warning("livemod worker %s: backend %s (%s); brokers %s; web %s:%s",
                worker.worker_id, worker.moderator.choice.backend, worker.moderator.choice.reason,
                settings.kafka.bootstrap_servers, settings.worker.web_host, settings.worker.web_port)
    faust_worker = faust.Worker(worker.app, loglevel=settings.log_level, quiet=True, override_logging=False)
    faust_worker.execute_from_commandline()
    return 0


async def create_topics(bootstrap: str, names: Sequence[tuple[str, int]], *, replication: int = 1) -> None:
    """Create missing topics with the given partition counts (the broker's auto-create picks its own)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, n, replication) for name, n in names if name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


def service_topics(settings: Settings) -> list[tuple[str, int]]:
    k = settings.kafka
    return [(t, k.partitions) for t in (k.frame_refs_topic, k.alerts_topic, k.dlq_topic, k.reviews_topic,
                                         k.callbacks_dlq_topic)] + [(f"{k.app_id}-stream-state-changelog", k.partitions)]
