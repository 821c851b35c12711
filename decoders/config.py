"""Decoder settings: allowed sources, timeouts, limits and sampling."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SamplerConfig(BaseModel):
    """Which decoded frames are worth classifying.

    Attributes:
        mode: "keyframes" decodes only keyframes (the decoder skips the rest: cheapest);
            "interval" decodes every frame and samples one every ``interval_s`` of PTS.
        interval_s: sampling period in interval mode, and in the keyframe fallback.
        keyframe_fallback_s: in keyframes mode, when no keyframe arrives for this many
            seconds of stream time (intra-refresh streams have none), switch to interval
            sampling for the rest of the source.
        scene_threshold: mean absolute difference (0-255) of a 32x32 grey thumbnail from the
            last sampled frame that forces a sample between intervals. Only frames that are
            decoded anyway are checked, so it acts in interval mode (and the fallback). 0 = off.
        dup_max_distance: a frame whose 64-bit dHash is within this Hamming distance of the
            last emitted frame is skipped as a near-duplicate. Negative = off.
        heartbeat_s: a skipped still scene is emitted again at least this often.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["keyframes", "interval"] = "keyframes"
    interval_s: float = Field(default=1.0, gt=0)
    keyframe_fallback_s: float = Field(default=3.0, gt=0)
    scene_threshold: float = Field(default=30.0, ge=0)
    dup_max_distance: int = Field(default=4, le=64)
    heartbeat_s: float = Field(default=10.0, gt=0)


class ReconnectConfig(BaseModel):
    """Backoff for live sources (RTMP, RTSP, live HLS) that drop."""

    model_config = ConfigDict(extra="forbid")

    initial_s: float = Field(default=0.5, gt=0)
    max_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=5, ge=0, description="0 = forever")


class DecoderConfig(BaseModel):
    """Everything the decoders room is told.

    File reads are allowed only under ``file_roots``; network hosts are resolved and every
    address checked: link-local and cloud metadata addresses are refused unless allowed.
    """

    model_config = ConfigDict(extra="forbid")

    allowed_schemes: tuple[str, ...] = ("file", "http", "https", "rtmp", "rtmps", "rtsp")
    file_roots: tuple[Path, ...] = Field(default_factory=lambda: (Path.cwd(), Path(tempfile.gettempdir())))
    allowed_hosts: tuple[str, ...] = Field(default=(), description="host globs; empty = any host")
    denied_hosts: tuple[str, ...] = ("metadata.google.internal", "metadata", "instance-data*")
    allow_private_networks: bool = True
    allow_link_local: bool = False
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    decode_timeout_s: float = Field(default=120.0, gt=0, description="wall-clock budget per segment")
    max_pixels: int = Field(default=4096 * 2160, gt=0)
    max_frames_per_segment: int = Field(default=20_000, gt=0, description="decoded frames")
    max_segment_seconds: float = Field(default=600.0, gt=0, description="media seconds per non-live source")
    max_live_seconds: float = Field(default=0.0, ge=0, description="stop a live source after this long; 0 = never")
    hwaccel: Literal["auto", "cuda", "none"] = "auto"
    sampling: SamplerConfig = Field(default_factory=SamplerConfig)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)

    @model_validator(mode="after")
    def _resolve_roots(self) -> "DecoderConfig":
        object.__setattr__(self, "file_roots", tuple(Path(p).resolve() for p in self.file_roots))
        return self
