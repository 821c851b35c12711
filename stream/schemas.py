"""Versioned message schemas of the Kafka topics (frame-refs, alerts, dead letters)."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from livemod.core.errors import MessageError

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

    @model_validator(mode="after")
    def _uri_unless_end(self) -> "FrameRef":
        if self.uri is None and self.kind != "end":
            raise ValueError(f"a {self.kind!r} reference needs a uri")
        return self

    @property
    def key(self) -> str:
        """A stable id of this reference: stream id and sequence number."""
        return f"{self.stream_id}/{self.seq}"

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


class DeadLetter(BaseModel):
    """What ``frame-refs-dlq`` carries: the original message and why it could not be handled."""

    model_config = ConfigDict(extra="forbid")

    v: int = SCHEMA_VERSION
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str = Field(description="the original value bytes, base64")
    headers: dict[str, str] = Field(default_factory=dict, description="original headers, values base64")
    error_class: str
    reason: str
    message: str
    retriable: bool
    attempts: int
    worker_id: str
    time: float = Field(default_factory=time.time)
