"""Decoder settings: allowed sources, timeouts, limits, sampling and reconnects."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from livemod.decoders.sampling import SamplerConfig
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEMUXERS", "DecoderConfig", "ReconnectConfig", "SamplerConfig"]

# FFmpeg demuxers a source may be read with. FFmpeg's own hls/dash/concat demuxers are left
# out on purpose: they open further URLs that the URI checks never see (HLS is followed by
# livemod itself, which checks every segment).
DEMUXERS: tuple[str, ...] = (
    "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts", "flv", "live_flv", "avi", "mpeg", "asf",
    "nut", "ogg", "ivf", "obu", "h264", "hevc", "m4v", "mjpeg", "rtsp",
    "image2", "jpeg_pipe", "png_pipe", "webp_pipe", "bmp_pipe", "gif", "gif_pipe",
)


class ReconnectConfig(BaseModel):
    """Exponential backoff for live sources (RTMP, RTSP, live HLS) that drop or stall.

    A live source is reconnected until the broadcast ends: the caller stops it, its duration
    runs out, or no media has come for ``DecoderConfig.live_idle_timeout_s``.

    Attributes:
        initial_s: first wait after a drop; doubled after each failed attempt.
        max_s: the longest wait.
        max_attempts: attempts in a row without a frame before giving up; 0 = no limit
            (only the idle timeout ends the retries).
    """

    model_config = ConfigDict(extra="forbid")

    initial_s: float = Field(default=0.5, gt=0)
    max_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=0, ge=0, description="0 = until live_idle_timeout_s")


class DecoderConfig(BaseModel):
    """Everything the decoders room is told.

    File reads are allowed only under ``file_roots`` (symlinks resolved); network hosts are
    matched against the host globs, then resolved and every address checked: link-local and
    cloud metadata addresses are refused unless ``allow_link_local``. HTTP redirects are
    followed by livemod (each hop checked the same way), never by FFmpeg.

    Attributes:
        allowed_schemes: file, http, https, rtmp, rtmps, rtsp, and "hls" (playlists, .m3u8,
            over http(s) or file; their segments must pass the same checks).
        file_roots: directories local files must lie under.
        allowed_hosts: host globs; empty = any host that passes the address checks.
        denied_hosts: host globs always refused (cloud metadata names by default).
        allow_private_networks: loopback and private ranges (the local demo and tests).
        allow_link_local: 169.254.0.0/16, fe80::/10 and the metadata addresses.
        max_redirects: HTTP redirects followed per request; 0 refuses redirects.
        demuxers: FFmpeg demuxers allowed to read a source (``format_whitelist``).
        connect_timeout_s: passed to FFmpeg as ``timeout`` (microseconds) for http(s), and
            as the open timeout of PyAV's interrupt callback.
        read_timeout_s: passed to FFmpeg as ``rw_timeout`` (microseconds; ``timeout`` for
            RTSP), and as PyAV's read timeout.
        decode_timeout_s: wall-clock budget for one segment (a file, one HLS segment).
        max_pixels: the largest frame (width x height) accepted.
        max_frames_per_segment: decoded frames per segment.
        max_segment_seconds: media seconds per segment (not applied to live sources).
        max_live_seconds: stop a live source (RTMP/RTSP, live HLS) after this many media
            seconds; 0 = never.
        live_idle_timeout_s: a live source that has given no media (no packet, no new HLS
            segment) for this long, through drops and reconnects, has ended. An RTMP
            publisher's end and its drop look the same (FFmpeg's I/O error): only time tells.
        hwaccel: "auto" decodes with NVDEC when a CUDA device works, "cuda" asks for it (and
            logs once when it is not there), "none" always decodes on the CPU.
    """

    model_config = ConfigDict(extra="forbid")

    allowed_schemes: tuple[str, ...] = ("file", "http", "https", "hls", "rtmp", "rtmps", "rtsp")
    file_roots: tuple[Path, ...] = Field(default_factory=lambda: (Path.cwd(), Path(tempfile.gettempdir())))
    allowed_hosts: tuple[str, ...] = Field(default=(), description="host globs; empty = any host")
    denied_hosts: tuple[str, ...] = (
        "metadata.google.internal", "metadata.goog", "metadata", "instance-data*", "metadata.azure.com",
    )
    allow_private_networks: bool = True
    allow_link_local: bool = False
    max_redirects: int = Field(default=3, ge=0, le=10)
    demuxers: tuple[str, ...] = DEMUXERS
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    decode_timeout_s: float = Field(default=120.0, gt=0, description="wall-clock budget per segment")
    max_pixels: int = Field(default=4096 * 2160, gt=0)
    max_frames_per_segment: int = Field(default=20_000, gt=0, description="decoded frames per segment")
    max_segment_seconds: float = Field(default=600.0, gt=0, description="media seconds per segment")
    max_live_seconds: float = Field(default=0.0, ge=0, description="stop a live source after this long; 0 = never")
    live_idle_timeout_s: float = Field(default=30.0, gt=0, description="a live source without media this long has ended")
    hwaccel: Literal["auto", "cuda", "none"] = "auto"
    sampling: SamplerConfig = Field(default_factory=SamplerConfig)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)

    @model_validator(mode="after")
    def _normalise(self) -> DecoderConfig:
        object.__setattr__(self, "file_roots", tuple(Path(p).expanduser().resolve() for p in self.file_roots))
        object.__setattr__(self, "allowed_schemes", tuple(s.lower() for s in self.allowed_schemes))
        return self
