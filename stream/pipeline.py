"""The broker-free moderation pipeline that the CLI and the Faust agents share.

decode (PyAV, sampling) -> score (batched engines + Grad-CAM re-check) -> judge (rules,
evidence, audit sampling). The stages are separate so the service can batch frames from many
streams between ``decode`` and ``judge`` while keeping each stream's order.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator, Sequence, cast

from livemod.decoders.pyav import decode
from livemod.decoders.sampling import SamplerState
from livemod.core.types import Resize, SampledFrame
from livemod.engines.backend import BackendChoice, choose, load_classifier
from livemod.engines.cam import input_to_frame
from livemod.engines.card import ModelCard, load_cards
from livemod.engines.recheck import RecheckSpec, Scorer, ScoreRequest, Watch
from livemod.engines.signals import SIGNAL_MODELS, Signals
from livemod.engines.types import FrameScores
from livemod.rules.evaluate import StreamState, end_stream, evaluate
from livemod.rules.evidence import audit_pick, write_evidence
from livemod.rules.policy import Policy, load_policies, validate_against_cards
from livemod.rules.types import Observation
from livemod.core.errors import ConfigError, LivemodError, MessageError
from livemod.stream.records import AlertRecord, AuditSample, FrameRef, IncidentClosed, ReviewBand, build_review
from livemod.stream.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """What judging one frame (or an end marker) produced.

    Attributes:
        alerts: alert records ready to publish (evidence written).
        reviews: review-queue records: frames in the review band, audit samples of frames
            that raised nothing, and closed incidents (with the alert id and why).
        closed: ids of incidents that closed.
    """

    alerts: list[AlertRecord] = field(default_factory=list)
    reviews: list[ReviewBand | AuditSample | IncidentClosed] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """A stream's state while one of its references is handled; the caller saves it afterwards.

    ``run`` updates it frame by frame, so after a failure it holds what was judged so far.
    """

    rules: StreamState = field(default_factory=StreamState)
    sampler: SamplerState | None = None


@dataclass(frozen=True)
class Step:
    """One judged frame of a reference (``frame`` is None for an end marker)."""

    frame: SampledFrame | None
    scores: dict[str, FrameScores]
    decision: Decision
    state: StreamState


Submit = Callable[[SampledFrame, Policy], Awaitable[dict[str, FrameScores]]]
"""Scores one frame under a policy: a direct in-process call (CLI) or the cross-stream batcher (worker)."""


@dataclass
class _Fail:
    exc: BaseException


_END = object()


def frame_id(ref: FrameRef, frame: SampledFrame) -> str:
    """A deterministic id of a sampled frame: the reference's key and the PTS in ms."""
    return f"{ref.key}@{round(frame.pts * 1000)}"


class Moderator:
    """Decoders, engines and rules put together, with no transport.

    Args:
        settings: the root settings.
        models: restrict to these model names (default: the models any policy uses).
    """

    def __init__(self, settings: Settings, *, models: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.cards: dict[str, ModelCard] = load_cards(settings.engines.cards_dir)
        self.policies: dict[str, Policy] = load_policies(settings.rules.policies_dir)
        if settings.rules.default_policy not in self.policies:
            raise ConfigError(
                f"default policy {settings.rules.default_policy!r} not found (have {sorted(self.policies)})"
            )
        for policy in self.policies.values():
            validate_against_cards(policy, self.cards)
        used = sorted({r.model for p in self.policies.values() for r in p.rules})
        self.models = list(models) if models is not None else used
        self.choice: BackendChoice = choose(settings.engines.engine)
        log.info("engine backend: %s (%s)", self.choice.backend, self.choice.reason)
        e = settings.engines
        classifiers = {
            name: load_classifier(
                self.cards[name],
                e.models_dir,
                self.choice,
                threads=e.threads,
                max_batch=e.max_batch,
                opt_batch=e.opt_batch,
                workspace_mb=e.workspace_mb,
                engine_cache_dir=e.engine_cache_dir,
                precision=e.precision,
            )
            for name in self.models
            if name not in SIGNAL_MODELS  # built-in models (engines/signals.py) have no file to load
        }
        self.on_batch: Callable[[str, int, str], None] | None = None
        self.scorer = Scorer(classifiers, budget=e.recheck_budget, on_batch=self._batch_hook)
        self.signals = Signals()
        self._watches: dict[str, dict[str, list[Watch]]] = {}
        self._signal_watches: dict[str, dict[str, set[str]]] = {}
        self._last: OrderedDict[str, dict[str, FrameScores]] = OrderedDict()
        self._lock = threading.Lock()

    def _batch_hook(self, model: str, size: int, stage: str) -> None:
        if self.on_batch:
            self.on_batch(model, size, stage)

    # ---- configuration views -----------------------------------------------------------

    def policy(self, name: str | None) -> Policy:
        """The named policy, or the default one."""
        key = name or self.settings.rules.default_policy
        try:
            return self.policies[key]
        except KeyError:
            raise ConfigError(f"unknown policy {key!r} (have {sorted(self.policies)})", reason="unknown_policy") from None

    def watches(self, policy: Policy) -> dict[str, list[Watch]]:
        """Model name -> the labels the policy watches there, with their re-check settings.

        Classifiers only; the built-in models a policy watches are in ``_signal_watches``.
        """
        with self._lock:
            if policy.name not in self._watches:
                self._signal_watches[policy.name] = signal_watches = {}
                for rule in policy.rules:
                    if rule.model in SIGNAL_MODELS and rule.model in self.models:
                        signal_watches.setdefault(rule.model, set()).add(rule.label)
                out: dict[str, list[Watch]] = {}
                for rule in policy.rules:
                    if rule.model not in self.scorer.classifiers:
                        continue
                    spec = None
                    if rule.recheck is not None:
                        rc = rule.recheck
                        band = tuple(rc.band) if rc.band is not None else (0.02, rule.alert)
                        spec = RecheckSpec(
                            band=(float(band[0]), float(band[1])),
                            max_boxes=rc.max_boxes,
                            expand=rc.expand,
                            cam_threshold=rc.cam_threshold,
                            tiles=rc.tiles,
                            spot_threshold=rc.spot_threshold,
                            sweep_share=rc.sweep_share,
                            confirm=rc.confirm,
                            confirm_above=min(0.5, rule.alert),
                        )
                    lst = out.setdefault(rule.model, [])
                    if all(w.label != rule.label for w in lst):
                        lst.append(Watch(rule.label, spec))
                self._watches[policy.name] = out
            return self._watches[policy.name]

    def sizes(self, policy: Policy) -> list[Resize]:
        """The working-size images the decoder must produce for the policy's models."""
        return sorted({self.cards[m].working_size for m in self.watches(policy)}, key=lambda r: (r.width, r.height))

    # ---- the three stages --------------------------------------------------------------

    def decode(
        self, ref: FrameRef, state: SamplerState | None = None, stop: threading.Event | None = None
    ) -> Iterator[SampledFrame]:
        """Sample frames of one reference (PyAV, in the caller's thread)."""
        if ref.uri is None:
            raise MessageError(f"a {ref.kind!r} reference has no media to decode", reason="invalid_fields")
        return decode(
            ref.uri,
            stream_id=ref.stream_id,
            sizes=self.sizes(self.policy(ref.policy)),
            config=self.settings.decoder,
            wall_start=ref.wall_start,
            state=state,
            stop=stop,
            duration_s=ref.duration if ref.kind == "live" else None,
        )

    def score(self, items: Sequence[tuple[SampledFrame, Policy]]) -> list[dict[str, FrameScores]]:
        """Classify frames from any streams as batches (one per model), with the re-check.

        A near-duplicate frame (reason "duplicate") repeats its stream's last result when
        that is known and covers the same models; otherwise it is classified like any other.
        The built-in models the policy watches (engines/signals.py) run on every frame,
        duplicates included (``qr`` and ``text`` only when due for the stream).
        Call it from one thread at a time (the batcher's).
        """
        results: list[dict[str, FrameScores] | None] = [None] * len(items)
        todo: list[int] = []
        for i, (frame, policy) in enumerate(items):
            last = self._last.get(frame.stream_id)
            if frame.reason == "duplicate" and last is not None and set(self.watches(policy)) <= set(last):
                results[i] = last
            else:
                todo.append(i)
        if todo:
            scored = self.scorer.score([ScoreRequest(items[i][0], self.watches(items[i][1])) for i in todo])
            for i, res in zip(todo, scored):
                results[i] = res
        for i, (frame, policy) in enumerate(items):
            self.watches(policy)
            built_in = self._signal_watches[policy.name]
            if built_in:
                base = {m: fs for m, fs in (results[i] or {}).items() if m not in SIGNAL_MODELS}
                results[i] = {**base, **self.signals.score(frame, built_in, policy.signals)}
        for (frame, _policy), res in zip(items, results):
            self._last[frame.stream_id] = res  # type: ignore[assignment]
            self._last.move_to_end(frame.stream_id)
        while len(self._last) > 10_000:
            self._last.popitem(last=False)
        return results  # type: ignore[return-value]

    def judge(
        self,
        state: StreamState,
        ref: FrameRef,
        frame: SampledFrame,
        scores: dict[str, FrameScores],
        policy: Policy,
        *,
        decided_at: float | None = None,
        evidence: bool = True,
    ) -> tuple[StreamState, Decision]:
        """Run the policy's rules on one frame (in stream order) and build alert and review records.

        ``evidence=False`` leaves the alerts' evidence empty for ``with_evidence`` to fill (the loop
        writes the images in a worker thread, off the event loop).
        """
        fid = frame_id(ref, frame)
        obs = Observation(
            stream_id=ref.stream_id, frame_id=fid, pts=frame.pts, wall_clock=frame.wall_clock, scores=scores
        )
        replay = state.seen(fid)  # judged before a crash or rebalance: no verdicts, and no second audit sample
        state, verdicts = evaluate(state, obs, policy)
        decision = Decision()
        now = decided_at if decided_at is not None else time.time()
        here = dict(frame_id=fid, pts=frame.pts, wall_clock=frame.wall_clock, policy=policy.name, scores=scores)
        for verdict in verdicts:
            if verdict.kind == "alert" and verdict.alert is not None:
                record = AlertRecord.build(verdict.alert, ref, evidence={}, backend=self.choice.backend, decided_at=now,
                                           frame_wall_clock=frame.wall_clock,
                                           policy_version=self.policy_version(policy))
                decision.alerts.append(self.with_evidence(record, frame, scores) if evidence else record)
            elif verdict.kind == "review":
                decision.reviews.append(build_review("review_band", ref, rule=verdict.rule, **here))
            elif verdict.kind == "close" and verdict.alert_id:
                decision.closed.append(verdict.alert_id)
                decision.reviews.append(build_review("incident_closed", ref, rule=verdict.rule, alert_id=verdict.alert_id,
                                                     close_reason=verdict.reason, **here))
        if not verdicts and not replay and policy.audit_fraction > 0 and audit_pick(fid, policy.audit_fraction):
            decision.reviews.append(build_review("audit", ref, rule=None, **here))
        return state, decision

    def end(self, state: StreamState, ref: FrameRef, policy: Policy) -> tuple[StreamState, Decision]:
        """An "end" reference: close the stream's open incidents and empty its windows."""
        fid = f"{ref.key}@end"
        ended_at = ref.wall_start if ref.wall_start is not None else time.time()
        state, verdicts = end_stream(state, fid, ended_at)
        decision = Decision()
        for verdict in verdicts:
            if verdict.alert_id:
                decision.closed.append(verdict.alert_id)
                decision.reviews.append(build_review(
                    "incident_closed", ref, frame_id=fid, pts=None, wall_clock=ended_at, policy=policy.name,
                    rule=verdict.rule, alert_id=verdict.alert_id, close_reason=verdict.reason))
        return state, decision

    def with_evidence(self, alert: AlertRecord, frame: SampledFrame, scores: dict[str, FrameScores]) -> AlertRecord:
        """The alert with its evidence images written (the frame, and the class map with this frame's re-check box)."""
        if not self.settings.rules.write_evidence:
            return alert
        # the image shows this frame, so its score and re-check box too (the alert's own
        # score and box are the best over all the incident's hits, maybe of other frames)
        fs = scores.get(alert.model)
        cam = fs.cams.get(alert.label) if fs else None
        rc = fs.rechecks.get(alert.label) if fs else None
        here = fs.score(alert.label) if fs else alert.score
        caption = f"{alert.rule}: {alert.model}:{alert.label} {here:.2f}"
        if rc is not None and rc.after > rc.before:
            caption += " (re-check)"
        full = frame.full_rgb()
        card = self.cards.get(alert.model)
        # the class map covers what the network saw: for a centre-cropped input, not the whole frame
        region = input_to_frame(card, (0.0, 0.0, 1.0, 1.0), full.shape[1], full.shape[0]) if card else None
        written = write_evidence(Path(self.settings.rules.evidence_dir), alert.id, full, cam, rc.box if rc else None,
                                 caption, cam_region=region)
        return alert.model_copy(update={"evidence": written})

    @staticmethod
    def policy_version(policy: Policy) -> str:
        """The policy's own ``version`` and a digest of its content: an edit shows even when nobody bumped it."""
        digest = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:12]
        return f"{policy.version}+{digest}"

    # ---- the one pipeline loop -----------------------------------------------------------

    def direct_submit(self) -> Submit:
        """Score each frame in the caller's event-loop thread, at once (no batcher, no thread hop)."""

        async def submit(frame: SampledFrame, policy: Policy) -> dict[str, FrameScores]:
            return self.score([(frame, policy)])[0]

        return submit

    async def run(
        self,
        ref: FrameRef,
        progress: Progress,
        submit: Submit,
        *,
        stop: threading.Event | None = None,
        executor: Executor | None = None,
        depth: int = 32,
        on_sampled: Callable[[SampledFrame], None] | None = None,
    ) -> AsyncIterator[Step]:
        """Decode, score and judge one reference, yielding each judged frame in stream order.

        The CLI, the demo and the worker all run references through this loop; they differ
        in ``submit`` (direct scoring, or the cross-stream batcher) and in what they do with
        each step. Frames cross threads once on the way in (the decoder runs in ``executor``
        and hands frames over with ``call_soon_threadsafe``); at most ``depth`` wait. An
        "end" reference yields one step with no frame. ``progress`` is updated as frames are
        judged; a decoder failure is raised after the frames before it were judged.

        Raises:
            LivemodError: the reference cannot be handled (bad media, unknown policy, ...).
        """
        policy = self.policy(ref.policy)
        if ref.kind == "end":
            progress.rules, decision = self.end(progress.rules, ref, policy)
            progress.sampler = None  # a stream that comes back is a new broadcast
            yield Step(None, {}, decision, progress.rules)
            return
        if progress.sampler is None:
            progress.sampler = SamplerState(mode=self.settings.decoder.sampling.mode)
        sampler = progress.sampler
        loop = asyncio.get_running_loop()
        frames: asyncio.Queue[object] = asyncio.Queue()
        room = threading.Semaphore(depth)
        halt = stop or threading.Event()

        def hand(item: object) -> None:
            loop.call_soon_threadsafe(frames.put_nowait, item)

        def pump() -> None:
            try:
                for frame in self.decode(ref, sampler, halt):
                    while not room.acquire(timeout=0.2):
                        if halt.is_set():
                            return
                    hand(frame)
                    if halt.is_set():
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop
                hand(_Fail(exc))
            else:
                hand(_END)

        pumping = loop.run_in_executor(executor, pump)
        pending: collections.deque[tuple[SampledFrame, asyncio.Future[dict[str, FrameScores]]]] = collections.deque()
        failure: BaseException | None = None
        getter: asyncio.Future[object] | None = None
        try:
            decoding = True
            while decoding or pending:
                if decoding and getter is None:
                    getter = asyncio.ensure_future(frames.get())
                waits = [w for w in (getter if decoding else None, pending[0][1] if pending else None) if w is not None]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if getter is not None and getter.done():
                    item, getter = getter.result(), None
                    if item is _END:
                        decoding = False
                    elif isinstance(item, _Fail):
                        decoding, failure = False, item.exc
                    else:
                        room.release()
                        item = cast(SampledFrame, item)
                        if on_sampled is not None:
                            on_sampled(item)
                        pending.append((item, asyncio.ensure_future(submit(item, policy))))
                while pending and pending[0][1].done():
                    frame, fut = pending.popleft()
                    scores = fut.result()
                    progress.rules, decision = self.judge(progress.rules, ref, frame, scores, policy, evidence=False)
                    if decision.alerts and self.settings.rules.write_evidence:  # JPEG encoding: off the loop
                        decision.alerts = await loop.run_in_executor(
                            executor, lambda d=decision, f=frame, sc=scores: [self.with_evidence(a, f, sc)
                                                                               for a in d.alerts])
                    yield Step(frame, scores, decision, progress.rules)
        finally:
            halt.set()
            if getter is not None:
                getter.cancel()
            for _frame, fut in pending:
                fut.cancel()
            await pumping
        if failure is not None:
            if isinstance(failure, LivemodError):
                raise failure
            raise DecoderBug(f"decoder: {type(failure).__name__}: {failure}") from failure

    def moderate(
        self,
        ref: FrameRef,
        state: StreamState | None = None,
        sampler: SamplerState | None = None,
        *,
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[SampledFrame, dict[str, FrameScores], Decision, StreamState]]:
        """``run`` for synchronous callers (the CLI, ``livemod evaluate``, benchmarks), scoring directly.

        Yields (frame, scores, decision, state) per judged frame, in order.
        """
        progress = Progress(state if state is not None else StreamState(), sampler)
        loop = asyncio.new_event_loop()
        steps = self.run(ref, progress, self.direct_submit(), stop=stop)
        try:
            while True:
                try:
                    step = loop.run_until_complete(steps.__anext__())
                except StopAsyncIteration:
                    return
                if step.frame is not None:
                    yield step.frame, step.scores, step.decision, step.state
        finally:
            loop.run_until_complete(steps.aclose())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()


class DecoderBug(LivemodError):
    """The decoder raised something that is not a LivemodError (a bug): dead-lettered with its type and text."""

    reason = "internal_error"
