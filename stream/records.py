"""Every record on the wire, typed and versioned: frame-refs in; alerts, reviews, dead letters and stream state out.

Each record has a ``v`` and is built in one place (the ``build_*`` functions and classmethods
below); ``livemod schemas`` exports their JSON schemas (docs/schemas/).
""" 

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from livemod.core.errors import MessageError

if TYPE_CHECKING:
    from livemod.engines.types import FrameScores, Recheck
    from livemod.rules.types import Alert

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})


class FrameRef(BaseModel):
    """A reference to live-stream media, as ingest publishes it on ``frame-refs`` (key = stream id).

    Version 1 fields:
        v: schema version (1).
        stream_id: the broadcast; also the Kafka key.
        uri: where the media is (file, http(s), HLS playlist, rtmp(s)/rtsp URL, image).
        kind: "segment" (a finite media file), "image" (a snapshot), "live" (a stream URL
            to follow until it ends or the duration runs out) or "end" (the broadcast ended:
            no media, no uri; its open incidents close and its windows empty).
        seq: the ingest's sequence number of this reference within the stream.
        wall_start: Unix time of the media's first frame (PTS 0); frame times are wall_start + pts.
        duration: seconds of media the reference covers (informative; "live" stops after it).
        policy: the policy name to apply; the worker's default when absent.
        tenant: optional tenant id, carried through to alerts.
        metadata: free string metadata, carried through to alerts.
        chunk: set by the worker on the continuation of a ``live`` reference (1, 2, ...): a
            live source is followed in chunks of ``worker.live_chunk_s``, each one acked and
            continued by a new reference, so no message stays in flight for a whole broadcast.
            Ingest leaves it out.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = SCHEMA_VERSION
    stream_id: str = Field(min_length=1, max_length=256)
    uri: str | None = Field(default=None, min_length=1, max_length=4096)
    kind: Literal["segment", "image", "live", "end"] = "segment"
    seq: int = Field(default=0, ge=0)
    wall_start: float | None = None
    duration: float | None = Field(default=None, ge=0)
    policy: str | None = None
    tenant: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    chunk: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _uri_unless_end(self) -> "FrameRef":
        if self.uri is None and self.kind != "end":
            raise ValueError(f"a {self.kind!r} reference needs a uri")
        return self

    @property
    def key(self) -> str:
        """A stable id of this reference: stream id and sequence number (and the live chunk, if any)."""
        return f"{self.stream_id}/{self.seq}" + (f".{self.chunk}" if self.chunk else "")

    def continuation(self, followed_s: float) -> "FrameRef | None":
        """The next chunk of a live reference after ``followed_s`` seconds of it; None when its duration is used up.

        The continuation's frame times come from its own message timestamp.
        """
        duration = None
        if self.duration is not None:
            duration = self.duration - followed_s
            if duration <= 0:
                return None
        return self.model_copy(update={"chunk": (self.chunk or 0) + 1, "wall_start": None, "duration": duration})

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def parse_frame_ref(raw: bytes | str | None) -> FrameRef:
    """Parse and validate a ``frame-refs`` message value.

    Raises:
        MessageError: with reason ``bad_json``, ``unknown_version`` or ``invalid_fields``.
    """
    if raw is None:
        raise MessageError("message has no value", reason="bad_json")
    try:
        data: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"value is not JSON: {exc}", reason="bad_json") from exc
    if not isinstance(data, dict):
        raise MessageError(f"value is JSON {type(data).__name__}, not an object", reason="bad_json")
    version = data.get("v", SCHEMA_VERSION)
    if version not in SUPPORTED_VERSIONS:
        raise MessageError(
            f"schema version {version!r} is not supported (supported: {sorted(SUPPORTED_VERSIONS)})",
            reason="unknown_version",
        )
    try:
        return FrameRef.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) + ": " + e["msg"] for e in exc.errors())
        raise MessageError(f"invalid frame-ref: {fields}", reason="invalid_fields") from exc




# ---- records the worker writes -----------------------------------------------------------------

_RECORD = ConfigDict(extra="forbid", frozen=True)


class RecheckRecord(BaseModel):
    """A small-object re-check of one label on one frame (see engines.types.Recheck)."""

    model_config = _RECORD

    label: str
    before: float = Field(description="whole-frame probability")
    after: float = Field(description="best probability over the crops")
    box: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1 of that crop in full-resolution pixels")
    method: str = Field(description="cam_box (class-map hot region enlarged) or tile")
    crops: int

    @classmethod
    def of(cls, rc: "Recheck | None") -> "RecheckRecord | None":
        if rc is None:
            return None
        return cls(label=rc.label, before=rc.before, after=rc.after, box=tuple(rc.box), method=rc.method,
                   crops=rc.crops)


class FrameHit(BaseModel):
    """One frame that counted towards an alert."""

    model_config = _RECORD

    frame_id: str
    pts: float
    wall_clock: float
    score: float = Field(description="decision score: the max of the whole-frame and re-check probabilities")
    whole_frame_score: float
    recheck: RecheckRecord | None = None


class Source(BaseModel):
    """The reference an alert came from."""

    model_config = _RECORD

    uri: str | None
    seq: int
    kind: str
    metadata: dict[str, str] = Field(default_factory=dict)


class Latency(BaseModel):
    """When the decision was made and published, and how long after the frame was shown."""

    model_config = _RECORD

    decided_at: float
    segment_to_decision_s: float = Field(description="the deciding frame's wall clock to the decision, seconds")
    published_at: float | None = Field(default=None, description="set by the worker when it publishes")


class AlertRecord(BaseModel):
    """``alerts`` (key = stream id, header ``alert-id``): an incident opened by a rule.

    ``id`` is idempotent: a hash of stream, policy, rule and the incident's first frame time, so a
    replay publishes the same id and consumers dedupe on it.
    """

    model_config = _RECORD

    v: Literal[1] = 1
    id: str
    stream_id: str
    policy: str
    policy_version: str | None = Field(default=None, description="the policy version the alert was decided under")
    rule: str
    model: str
    label: str
    severity: str
    action: str
    score: float = Field(description="the best decision score over the incident's hits")
    threshold: float
    start_frame_id: str
    start_pts: float
    start_wall_clock: float
    frames: tuple[FrameHit, ...]
    recheck_used: bool = Field(description="true when the whole-frame scores alone would not have opened it")
    box: tuple[int, int, int, int] | None = Field(description="the re-check crop of the best hit, if any")
    model_versions: dict[str, str] = Field(default_factory=dict)
    evidence: dict[str, str] = Field(default_factory=dict, description="frame / heatmap image paths")
    source: Source
    tenant: str | None = None
    backend: str
    worker: str | None = None
    latency: Latency

    @classmethod
    def build(cls, alert: "Alert", ref: FrameRef, *, evidence: dict[str, str], backend: str, decided_at: float,
              frame_wall_clock: float, policy_version: str | None = None) -> "AlertRecord":
        """The record of an alert the rules opened on a frame of ``ref``."""
        return cls(
            id=alert.id, stream_id=alert.stream_id, policy=alert.policy, policy_version=policy_version,
            rule=alert.rule, model=alert.model, label=alert.label, severity=alert.severity, action=alert.action,
            score=alert.score, threshold=alert.threshold, start_frame_id=alert.start_frame_id,
            start_pts=alert.start_pts, start_wall_clock=alert.start_wall_clock,
            frames=tuple(FrameHit(frame_id=f.frame_id, pts=f.pts, wall_clock=f.wall_clock, score=f.score,
                                  whole_frame_score=f.whole_frame_score, recheck=RecheckRecord.of(f.recheck))
                         for f in alert.frames),
            recheck_used=alert.recheck_used, box=tuple(alert.box) if alert.box else None,
            model_versions=dict(alert.model_versions), evidence=evidence,
            source=Source(uri=ref.uri, seq=ref.seq, kind=ref.kind, metadata=dict(ref.metadata)),
            tenant=ref.tenant, backend=backend,
            latency=Latency(decided_at=round(decided_at, 3),
                            segment_to_decision_s=round(decided_at - frame_wall_clock, 3)),
        )

    def published(self, worker: str, at: float) -> "AlertRecord":
        """The same alert, stamped by the worker that publishes it."""
        return self.model_copy(update={"worker": worker,
                                       "latency": self.latency.model_copy(update={"published_at": round(at, 3)})})

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class _Review(BaseModel):
    model_config = _RECORD

    v: Literal[1] = 1
    stream_id: str
    frame_id: str = Field(description="the frame (reference key @ PTS in ms), or key@end for an end marker")
    pts: float | None = Field(description="null for an end marker")
    wall_clock: float
    policy: str
    rule: str | None
    uri: str | None
    scores: dict[str, dict[str, float]] = Field(default_factory=dict, description="model -> label -> decision score")
    top: dict[str, list[tuple[str, float]]] = Field(default_factory=dict, description="model -> its top-5")


class ReviewBand(_Review):
    """A frame whose score is in a rule's review band (between ``review`` and ``alert``)."""

    kind: Literal["review_band"] = "review_band"


class AuditSample(_Review):
    """A frame that raised nothing, picked deterministically (``audit_fraction``) for drift review."""

    kind: Literal["audit"] = "audit"


class IncidentClosed(_Review):
    """An incident ended: ``below`` (hysteresis), ``stale`` (after a silence) or ``ended`` (an end reference)."""

    kind: Literal["incident_closed"] = "incident_closed"
    alert_id: str
    close_reason: Literal["below", "stale", "ended"]


ReviewRecord = Annotated[Union[ReviewBand, AuditSample, IncidentClosed], Field(discriminator="kind")]
"""``reviews`` (key = stream id): one of the three kinds above, discriminated on ``kind``."""
REVIEW_ADAPTER: TypeAdapter[Any] = TypeAdapter(ReviewRecord)


def build_review(kind: str, ref: FrameRef, *, frame_id: str, pts: float | None, wall_clock: float, policy: str,
                 rule: str | None, scores: "dict[str, FrameScores] | None" = None, alert_id: str | None = None,
                 close_reason: str | None = None) -> ReviewBand | AuditSample | IncidentClosed:
    """The one builder of review records (no scores for an end marker)."""
    scores = scores or {}
    common: dict[str, Any] = dict(
        stream_id=ref.stream_id, frame_id=frame_id, pts=round(pts, 3) if pts is not None else None,
        wall_clock=round(wall_clock, 3), policy=policy, rule=rule, uri=ref.uri,
        scores={m: {lb: round(fs.score(lb), 4) for lb in fs.scores} for m, fs in scores.items()},
        top={m: [(str(a), float(b)) for a, b in fs.top] for m, fs in scores.items()},
    )
    if kind == "review_band":
        return ReviewBand(**common)
    if kind == "audit":
        return AuditSample(**common)
    if kind == "incident_closed":
        return IncidentClosed(**common, alert_id=alert_id, close_reason=close_reason)
    raise ValueError(f"unknown review kind {kind!r}")


class DeadLetter(BaseModel):
    """``frame-refs-dlq`` (key = the original key): the original message and why it could not be handled.

    ``value`` is the original value, base64; when that would not fit into one message
    (``kafka.max_message_bytes``) it is cut (``value_truncated``), and ``value_size`` and
    ``value_sha256`` still describe the whole original.
    """

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str = Field(description="the original value bytes (maybe truncated), base64")
    value_size: int = Field(description="size of the original value in bytes")
    value_sha256: str = Field(description="sha256 of the whole original value")
    value_truncated: bool = False
    headers: dict[str, str] = Field(default_factory=dict, description="original headers, values base64")
    error_class: str
    reason: str = Field(description="see DLQ_REASONS")
    message: str
    retriable: bool
    attempts: int
    worker_id: str
    time: float = Field(default_factory=time.time)

    @classmethod
    def build(cls, *, topic: str, partition: int, offset: int, key: bytes | str | None, value: bytes | None,
              headers: list[tuple[str, bytes]] | None, error_class: str, reason: str, message: str, retriable: bool,
              attempts: int, worker_id: str, max_bytes: int) -> "DeadLetter":
        """A dead letter whose JSON fits in ``max_bytes`` whatever the original's size."""
        raw = value or b""
        key_s = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if key_s is not None and len(key_s) > 1024:
            key_s = key_s[:1024]
        hdrs = {k: base64.b64encode(v or b"").decode() for k, v in (headers or [])}
        if sum(len(k) + len(v) for k, v in hdrs.items()) > max_bytes // 4:
            hdrs = {"truncated": ""}
        record = cls(topic=topic, partition=partition, offset=offset, key=key_s, value="", value_size=len(raw),
                     value_sha256=hashlib.sha256(raw).hexdigest(), headers=hdrs, error_class=error_class,
                     reason=reason, message=message[:2000], retriable=retriable, attempts=attempts,
                     worker_id=worker_id)
        room = max_bytes - len(record.model_dump_json()) - 64  # the rest of the record, and the flag
        keep = min(len(raw), max(0, room) * 3 // 4)  # base64 is 4/3 of the bytes
        return record.model_copy(update={"value": base64.b64encode(raw[:keep]).decode(),
                                          "value_truncated": keep < len(raw)})

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


DLQ_REASONS: dict[str, str] = {
    "bad_json": "the value is not a JSON object (or there is no value)",
    "unknown_version": "the record's v is not a version this worker knows",
    "invalid_fields": "a field is missing, of the wrong type, or not allowed (extra fields are refused)",
    "key_mismatch": "the Kafka key is missing or differs from stream_id (a stream's references must share a partition)",
    "too_large": "the value is larger than kafka.max_ref_bytes",
    "unknown_policy": "the reference names a policy this worker does not have",
    "forbidden_source": "the URI's scheme, host or path is not allowed (decoder allow-lists, metadata addresses)",
    "bad_uri": "the URI cannot be parsed or names nothing",
    "source_not_found": "the source answered that the media does not exist (HTTP 404, missing file)",
    "source_unavailable": "the source did not answer or refused, still after worker.retries retries",
    "empty_media": "the media holds no decodable frame",
    "truncated_media": "the media ends early (a cut segment)",
    "corrupt_media": "the media cannot be decoded",
    "unsupported_media": "no video stream, or a codec this FFmpeg build cannot decode",
    "media_limit": "a configured limit was exceeded (pixels per frame, frames, seconds, decode time)",
    "inference_error": "the engine failed on the batch, still after retries",
    "gpu_error": "a CUDA or TensorRT call failed, still after retries",
    "bad_rule_state": "the stream's saved state cannot be read (an unknown version)",
    "broker_unavailable": "publishing the reference's alerts or reviews failed, still after retries (broker down or slow)",
    "internal_error": "a bug in livemod: the message is kept here with the exception's type and text",
}
"""Every ``reason`` a dead letter can carry, and what it means (README and docs/schemas list them)."""


class CallbackDeadLetter(BaseModel):
    """``alert-callbacks-dlq`` (key = stream id, header ``alert-id``): an alert whose webhook delivery outlived its TTL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    alert_id: str | None
    url: str
    attempts: int
    status: int | None = Field(description="the last HTTP status, if any answered")
    error: str | None = Field(description="the last error")
    worker_id: str
    time: float = Field(default_factory=time.time)
    alert: dict[str, Any] = Field(description="the alert record as it was published (JSON object)")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class LiveProgress(BaseModel):
    """Where a live reference is: the chunk in progress of the broadcast's current live reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int
    chunk: int = 0
    uri: str


class StreamStateValue(BaseModel):
    """The ``stream-state`` table's value (changelog ``<app_id>-stream-state-changelog``, key = stream id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    rules: dict[str, Any] = Field(default_factory=dict, description="rule state (rules.evaluate.StreamState.to_dict)")
    sampler: dict[str, Any] | None = Field(default=None, description="sampler state (decoders.sampling.SamplerState)")
    live: LiveProgress | None = None

    @staticmethod
    def dump(rules: dict[str, Any], sampler: dict[str, Any] | None, live: LiveProgress | None) -> dict[str, Any]:
        """The JSON-ready table value (the same shape as ``model_dump``, built without re-validating its parts)."""
        return {"v": 1, "rules": rules, "sampler": sampler,
                "live": {"seq": live.seq, "chunk": live.chunk, "uri": live.uri} if live is not None else None}

    @classmethod
    def load(cls, raw: Any) -> "StreamStateValue":
        """The table value; {} or None (a new stream) gives an empty one.

        Raises:
            MessageError: reason ``bad_rule_state`` for a value this version cannot read.
        """
        if not raw:
            return cls()
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise MessageError(f"stream state does not validate: {exc.errors()[:3]}", reason="bad_rule_state") from exc


SCHEMAS: dict[str, Any] = {
    "frame-ref": FrameRef,
    "alert": AlertRecord,
    "review": REVIEW_ADAPTER,
    "dead-letter": DeadLetter,
    "callback-dead-letter": CallbackDeadLetter,
    "stream-state": StreamStateValue,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON schema of every record, by name (``livemod schemas``)."""
    out = {}
    for name, model in SCHEMAS.items():
        schema = model.json_schema() if hasattr(model, "json_schema") else model.model_json_schema()
        out[name] = schema
    if "dead-letter" in out:
        out["dead-letter"]["properties"]["reason"]["enum"] = sorted(DLQ_REASONS)
    return out
