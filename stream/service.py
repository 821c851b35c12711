"""The Faust worker: frame-refs in, alerts out; every message has a fate.

What happens to one reference:
1. The agent takes the message without acking it (``noack``); its ledger (offsets.py) hands
   out each partition's messages strictly in offset order, and at most
   ``worker.max_in_flight`` are handled at once (backpressure: the agent stops pulling).
2. It is checked: size (``kafka.max_ref_bytes``), JSON and fields, and that the Kafka key is
   its ``stream_id``. Anything else goes to the dead-letter topic with a reason.
3. It waits for its stream's previous reference, then runs through the one pipeline loop
   (pipeline.Moderator.run) with the cross-stream batcher as scorer; alerts and review records
   are published and acknowledged by the broker frame by frame; then the stream's state is
   saved in the changelog-backed table.
4. Only then is it acked, and acks go out in offset order per partition, so a commit never
   passes an unhandled reference.
Errors: retriable ones are retried with backoff, then dead-lettered; the rest are dead-lettered
at once. A dead letter that cannot be sent is retried; after ``worker.dlq_retries`` the partition
is paused and reported (``/ready`` 503, ``livemod_partitions_blocked``) while the worker keeps
trying, never silently held. A ``live`` reference is followed for ``worker.live_chunk_s`` at a
time, then continued by a new reference on the same partition and acked, so no message stays in
flight for a whole broadcast and a rebalance waits at most one chunk (``worker.revoke_wait_s``).
A crash after an alert was published but before the state was saved replays that reference: the
alert is published again with the same id, so consumers dedupe on the ``alert-id`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import tempfile
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import faust
from faust.exceptions import ConsumerNotStarted
from aiokafka.errors import KafkaError

from livemod.core.errors import LivemodError, MessageError
from livemod.core.types import SampledFrame
from livemod.decoders.sampling import SamplerState
from livemod.engines.types import FrameScores
from livemod.rules.evaluate import StreamState
from livemod.rules.policy import Policy
from livemod.stream import faustcompat, web
from livemod.stream.batcher import DynamicBatcher
from livemod.stream.callbacks import Callbacks
from livemod.stream.metrics import Metrics
from livemod.stream.offsets import OrderedAcks, PendingAck, Reconciler
from livemod.stream.pipeline import Decision, Moderator, Progress
from livemod.stream.reload import ReloadStatus, config_digest, initial_status
from livemod.stream.records import DeadLetter, FrameRef, LiveProgress, StreamStateValue, parse_frame_ref
from livemod.stream.settings import Settings
from livemod.stream.topics import ssl_context

log = logging.getLogger(__name__)

ALERT_ID_HEADER = "alert-id"
PARSED_STATES = 10_000  # parsed stream states kept in memory
STREAM_ACTIVE_S = 60.0  # a stream with a reference in the last minute counts as active
SCHEMA_HEADER = "livemod-schema"


class InternalError(LivemodError):
    """An unexpected exception (a bug): dead-lettered with its type and message."""

    reason = "internal_error"


class BrokerSendError(LivemodError):
    """The broker did not take a record the worker published (timeout, leader moving): retried."""

    retriable = True
    reason = "broker_unavailable"


class _Revoked(Exception):
    """The reference's partition was revoked while it ran: not acked, the next owner handles it."""


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


def _credentials(settings: Settings) -> Any:
    k = settings.kafka
    ctx = ssl_context(k)
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value() if k.sasl_password else None,
            ssl_context=ctx,
            mechanism=k.sasl_mechanism or "PLAIN",
        )
    return ctx


def accept(msg: Any, max_bytes: int) -> FrameRef:
    """Check one frame-refs message: size, schema, and that its key is its stream id.

    Raises:
        MessageError: reasons ``too_large``, ``bad_json``, ``unknown_version``, ``invalid_fields``,
            ``key_mismatch``.
    """
    size = len(msg.value or b"")
    if size > max_bytes:
        raise MessageError(f"value of {size} bytes is larger than kafka.max_ref_bytes ({max_bytes})",
                           reason="too_large")
    ref = parse_frame_ref(msg.value)
    key = msg.key.decode("utf-8", "replace") if isinstance(msg.key, bytes) else msg.key
    if key != ref.stream_id:
        shown = "no key" if key is None else f"key {key[:100]!r}"
        raise MessageError(f"{shown} but stream_id {ref.stream_id!r}: a reference's key must be its stream id, "
                           "so that all of a stream's references share a partition and stay in order",
                           reason="key_mismatch")
    return ref


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
            producer_max_request_size=k.max_message_bytes + 65_536,
            producer_request_timeout=k.request_timeout_s,
            stream_recovery_delay=0.5,
            web_enabled=True,
            web_host=w.web_host,
            web_bind=w.web_host,
            web_port=w.web_port,
            web_metrics_enabled=False,
            web_graph_enabled=False,
            web_tables_enabled=False,
            web_stats_enabled=False,
            **faustcompat.app_settings(),
        )
        if k.producer_max_batch_size:
            app_kwargs["producer_max_batch_size"] = k.producer_max_batch_size
        creds = _credentials(s)
        if creds is not None:
            app_kwargs["broker_credentials"] = creds
        self.app = faustcompat.App(k.app_id, **app_kwargs)
        if k.idempotent_producer:
            faustcompat.idempotent_producer(self.app)
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
        self._slots = asyncio.Semaphore(w.max_in_flight)
        self._cb_slots = asyncio.Semaphore(16)
        self.reconciler = Reconciler(self.app, {k.frame_refs_topic: (self.acks, self._slots),
                                                k.alerts_topic: (self.cb_acks, self._cb_slots)}, self.metrics)
        self.app.livemod_on_rebalance_end = self.reconciler.tick
        self.decode_pool = ThreadPoolExecutor(w.decode_threads, thread_name_prefix="livemod-decode")
        self.engine_pool = ThreadPoolExecutor(1, thread_name_prefix="livemod-engine")
        self.batcher: DynamicBatcher[tuple[SampledFrame, Policy, Moderator], dict[str, FrameScores]] = DynamicBatcher(
            score_batch,
            max_batch=s.engines.max_batch,
            max_wait_s=s.engines.batch_wait_ms / 1000,
            executor=self.engine_pool,
            on_batch=lambda n, dt: self.metrics.infer_seconds.observe(dt),
            producers=lambda: self._tasks,  # references in flight, each decoding one stream's media
            caller=lambda item: item[0].stream_id,
        )
        self.moderator.on_batch = self._on_engine_batch
        self.config = initial_status(s)
        self._reloading = False
        self.callbacks = Callbacks(self)
        self.blocked: dict[Any, str] = {}  # partition -> why it is paused (a dead letter that cannot be sent)
        self._stream_locks = StreamLocks()
        # partition -> (stop, revoked) events of its live references in flight
        self._live: dict[Any, set[tuple[threading.Event, threading.Event]]] = defaultdict(set)
        # stream id -> (the table value last saved, its live progress, its parsed state): parsing is
        # skipped while the table still holds that very value (the memory store keeps the object)
        self._parsed: OrderedDict[str, tuple[Any, LiveProgress | None, Progress]] = OrderedDict()
        self._streams_seen: dict[str, float] = {}  # stream id -> monotonic time of its last reference
        self._generation = 0  # bumped when partitions are revoked
        self._tasks = 0
        self.metrics.backend.labels(self.moderator.choice.backend, self.moderator.choice.reason).set(1)
        self._wire()

    # ---- wiring ----------------------------------------------------------------------------

    def _wire(self) -> None:
        app = self.app

        @app.agent(self.refs_topic, name="livemod-refs")
        async def refs(stream: faust.StreamT) -> None:
            async for event in stream.noack().events():
                entry = await self.reconciler.admit(self.acks, event)
                if entry is None:
                    continue
                await self._slots.acquire()
                self.metrics.in_flight.inc()
                asyncio.ensure_future(self._handle(event, entry))

        @app.agent(self.alerts_topic, name="livemod-callbacks")
        async def callbacks(stream: faust.StreamT) -> None:
            async for event in stream.noack().events():
                entry = await self.reconciler.admit(self.cb_acks, event)
                if entry is None:
                    continue
                await self._cb_slots.acquire()
                asyncio.ensure_future(self._callback(event, entry))

        @app.on_partitions_revoked.connect
        async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
            await self._on_revoked(revoked)

        @app.timer(interval=5.0)
        async def gauges() -> None:
            self.update_lag()
            self.metrics.ready.set(1 if web.readiness(self)[0] else 0)
            now = time.monotonic()
            for sid in [sid for sid, t in self._streams_seen.items() if now - t > STREAM_ACTIVE_S]:
                del self._streams_seen[sid]
            self.metrics.streams_active.set(len(self._streams_seen))

        @app.timer(interval=1.0)
        async def watch_offsets() -> None:
            await self.reconciler.tick()

        if self.settings.rules.reload_interval_s > 0:
            @app.timer(interval=self.settings.rules.reload_interval_s)
            async def watch_config() -> None:
                await self.reload_if_changed()

        web.register(self)

    async def _on_revoked(self, revoked: set[Any]) -> None:
        """Stop live references of revoked partitions, let the rest finish (bounded), then forget them.

        A late finisher must not ack an offset that the next owner will deliver again.
        """
        for tp in revoked:
            for stop, gone in self._live.pop(tp, set()):
                gone.set()
                stop.set()
        deadline = time.monotonic() + self.settings.worker.revoke_wait_s
        while self._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._generation += 1
        dropped = self.acks.reset() + self.cb_acks.reset()
        for tp in list(self.blocked):
            if tp in revoked:
                del self.blocked[tp]
        for tp in revoked:  # a partition now owned elsewhere must not keep reporting its old lag here
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))
        self.metrics.partitions_blocked.set(len(self.blocked))
        if dropped:
            log.warning("partitions revoked with %d references unfinished; they will be consumed again", dropped)

    async def reload_if_changed(self) -> bool:
        """Swap in a new Moderator when the policies or cards changed and load cleanly; True when swapped."""
        if self._reloading:
            return False
        loop = asyncio.get_running_loop()
        digest = await loop.run_in_executor(None, config_digest, self.settings)
        if digest in (self.config.digest, self.config.failed_digest):
            return False
        self._reloading = True
        try:
            fresh = await loop.run_in_executor(None, Moderator, self.settings)  # validates, loads every model
        except Exception as exc:  # noqa: BLE001 - any failure keeps the running version
            self.config.failed_digest = digest
            self.config.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            self.metrics.config_reloads.labels("failed").inc()
            self.metrics.config_reload_failed.set(1)
            log.error("policies/cards changed but do not load; keeping the running version: %s", self.config.last_error)
            return False
        finally:
            self._reloading = False
        fresh.on_batch = self._on_engine_batch
        old, self.moderator = self.moderator, fresh  # between references: each one keeps the Moderator it started with
        self.config = ReloadStatus(digest=digest, loaded_at=time.time())
        self.metrics.config_reloads.labels("ok").inc()
        self.metrics.config_reload_failed.set(0)
        log.warning("policies/cards reloaded (%s): policies %s; models %s", digest[:12],
                    ", ".join(f"{n} v{fresh.policy_version(p)}" for n, p in fresh.policies.items()),
                    ", ".join(fresh.models))
        if old.choice != fresh.choice:
            self.metrics.backend.clear()
            self.metrics.backend.labels(fresh.choice.backend, fresh.choice.reason).set(1)
        return True

    def _on_engine_batch(self, model: str, size: int, stage: str) -> None:
        self.metrics.batch_size.labels(model, stage).observe(size)
        self.metrics.frames_classified.labels(model, stage).inc(size)

    def update_lag(self) -> None:
        """Set ``livemod_consumer_lag`` for each assigned frame-refs partition."""
        consumer = self.app.consumer
        if consumer is None:
            return
        try:
            for tp in faustcompat.assignment(self.app):
                if tp.topic != self.settings.kafka.frame_refs_topic:
                    continue
                high = consumer.highwater(tp)
                committed = faustcompat.committed_offset(consumer, tp) or 0
                if high is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - committed))
        except Exception:  # noqa: BLE001 - metrics must never break the worker
            log.debug("lag update failed", exc_info=True)

    # ---- references ------------------------------------------------------------------------

    async def _handle(self, event: Any, entry: PendingAck) -> None:
        msg = event.message
        outcome = "handled"
        generation = self._generation
        self._tasks += 1
        try:
            try:
                ref = accept(msg, self.settings.kafka.max_ref_bytes)
            except LivemodError as exc:
                outcome = "dead_letter"
                await self._dead_letter(msg, exc, attempts=1, generation=generation)
                return
            self._streams_seen[ref.stream_id] = time.monotonic()
            async with self._stream_locks.hold(ref.stream_id):
                outcome = await self._with_retries(ref, msg, generation)
        except _Revoked:
            outcome = "revoked"  # not acked: the partition's next owner handles it
        except asyncio.CancelledError:
            outcome = "cancelled"  # shutting down: not acked, so it is consumed again
            raise
        finally:
            self.metrics.refs.labels(outcome).inc()
            self.metrics.in_flight.dec()
            self._slots.release()
            self._tasks -= 1
            if outcome in ("handled", "dead_letter", "skipped") and generation == self._generation:
                self.acks.done(entry)
            log.debug("offset %s of %s: %s; %d awaiting their ack", msg.offset, msg.tp, outcome,
                      self.acks.outstanding())

    async def _with_retries(self, ref: FrameRef, msg: Any, generation: int) -> str:
        """Handle one reference, retrying retriable errors; returns the outcome for the metrics."""
        w = self.settings.worker
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self._process(ref, msg, generation)
            except LivemodError as exc:
                if exc.retriable and attempts <= w.retries:
                    self.metrics.retries.labels(exc.reason).inc()
                    delay = backoff_delay(attempts, w.retry_backoff_s, w.retry_backoff_max_s)
                    log.warning("%s: %s (attempt %d); retrying in %.1f s", ref.key, exc, attempts, delay)
                    await asyncio.sleep(delay)
                    continue
                await self._dead_letter(msg, exc, attempts=attempts, generation=generation)
                return "dead_letter"
            except (asyncio.CancelledError, _Revoked):
                raise
            except Exception as exc:  # a bug: keep going, keep the message in the DLQ
                log.exception("%s: unexpected error", ref.key)
                err = InternalError(f"{type(exc).__name__}: {exc}")
                await self._dead_letter(msg, err, attempts=attempts, generation=generation)
                return "dead_letter"

    async def _process(self, ref: FrameRef, msg: Any, generation: int) -> str:
        """Run one reference through the pipeline loop and save its stream's state."""
        moderator = self.moderator  # this reference is judged by one version of the policies and models
        if ref.wall_start is None:  # the message timestamp makes frame times (and alert ids) replay-stable
            ref = ref.model_copy(update={"wall_start": float(msg.timestamp)})
        raw = self.state[ref.stream_id]
        cached = self._parsed.pop(ref.stream_id, None)  # taken: put back only with what is saved next
        if cached is not None and cached[0] is raw:
            _raw, live, progress = cached
        else:
            saved = StreamStateValue.load(raw)
            live = saved.live
            progress = Progress(StreamState.from_dict(saved.rules),
                                SamplerState.from_dict(saved.sampler) if saved.sampler else None)
        if ref.kind == "live" and live is not None and live.seq == ref.seq and (ref.chunk or 0) < live.chunk:
            log.info("%s: live chunk already followed and continued; skipping the copy", ref.key)
            return "skipped"
        if ref.kind == "end":
            live = None
        stop = threading.Event()
        chunk_over = threading.Event()
        gone = threading.Event()  # the partition was revoked
        timer = None
        if ref.kind == "live":
            self._live[msg.tp].add((stop, gone))

            def end_chunk() -> None:
                chunk_over.set()
                stop.set()

            timer = asyncio.get_running_loop().call_later(self.settings.worker.live_chunk_s, end_chunk)
        decoded_before = progress.sampler.decoded if progress.sampler else 0
        t0 = time.perf_counter()
        try:
            submit = functools.partial(self._submit, moderator)
            async for step in moderator.run(ref, progress, submit, stop=stop, executor=self.decode_pool,
                                            on_sampled=self._on_sampled):
                if generation != self._generation:
                    raise _Revoked()
                if step.frame is not None:
                    self._on_judged(step.frame, step.scores)
                await self._publish(ref, step.decision)
            if ref.kind == "live" and generation == self._generation and not gone.is_set():
                if chunk_over.is_set():  # published before the state that says so: a crash replays, never loses it
                    await self._continue_live(ref)
                live = LiveProgress(seq=ref.seq, chunk=(ref.chunk or 0) + 1, uri=ref.uri or "")
        finally:
            if timer is not None:
                timer.cancel()
                self._live[msg.tp].discard((stop, gone))
            self.metrics.decode_seconds.observe(time.perf_counter() - t0)
            if progress.sampler is not None:
                self.metrics.frames_decoded.inc(max(0, progress.sampler.decoded - decoded_before))
            if generation == self._generation:  # never write state for a partition this worker gave up
                value = StreamStateValue.dump(progress.rules.to_dict(),
                                              progress.sampler.to_dict() if progress.sampler else None, live)
                self.state[ref.stream_id] = value
                self._parsed[ref.stream_id] = (value, live, progress)
                while len(self._parsed) > PARSED_STATES:
                    self._parsed.popitem(last=False)
        if generation != self._generation or gone.is_set():
            raise _Revoked()
        return "handled"

    async def _submit(self, moderator: Moderator, frame: SampledFrame, policy: Policy) -> dict[str, FrameScores]:
        return await self.batcher.submit((frame, policy, moderator))

    async def _continue_live(self, ref: FrameRef) -> None:
        """Publish the next chunk of a live reference (same key, so the same partition, after this one)."""
        nxt = ref.continuation(self.settings.worker.live_chunk_s)
        if nxt is None:
            log.info("%s: the live reference's duration is used up", ref.key)
            return
        fut = await self.refs_topic.send(key=ref.stream_id.encode(), value=nxt.to_bytes(),
                                         headers=[(SCHEMA_HEADER, b"frame-refs/1")])
        await fut
        self.metrics.live_chunks.inc()
        log.info("%s: live chunk of %.0f s done; continued as %s", ref.key, self.settings.worker.live_chunk_s, nxt.key)

    def _on_sampled(self, frame: SampledFrame) -> None:
        self.metrics.frames_sampled.labels(frame.reason).inc()
        if frame.reason == "duplicate":
            self.metrics.frames_duplicate.inc()
        if frame.gap_s is not None:
            self.metrics.sample_gap.observe(frame.gap_s)

    def _on_judged(self, frame: SampledFrame, scores: dict[str, FrameScores]) -> None:
        self.metrics.e2e_seconds.observe(max(0.0, time.time() - frame.wall_clock))
        for fs in scores.values():
            for label, rc in fs.rechecks.items():
                self.metrics.rechecks.labels(fs.model, label, str(rc.after > rc.before).lower()).inc()

    async def _publish(self, ref: FrameRef, decision: Decision) -> None:
        """Publish a decision's alerts and review records and wait for the broker's acknowledgements."""
        now = time.time()
        sends = []
        key = ref.stream_id.encode()
        for alert in decision.alerts:
            record = alert.published(self.worker_id, now)
            sends.append(await self.alerts_topic.send(
                key=key, value=record.to_bytes(),
                headers=[(ALERT_ID_HEADER, record.id.encode()), (SCHEMA_HEADER, b"alerts/1")],
            ))
            self.metrics.alerts.labels(record.rule, record.label, record.severity).inc()
        for review in decision.reviews:
            sends.append(await self.reviews_topic.send(key=key, value=review.model_dump_json().encode(),
                                                       headers=[(SCHEMA_HEADER, b"reviews/1")]))
            self.metrics.reviews.labels(review.kind).inc()
        try:
            for fut in sends:
                await fut  # the broker acknowledged it
        except KafkaError as exc:
            raise BrokerSendError(f"publishing for {ref.key} failed: {type(exc).__name__}: {exc}") from exc

    async def _dead_letter(self, msg: Any, exc: LivemodError, *, attempts: int, generation: int) -> None:
        """Send a message to the DLQ; retry a failing send, and block the partition (visibly) until it goes.

        Raises:
            _Revoked: the partition was revoked while the send kept failing.
        """
        k, w = self.settings.kafka, self.settings.worker
        record = DeadLetter.build(
            topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key, value=msg.value,
            headers=msg.headers, error_class=type(exc).__name__, reason=exc.reason, message=str(exc),
            retriable=exc.retriable, attempts=attempts, worker_id=self.worker_id,
            max_bytes=k.max_message_bytes - 16_384,
        )
        log.warning("dead-letter %s[%s]@%s: %s (%s)", msg.topic, msg.partition, msg.offset, exc.reason, exc)
        key = msg.key[:1024] if isinstance(msg.key, bytes) else None
        headers = [("reason", exc.reason.encode()), ("error-class", type(exc).__name__.encode())]

        async def send() -> None:
            fut = await self.dlq_topic.send(key=key, value=record.to_bytes(), headers=headers)
            await fut  # the broker acknowledged it

        tries = 0
        while True:
            tries += 1
            try:
                await asyncio.wait_for(send(), w.dlq_send_timeout_s)
                break
            except asyncio.CancelledError:
                raise
            except Exception as send_exc:  # noqa: BLE001 - any producer error: retry, then block visibly
                self.metrics.dlq_send_failures.inc()
                if generation != self._generation:
                    raise _Revoked() from send_exc
                if tries > w.dlq_retries and msg.tp not in self.blocked:
                    self._block(msg.tp, f"dead letter of offset {msg.offset} cannot be sent: "
                                        f"{type(send_exc).__name__}: {send_exc}")
                delay = backoff_delay(tries, w.retry_backoff_s, w.retry_backoff_max_s)
                log.warning("dead-letter send for %s offset %s failed (try %d): %s: %s; again in %.1f s",
                            msg.tp, msg.offset, tries, type(send_exc).__name__, send_exc, delay)
                await asyncio.sleep(delay)
        self.metrics.dlq.labels(k.dlq_topic, exc.reason).inc()
        if msg.tp in self.blocked:
            self._unblock(msg.tp)

    def _block(self, tp: Any, why: str) -> None:
        self.blocked[tp] = why
        self.metrics.partitions_blocked.set(len(self.blocked))
        with contextlib.suppress(ConsumerNotStarted):
            faustcompat.pause(self.app.consumer, tp)
        log.error("partition %s blocked: %s. Not consuming it and not ready until the dead letter is sent "
                  "(still trying).", tp, why)

    def _unblock(self, tp: Any) -> None:
        self.blocked.pop(tp, None)
        self.metrics.partitions_blocked.set(len(self.blocked))
        with contextlib.suppress(ConsumerNotStarted):
            faustcompat.resume(self.app.consumer, tp)
        log.warning("partition %s unblocked: the dead letter was sent", tp)

    # ---- callbacks -------------------------------------------------------------------------

    async def _callback(self, event: Any, entry: PendingAck) -> None:
        generation = self._generation
        try:
            await self.callbacks.handle(event.message)
        finally:
            self._cb_slots.release()
            if generation == self._generation:
                self.cb_acks.done(entry)


def score_batch(items: Sequence[tuple[SampledFrame, Policy, Moderator]]) -> list[dict[str, FrameScores]]:
    """The batcher's function: frames scored by the Moderator their reference started with (a reload
    between references can leave two versions in one batch)."""
    out: list[dict[str, FrameScores] | None] = [None] * len(items)
    groups: dict[int, tuple[Moderator, list[int]]] = {}
    for i, (_frame, _policy, moderator) in enumerate(items):
        groups.setdefault(id(moderator), (moderator, []))[1].append(i)
    for moderator, idx in groups.values():
        for i, res in zip(idx, moderator.score([(items[i][0], items[i][1]) for i in idx])):
            out[i] = res
    return out  # type: ignore[return-value]


def make_worker(settings: Settings, moderator: Moderator | None = None) -> Worker:
    """Build a worker (loads the models unless a Moderator is given)."""
    return Worker(settings, moderator or Moderator(settings))


def run_worker(settings: Settings) -> int:
    """Run one worker until SIGTERM/SIGINT (`livemod worker`).

    Before Faust starts, every service topic is created if missing and checked (partition
    counts); while they disagree the worker serves /health and a 503 /ready naming the problem,
    and checks again every ``worker.topic_check_interval_s``.
    """
    from livemod.stream.preflight import wait_for_topics

    logging.getLogger().setLevel(settings.log_level)
    logging.getLogger("livemod").setLevel(settings.log_level)
    if not wait_for_topics(settings):
        return 0  # asked to stop before the topics agreed
    worker = make_worker(settings)
    log.warning("livemod worker %s: backend %s (%s); brokers %s; web %s:%s",
                worker.worker_id, worker.moderator.choice.backend, worker.moderator.choice.reason,
                settings.kafka.bootstrap_servers, settings.worker.web_host, settings.worker.web_port)
    faust_worker = faust.Worker(worker.app, loglevel=settings.log_level, quiet=True, override_logging=False)
    faust_worker.execute_from_commandline()
    return 0
