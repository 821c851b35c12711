"""Open media with PyAV, sample frames, and scale them with FFmpeg; every failure becomes a typed error."""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urljoin

import av
import av.codec.hwaccel
import av.error
from av.video.reformatter import VideoReformatter
import numpy as np

from livemod.decoders.config import DecoderConfig
from livemod.core.errors import (
    CorruptMediaError,
    EmptyMediaError,
    ForbiddenSourceError,
    LivemodError,
    MediaLimitError,
    SourceNotFoundError,
    SourceUnavailableError,
    TruncatedMediaError,
    UnsupportedMediaError,
)
from livemod.decoders.image import DEMUXERS_FOR, decode_still, read_file, read_header
from livemod.decoders.sampling import THUMB_SIZE, Sampler, SamplerState
from livemod.core.types import GrayReader, Resize, SampledFrame, SampleReason
from livemod.decoders.uri import Source, check_uri, redact

log = logging.getLogger(__name__)

# first bytes of containers we accept: a file that starts like one but cannot be opened is truncated
SIGNATURES = (b"\x1aE\xdf\xa3", b"FLV", b"RIFF", b"\x47", b"\x00\x00\x00", b"\xff\xd8", b"\x89PNG")
PROTOCOLS = {
    "file": "file",
    "http": "http,https,tcp,tls",
    "https": "http,https,tcp,tls",
    "rtmp": "rtmp,rtmps,tcp,tls",
    "rtmps": "rtmp,rtmps,tcp,tls",
    "rtsp": "rtsp,rtsps,rtp,srtp,tcp,udp,tls",
}
LIVE_ANALYZE_S = 1.0  # how much of a live source FFmpeg reads to find its streams before the first frame
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.log(level, msg, *args)


# ---- NVDEC ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def probe_nvdec() -> tuple[bool, str]:
    """Whether NVDEC decoding can be used here, and why (or why not).

    Cheap and cached: FFmpeg must list a "cuda" hwdevice, and creating a CUDA device
    context for the H.264 decoder (``HWAccel.create``, i.e. ``av_hwdevice_ctx_create``)
    must succeed. Without a driver or a GPU the second step fails at once.
    """
    if "cuda" not in av.codec.hwaccel.hwdevices_available():
        return False, "this FFmpeg build has no CUDA hwdevice"
    try:
        av.codec.hwaccel.HWAccel(device_type="cuda", allow_software_fallback=True).create(av.Codec("h264", "r"))
    except (av.error.FFmpegError, NotImplementedError, RuntimeError, OSError) as exc:
        return False, f"no usable CUDA device: creating the CUDA device context failed ({exc})"
    return True, "CUDA device context created"


def choose_hwaccel(config: DecoderConfig) -> tuple[av.codec.hwaccel.HWAccel | None, str]:
    """The HWAccel to open sources with (None = CPU decode), and the reason for the choice."""
    if config.hwaccel == "none":
        return None, "hwaccel is 'none' in settings"
    ok, why = probe_nvdec()
    if not ok:
        if config.hwaccel == "cuda":
            _warn_once("nvdec-missing", "hwaccel=cuda requested but NVDEC is unavailable (%s); decoding on the CPU", why)
        return None, why
    return av.codec.hwaccel.HWAccel(device_type="cuda", allow_software_fallback=True), why


# ---- one call's context --------------------------------------------------------------------


@dataclass
class _Run:
    """Per-call context shared by the decoding helpers."""

    uri: str
    stream_id: str
    sizes: Sequence[Resize]
    config: DecoderConfig
    sampler: Sampler
    wall_start: float | None
    stop: threading.Event | None
    index: int = 0
    frames: int = 0
    hw_failed: bool = False
    live_limit_s: float = 0.0  # stop a live source at this stream time (0 = never)
    media_t: float = 0.0  # latest packet time seen, in seconds from the source's start
    media_mono: float | None = None  # time.monotonic() when that packet arrived
    scalers: dict[tuple[int, int, str], VideoReformatter] = field(default_factory=dict)

    def scaled(self, frame: av.VideoFrame, width: int, height: int, fmt: str = "rgb24") -> np.ndarray:
        """The frame scaled by FFmpeg (AREA) to width x height, with one scaler kept per output size:
        FFmpeg reuses its set-up while the input size and format stay the same."""
        key = (width, height, fmt)
        scaler = self.scalers.get(key)
        if scaler is None:
            scaler = self.scalers[key] = VideoReformatter()
        return scaler.reformat(frame, format=fmt, width=width, height=height, interpolation="AREA").to_ndarray()

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def live_done(self) -> bool:
        """A live source has reached its duration or ``max_live_seconds``."""
        return bool(self.live_limit_s) and self.media_t >= self.live_limit_s

    def wait(self, seconds: float) -> bool:
        """Sleep, waking early when stopped; True when stopped."""
        if self.stop is not None:
            return self.stop.wait(seconds)
        time.sleep(seconds)
        return False


class _HwRetry(Exception):
    """NVDEC failed before any frame came out: decode the source again on the CPU."""


# ---- errors ---------------------------------------------------------------------------------


def _why(exc: Exception) -> str:
    """FFmpeg's description of an error without the file name it appends (which may hold tokens)."""
    strerror = getattr(exc, "strerror", None)
    return str(strerror) if strerror else type(exc).__name__


def _bad_data(shown: str, why: str, local: Path | None) -> LivemodError:
    """The error for data that cannot be decoded: empty, truncated (it starts like media) or corrupt."""
    if local is None:
        return CorruptMediaError(f"{shown}: {why}")
    try:
        size = local.stat().st_size
        with local.open("rb") as fh:
            head = fh.read(16)
    except OSError:
        size, head = -1, b""
    if size == 0:
        return EmptyMediaError(f"{shown}: the file is empty (0 bytes)")
    if any(head.startswith(sig) for sig in SIGNATURES) or head[4:8] == b"ftyp":
        return TruncatedMediaError(f"{shown}: starts like a media container but cannot be read (truncated?): {why}")
    return CorruptMediaError(f"{shown}: not a media file this decoder knows: {why}")


def _map_error(exc: Exception, shown: str, *, local: Path | None = None) -> LivemodError:
    """Translate a PyAV/FFmpeg error into the livemod error that names the source and cause."""
    exc_text = _why(exc)
    msg = f"{shown}: {exc_text}"
    if isinstance(exc, (av.error.FileNotFoundError, av.error.HTTPNotFoundError)):
        return SourceNotFoundError(msg)
    if isinstance(exc, av.error.IsADirectoryError):
        return SourceNotFoundError(f"{shown}: is a directory, not a media file")
    if isinstance(exc, (av.error.HTTPForbiddenError, av.error.HTTPUnauthorizedError)):
        return ForbiddenSourceError(f"{shown}: the server refused access: {exc_text}")
    if isinstance(exc, av.error.HTTPTooManyRequestsError):
        return SourceUnavailableError(msg, reason="rate_limited")
    if isinstance(exc, av.error.HTTPClientError):
        return SourceNotFoundError(msg, reason="http_client_error")
    if isinstance(exc, (av.error.HTTPServerError, av.error.ConnectionRefusedError, av.error.ConnectionResetError,
                        av.error.TimeoutError, av.error.ExitError, av.error.ConnectionAbortedError)):
        return SourceUnavailableError(msg)
    if isinstance(exc, (av.error.DemuxerNotFoundError, av.error.DecoderNotFoundError, av.error.ProtocolNotFoundError)):
        return UnsupportedMediaError(msg)
    if isinstance(exc, av.error.PermissionError) and local is not None:
        return ForbiddenSourceError(f"{shown}: cannot read the file: {exc_text}")
    if isinstance(exc, av.error.InvalidDataError):
        return _bad_data(shown, exc_text, local)
    if isinstance(exc, av.error.OSError) and getattr(exc, "errno", None) == 5:
        return SourceUnavailableError(msg, reason="io_error")
    if isinstance(exc, av.error.MemoryError):
        return MediaLimitError(msg)
    return CorruptMediaError(msg)


# ---- HTTP helpers (redirects are followed here, every hop checked) ---------------------------


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """urllib redirect handler that checks every hop like the first URI and bounds the hops."""

    def __init__(self, config: DecoderConfig) -> None:
        self.config = config
        self.max_redirections = config.max_redirects

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if self.config.max_redirects == 0:
            raise ForbiddenSourceError(f"{redact(req.full_url)}: redirect to {redact(newurl)!r} refused (max_redirects=0)")
        if check_uri(newurl, self.config).scheme == "file":
            raise ForbiddenSourceError(f"{redact(req.full_url)}: redirect to a local file refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _http_get(url: str, config: DecoderConfig, *, follow: bool, limit: int = 1 << 20) -> tuple[int, str, bytes]:
    """GET a URL with urllib: (status, final or Location URL, body up to ``limit`` bytes).

    With ``follow`` redirects are followed through ``_CheckedRedirects``; without it a 3xx
    comes back as its status and Location.

    Raises:
        SourceNotFoundError, ForbiddenSourceError, SourceUnavailableError: by HTTP status/network.
    """
    handlers: list[urllib.request.BaseHandler] = [_CheckedRedirects(config)] if follow else []
    if not follow:

        class _NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                return None

        handlers.append(_NoRedirect())
    opener = urllib.request.build_opener(*handlers)
    shown = redact(url)
    try:
        with opener.open(url, timeout=config.connect_timeout_s) as resp:
            return resp.status, resp.url, resp.read(limit)
    except urllib.error.HTTPError as exc:
        with exc:
            if 300 <= exc.code < 400 and not follow:
                return exc.code, urljoin(url, exc.headers.get("Location", "")), b""
            if exc.code in (401, 403):
                raise ForbiddenSourceError(f"{shown}: HTTP {exc.code}: the server refused access") from exc
            if exc.code == 429 or exc.code >= 500:
                raise SourceUnavailableError(f"{shown}: HTTP {exc.code}") from exc
            if 300 <= exc.code < 400:
                raise ForbiddenSourceError(f"{shown}: more than {config.max_redirects} redirects") from exc
            raise SourceNotFoundError(f"{shown}: HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise SourceUnavailableError(f"{shown}: {exc.reason}") from exc
    except (TimeoutError, OSError) as exc:
        raise SourceUnavailableError(f"{shown}: {exc}") from exc


# ---- opening and decoding one file / segment / connection ------------------------------------


def _options(src: Source, cfg: DecoderConfig) -> dict[str, str]:
    connect_us, read_us = str(int(cfg.connect_timeout_s * 1e6)), str(int(cfg.read_timeout_s * 1e6))
    options = {
        "protocol_whitelist": PROTOCOLS[src.scheme],
        "format_whitelist": ",".join(cfg.demuxers),
        "max_pixels": str(cfg.max_pixels),  # also bounds the frames FFmpeg decodes while probing
    }
    if src.scheme in ("http", "https"):
        # FFmpeg never follows redirects itself: _open follows them after checking each hop
        options.update(timeout=connect_us, rw_timeout=read_us, reconnect="0", max_redirects="0")
    elif src.scheme == "rtsp":
        options.update(rtsp_transport="tcp", timeout=read_us)
    elif src.scheme in ("rtmp", "rtmps"):
        options.update(rw_timeout=read_us)
    if src.is_live:  # probing a paced stream takes wall time: FFmpeg's 5 s delays each (re)connection
        options.update(analyzeduration=str(int(LIVE_ANALYZE_S * 1e6)))
    return options


# errors that come from the source, not from the decoder set-up: no point retrying without NVDEC
_SOURCE_ERRORS = (
    av.error.FileNotFoundError, av.error.IsADirectoryError, av.error.InvalidDataError, av.error.HTTPError, av.error.HTTPClientError,
    av.error.ConnectionRefusedError, av.error.ConnectionResetError, av.error.ConnectionAbortedError,
    av.error.TimeoutError, av.error.ExitError, av.error.EOFError, av.error.OSError, av.error.ArgumentError,
)


def _open(run: _Run, src: Source, hops: int = 0) -> tuple[av.container.InputContainer, Source]:
    """Open a checked source with PyAV (NVDEC when chosen); returns the container and the
    source actually opened (the target of any redirect)."""
    cfg = run.config
    hwaccel = None
    if not run.hw_failed and src.kind != "image":
        hwaccel, _reason = choose_hwaccel(cfg)
    local = Path(src.uri) if src.scheme == "file" else None
    try:
        container = av.open(src.uri, options=_options(src, cfg), timeout=(cfg.connect_timeout_s, cfg.read_timeout_s),
                            hwaccel=hwaccel)
    except av.error.FFmpegError as exc:
        if hwaccel is not None and not isinstance(exc, _SOURCE_ERRORS):
            _warn_once("nvdec-open", "NVDEC open failed for %s (%s); decoding on the CPU", src.display, _why(exc))
            run.hw_failed = True
            return _open(run, src, hops)
        if src.scheme in ("http", "https") and isinstance(exc, av.error.OSError) and exc.errno == 5:
            target = _redirect_target(src, cfg, hops)  # FFmpeg's "I/O error" hides redirects and HTTP statuses
            if target is not None:
                return _open(run, target, hops + 1)
        if isinstance(exc, av.error.ArgumentError):
            raise UnsupportedMediaError(
                f"{src.display}: FFmpeg refused to open it ({_why(exc)}); is its container in the allowed demuxers?"
            ) from exc
        raise _map_error(exc, src.display, local=local) from exc
    return container, src


def _check_linked(uri: str, parent: Source, cfg: DecoderConfig, what: str) -> Source:
    """Check a URI that a source points at (a redirect, a playlist entry) like any other URI;
    a network source may not point at local files."""
    target = check_uri(uri, cfg)
    if parent.scheme != "file" and target.scheme == "file":
        raise ForbiddenSourceError(f"{parent.display}: {what} to a local file {target.display!r} refused")
    return target


def _redirect_target(src: Source, cfg: DecoderConfig, hops: int) -> Source | None:
    """Ask the server with urllib what FFmpeg's I/O error hides: a redirect (checked) or a status."""
    status, location, _ = _http_get(src.uri, cfg, follow=False, limit=0)
    if not 300 <= status < 400:
        return None  # a plain answer: FFmpeg's error stands
    if hops >= cfg.max_redirects:
        raise ForbiddenSourceError(
            f"{src.display}: redirect to {redact(location)!r} refused (more than {cfg.max_redirects} redirects)"
        )
    target = _check_linked(location, src, cfg, "redirect")
    if target.kind == "hls" and src.kind != "hls":
        raise UnsupportedMediaError(f"{src.display}: redirects to an HLS playlist; send the playlist URI instead")
    return target


def _lazy_rgb(frame: av.VideoFrame) -> Callable[[], np.ndarray]:
    """Full-resolution RGB of a decoded frame, converted on first use and then reused
    (the re-check and the evidence writer may both ask for it)."""
    cached: list[np.ndarray] = []

    def get() -> np.ndarray:
        if not cached:
            cached.append(frame.to_ndarray(format="rgb24"))
        return cached[0]

    return get


def _lazy_gray(frame: av.VideoFrame) -> GrayReader:
    """``SampledFrame.gray``: full-range grey at full resolution (converted once), or scaled by FFmpeg."""
    cached: list[np.ndarray] = []

    def get(width: int | None = None) -> np.ndarray:
        if width is not None and width < frame.width:
            height = max(1, round(frame.height * width / frame.width))
            return frame.to_ndarray(format="gray", width=width, height=height, interpolation="AREA")
        if not cached:
            cached.append(frame.to_ndarray(format="gray"))
        return cached[0]

    return get


def fitted_size(width: int, height: int, size: Resize) -> tuple[int, int]:
    """The (w, h) a frame of ``width`` x ``height`` is scaled to for ``size``.

    ``keep_aspect`` fits the frame inside the box, keeping its aspect ratio; otherwise the
    frame is squashed to exactly the box.
    """
    if not size.keep_aspect:
        return size.width, size.height
    s = min(size.width / width, size.height / height)
    return max(1, round(width * s)), max(1, round(height * s))


def _scaled(run: _Run, frame: av.VideoFrame, size: Resize) -> np.ndarray:
    w, h = fitted_size(frame.width, frame.height, size)
    return run.scaled(frame, w, h)


def _still(run: _Run, src: Source, t_offset: float) -> SampledFrame | None:
    """A local still image read with OpenCV (decoders/image.py) instead of FFmpeg: no container
    probing, no scaler set up per frame, a JPEG reduced while it decodes. None where FFmpeg
    must read it: a file that cannot be read whole, a header that does not parse, an animated
    WebP, a format whose demuxers settings do not allow, an image OpenCV cannot decode (FFmpeg
    then decodes it or says what is wrong with it, as for any other file).

    Raises:
        MediaLimitError: the header's size is over ``max_pixels`` (nothing is decoded).
    """
    cfg = run.config
    data = read_file(Path(src.uri))
    head = read_header(data) if data is not None else None
    if data is None or head is None or head.animated or not any(d in cfg.demuxers for d in DEMUXERS_FOR[head.format]):
        return None
    if head.width * head.height > cfg.max_pixels:
        raise MediaLimitError(f"{src.display}: frame size {head.width}x{head.height} is over the limit of {cfg.max_pixels} pixels")
    still = decode_still(data, head, [fitted_size(head.width, head.height, size) for size in run.sizes])
    if still is None:
        return None
    run.frames += 1
    run.sampler.state.sampled += 1
    frame = SampledFrame(
        stream_id=run.stream_id,
        index=run.index,
        pts=round(t_offset, 6),
        wall_clock=(run.wall_start + t_offset) if run.wall_start is not None else time.time(),
        keyframe=True,
        reason="image",
        width=still.width,
        height=still.height,
        images=dict(zip(run.sizes, still.images)),
        full_rgb=still.full_rgb,
    )
    run.index += 1
    return frame


def _decode_segment(run: _Run, src: Source, *, t_offset: float = 0.0, live: bool = False) -> Iterator[SampledFrame]:
    """Decode one source, again on the CPU when NVDEC fails before the first frame; a local still
    image through OpenCV where it can."""
    if src.kind == "image" and src.scheme == "file" and not live:
        frame = _still(run, src, t_offset)
        if frame is not None:
            yield frame
            return
    try:
        yield from _decode_file(run, src, t_offset=t_offset, live=live)
    except _HwRetry:
        yield from _decode_file(run, src, t_offset=t_offset, live=live)


# decoders that honour skip_frame and hold pictures back for reordering (B-frames): see _Decoder.feed
_REORDERING = frozenset({"h264", "hevc"})
# keyframes only: no later picture predicts from the decoded one, so H.264's deblocking filter is only
# cosmetic here: about 12% of a 1080p keyframe's decode, the real models' scores move by 0.02 at most
# (benchmarks/frame_cost.py). Not for HEVC (SAO goes too; pixels move more) nor other codecs: unmeasured.
KEYFRAME_OPTIONS = {"h264": {"skip_loop_filter": "all"}}
# a decoder that skipped frames has broken references (H.264 smears, HEVC waits for the next CRA) and
# libdav1d reads skip_frame only when it opens: a change of decoding mode takes a fresh context
_KEEP_MAX_PACKETS = 4096
_KEEP_MAX_BYTES = 256 << 20


class _Decoder:
    """The decoder of one open video stream, and the packets it may have to decode again.

    It starts as the stream's own codec context. While only keyframes are decoded it keeps
    the packets since the last keyframe the decoder produced, so that when keyframes cannot
    keep the coverage guarantee ``replay`` decodes every frame from there with a fresh context.
    """

    def __init__(self, vs: av.video.stream.VideoStream, hwaccel: av.codec.hwaccel.HWAccel | None) -> None:
        self.ctx = vs.codec_context
        self.hwaccel = hwaccel
        self.kept: list[av.Packet] = []
        self.kept_bytes = 0
        self.keep = False  # keep packets for a replay (keyframes mode)
        self.flushed = False

    def over_limits(self) -> bool:
        """The kept packets are too many to hold any longer (a stream with no usable timestamps)."""
        return len(self.kept) > _KEEP_MAX_PACKETS or self.kept_bytes > _KEEP_MAX_BYTES

    def feed(self, packet: av.Packet) -> list[av.VideoFrame]:
        """Decode one packet (an empty one drains the decoder).

        While only keyframes are decoded, an H.264/HEVC decoder with B-frames holds each keyframe
        in its reordering buffer until enough further pictures are decoded: with the non-key
        frames skipped, that is one or two GOPs later, so the coverage guarantee would see a gap
        and decode everything. Each keyframe packet is therefore drained at once and the
        decoder reset for the next one (which is a keyframe again: nothing refers back).
        """
        if not packet.size:
            self.flushed = True
        elif self.keep:
            self.kept.append(packet)
            self.kept_bytes += packet.size
        frames: list[av.VideoFrame] = self.ctx.decode(packet)  # type: ignore[assignment]
        if self.keep and packet.is_keyframe and packet.size and self.ctx.name in _REORDERING:
            try:
                frames += self.ctx.decode(None)  # type: ignore[arg-type]
            except (av.error.EOFError, av.error.InvalidDataError):
                pass
            self.ctx.flush_buffers()
        return frames

    def keyframe_out(self, pts: int) -> None:
        """A keyframe of raw PTS ``pts`` came out: a replay starts from its packet from now on."""
        for i, p in enumerate(self.kept):
            if p.pts == pts:
                del self.kept[:i]
                self.kept_bytes = sum(p.size for p in self.kept)
                return

    def drain(self) -> list[av.VideoFrame]:
        """The frames the decoder still holds (reordering, threads); it takes no packet after this."""
        if self.flushed:
            return []
        self.flushed = True
        try:
            return self.ctx.decode(None)  # type: ignore[return-value]
        except (av.error.EOFError, av.error.InvalidDataError):
            return []

    def fresh(self, skip_frame: str) -> None:
        """Replace the (drained) decoder with a new one for the same stream."""
        old = self.ctx
        new = av.CodecContext.create(old.name, "r", hwaccel=self.hwaccel)
        if old.extradata:
            new.extradata = old.extradata
        new.width, new.height = old.width, old.height  # type: ignore[attr-defined]
        new.thread_type, new.thread_count = old.thread_type, old.thread_count
        new.skip_frame = skip_frame
        if skip_frame == "NONKEY" and new.name in KEYFRAME_OPTIONS:
            new.options = dict(KEYFRAME_OPTIONS[new.name])
        self.ctx, self.flushed = new, False

    def replay(self) -> Iterator[list[av.VideoFrame]]:
        """Decode every frame of the kept packets again with a fresh context that skips nothing;
        the decoder goes on decoding every frame."""
        kept, self.kept, self.kept_bytes, self.keep = self.kept, [], 0, False
        self.fresh("DEFAULT")
        for packet in kept:
            try:
                yield self.ctx.decode(packet)  # type: ignore[misc]
            except av.error.InvalidDataError:
                continue


def _gap_ref(sampler: Sampler) -> float:
    s = sampler.state
    return s.last_sample_t if s.last_sample_t is not None else (s.first_t or 0.0)


def _decode_file(run: _Run, src: Source, *, t_offset: float = 0.0, live: bool = False) -> Iterator[SampledFrame]:
    """Decode one finite file/segment (or one connection to a live source) and yield sampled frames.

    Limits (frames, media seconds, wall time) apply per call, i.e. per segment; a live
    connection is bounded only by its duration and ``max_live_seconds``. When the data ends
    in garbage after some frames were decoded (a truncated segment, a cut connection), the
    frames decoded so far are kept and the segment ends with a warning; with no frame at all
    it is an error. The coverage guarantee (``SamplerConfig.max_gap_s``) is kept here: when
    the sampler says keyframes are not enough, the packets since the last keyframe the
    decoder produced are decoded again, every frame, and sampled by interval.
    """
    cfg, sampler = run.config, run.sampler
    container, src = _open(run, src)
    shown = src.display
    local = Path(src.uri) if src.scheme == "file" else None
    seg_started = time.monotonic()
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise UnsupportedMediaError(f"{shown}: no video stream (streams: {', '.join(kinds)})")
        vs = container.streams.video[0]
        cc = vs.codec_context
        if cc is None:
            raise UnsupportedMediaError(f"{shown}: no decoder for codec {vs.codec.name if vs.codec else '?'}")
        if cc.width and cc.height and cc.width * cc.height > cfg.max_pixels:
            raise MediaLimitError(f"{shown}: frame size {cc.width}x{cc.height} is over the limit of {cfg.max_pixels} pixels")
        hw = bool(cc.is_hwaccel)
        tb = float(vs.time_base) if vs.time_base else 0.0
        rate = float(vs.average_rate) if vs.average_rate else 0.0
        start = vs.start_time
        image = src.kind == "image"
        dec = _Decoder(vs, choose_hwaccel(cfg)[0] if hw else None)
        if not image and sampler.keyframes_only:
            cc.skip_frame = "NONKEY"
            if cc.name in KEYFRAME_OPTIONS:
                cc.options = dict(KEYFRAME_OPTIONS[cc.name])
            dec.keep = True
        seen_packets = decoded_here = 0
        base = run.wall_start or 0.0
        looked_t: float | None = None  # the latest frame time handed to the sampler
        again_upto: float | None = None  # frames up to this time come again from a replay: looked at already
        t_last: float | None = None

        def emit(frames: Sequence[av.VideoFrame]) -> Iterator[SampledFrame]:
            """Sample decoded frames; returns True when the source is done (an image, a live limit)."""
            nonlocal decoded_here, looked_t
            for frame in frames:
                decoded_here += 1
                run.frames += 1
                if not live and decoded_here > cfg.max_frames_per_segment:
                    raise MediaLimitError(f"{shown}: more than {cfg.max_frames_per_segment} frames")
                if frame.width * frame.height > cfg.max_pixels:
                    raise MediaLimitError(f"{shown}: frame size {frame.width}x{frame.height} is over the limit of {cfg.max_pixels} pixels")
                if frame.pts is not None:
                    rel = (frame.pts - (start or 0)) * tb
                else:  # raw elementary streams may carry no timestamps: count frames
                    rel = (decoded_here - 1) / rate if rate else 0.0
                if not live and rel > cfg.max_segment_seconds:
                    raise MediaLimitError(f"{shown}: media longer than {cfg.max_segment_seconds:g} s")
                pts = t_offset + rel
                if live and run.live_limit_s and pts > run.live_limit_s:
                    return True
                key = bool(frame.key_frame)
                gap: float | None = None
                if image:
                    reason: SampleReason | None = "image"
                    sampler.state.sampled += 1
                else:
                    t = base + pts
                    if again_upto is not None and t <= again_upto:
                        continue
                    looked_t = t if looked_t is None else max(looked_t, t)
                    if dec.keep:
                        if key and frame.pts is not None:
                            dec.keyframe_out(frame.pts)
                        elif not key:
                            _warn_once(f"noskip-{dec.ctx.name}", "%s: the %s decoder ignores skip_frame: sampling its "
                                       "non-key frames every %g s", shown, dec.ctx.name, sampler.fill_s, level=logging.INFO)
                    thumb = (run.scaled(frame, THUMB_SIZE, THUMB_SIZE, "gray")
                             if sampler.needs_thumb(t, key) else None)
                    reason = sampler.decide(t, key, thumb)
                    if reason is None:
                        continue
                    gap = round(sampler.gap, 6) if sampler.gap is not None else None
                yield SampledFrame(
                    stream_id=run.stream_id,
                    index=run.index,
                    pts=round(pts, 6),
                    wall_clock=(run.wall_start + pts) if run.wall_start is not None else time.time(),
                    keyframe=key,
                    reason=reason,
                    width=frame.width,
                    height=frame.height,
                    images={size: _scaled(run, frame, size) for size in run.sizes},
                    full_rgb=_lazy_rgb(frame),
                    gap_s=gap,
                    gray=_lazy_gray(frame),
                )
                run.index += 1
                if image:
                    return True  # a still image is one frame
            return False

        def refill(why: str) -> Iterator[SampledFrame]:
            """Decode every frame since the last keyframe produced; returns True when done."""
            nonlocal again_upto
            if (yield from emit(dec.drain())):
                return True
            level = logging.INFO if sampler.state.fallbacks == 1 else logging.DEBUG
            log.log(level, "%s: %s: keyframes cannot keep a sample every %g s; decoding every frame from the last "
                    "keyframe and sampling every %g s", shown, why, cfg.sampling.max_gap_s, sampler.fill_s)
            again_upto = looked_t
            for frames in dec.replay():
                if (yield from emit(frames)):
                    return True
            return False

        packets = container.demux(vs)
        while True:
            if run.stopped():
                return
            if not live and time.monotonic() - seg_started > cfg.decode_timeout_s:
                raise MediaLimitError(f"{shown}: decoding took longer than {cfg.decode_timeout_s:g} s", reason="decode_timeout")
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                if decoded_here and isinstance(exc, (av.error.InvalidDataError, av.error.EOFError)):
                    log.warning("%s: stream ends in bad data after %d frames (%s); keeping what was decoded",
                                shown, decoded_here, _why(exc))
                    break
                if live and decoded_here and isinstance(exc, av.error.OSError) and exc.errno == 5:
                    log.debug("%s: I/O error after %d frames: the publisher ended or dropped", shown, decoded_here)
                    break
                raise _map_error(exc, shown, local=local) from exc
            if packet.pts is not None and packet.size and not image:
                seen_packets += 1
                if start is None:
                    start = packet.pts
                t_pkt = t_offset + (packet.pts - start) * tb
                if live:
                    run.media_t, run.media_mono = max(run.media_t, t_pkt), time.monotonic()
                t_last = base + t_pkt if t_last is None else max(t_last, base + t_pkt)
                changed = sampler.on_packet(base + t_pkt, packet.is_keyframe)
                if changed is None and dec.keep and dec.over_limits():
                    sampler.start_fill()
                    changed = "interval"
                if changed == "interval":
                    if (yield from refill(f"no frame sampled for {base + t_pkt - _gap_ref(sampler):.1f} s")):
                        return
                elif changed == "keyframes":
                    if (yield from emit(dec.drain())):
                        return
                    log.log(logging.INFO if sampler.state.fallbacks == 1 else logging.DEBUG,
                            "%s: the decoder gives keyframes every %g s or less again: sampling keyframes",
                            shown, cfg.sampling.max_gap_s)
                    dec.fresh("NONKEY")
                    dec.keep, again_upto = True, None
            elif packet.size:
                seen_packets += 1
            try:
                frames = dec.feed(packet)
            except av.error.FFmpegError as exc:
                if hw and decoded_here == 0 and not isinstance(exc, av.error.InvalidDataError):
                    _warn_once("nvdec-decode", "NVDEC decode failed for %s (%s); decoding on the CPU", shown, _why(exc))
                    run.hw_failed = True
                    raise _HwRetry() from exc
                if isinstance(exc, av.error.InvalidDataError):
                    log.debug("%s: undecodable packet skipped: %s", shown, _why(exc))
                    continue
                raise _map_error(exc, shown, local=local) from exc
            if (yield from emit(frames)):
                return
        if (yield from emit(dec.drain())):
            return
        if image:  # no frame came out (an image's one frame returns from emit)
            raise _bad_data(shown, "no picture could be decoded", local)
        if t_last is not None and sampler.on_end(t_last):
            if (yield from refill(f"the source ends {t_last - _gap_ref(sampler):.1f} s after the last sample")):
                return
            if (yield from emit(dec.drain())):
                return
        if decoded_here == 0 and not live:
            if seen_packets == 0:
                raise TruncatedMediaError(f"{shown}: the container holds no video packets")
            raise CorruptMediaError(f"{shown}: {seen_packets} video packets but no frame could be decoded")


# ---- HLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Playlist:
    """A parsed HLS playlist.

    Attributes:
        segments: (media sequence number, absolute URI, duration s) per media segment.
        target: #EXT-X-TARGETDURATION in seconds.
        ended: #EXT-X-ENDLIST seen (VOD, or a live stream that has finished).
        variants: (bandwidth, absolute URI) per variant of a master playlist.
    """

    segments: tuple[tuple[int, str, float], ...]
    target: float
    ended: bool
    variants: tuple[tuple[int, str], ...] = ()


def parse_m3u8(text: str, base: str) -> Playlist:
    """Parse an HLS playlist (media or master) with URIs resolved against ``base``.

    Raises:
        CorruptMediaError: not a playlist, or a tag value that does not parse.
        UnsupportedMediaError: encrypted segments, byte ranges or fMP4 init sections.
    """
    text = text.lstrip("\ufeff \t\r\n")
    if not text.startswith("#EXTM3U"):
        raise CorruptMediaError(f"{redact(base)}: not an HLS playlist (no #EXTM3U)")
    seq, target, ended = 0, 2.0, False
    duration: float | None = None
    segments: list[tuple[int, str, float]] = []
    variants: list[tuple[int, str]] = []
    bandwidth: int | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        try:
            if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                seq = int(line.split(":", 1)[1])
            elif line.startswith("#EXT-X-TARGETDURATION:"):
                target = float(line.split(":", 1)[1])
            elif line.startswith("#EXTINF:"):
                duration = float(line.split(":", 1)[1].split(",")[0])
            elif line.startswith("#EXT-X-ENDLIST"):
                ended = True
            elif line.startswith("#EXT-X-STREAM-INF:"):
                bw = [a for a in line.split(":", 1)[1].split(",") if a.startswith("BANDWIDTH=")]
                bandwidth = int(bw[0].split("=")[1]) if bw else 0
            elif line.startswith("#EXT-X-KEY:") and "METHOD=NONE" not in line:
                raise UnsupportedMediaError(f"{redact(base)}: encrypted HLS segments are not supported")
            elif line.startswith(("#EXT-X-MAP:", "#EXT-X-BYTERANGE:")):
                raise UnsupportedMediaError(
                    f"{redact(base)}: {line.split(':', 1)[0]} (fMP4 init sections, byte ranges) is not supported"
                )
            elif not line.startswith("#"):
                uri = urljoin(base, line)
                if bandwidth is not None:
                    variants.append((bandwidth, uri))
                    bandwidth = None
                else:
                    segments.append((seq, uri, duration if duration is not None else target))
                    seq += 1
                    duration = None
        except (ValueError, IndexError) as exc:
            raise CorruptMediaError(f"{redact(base)}: bad playlist line {line[:80]!r}") from exc
    return Playlist(tuple(segments), target, ended, tuple(variants))


def _fetch_playlist(run: _Run, src: Source) -> Playlist:
    """Read and parse a playlist; relative segment URIs resolve against its final URL (after redirects)."""
    if src.scheme == "file":
        try:
            text = Path(src.uri).read_text(errors="replace")
        except FileNotFoundError as exc:
            raise SourceNotFoundError(f"{src.display}: no such playlist") from exc
        except OSError as exc:
            raise CorruptMediaError(f"{src.display}: cannot read playlist: {exc.strerror}") from exc
        return parse_m3u8(text, Path(src.uri).as_uri())
    _status, final_url, body = _http_get(src.uri, run.config, follow=True)
    return parse_m3u8(body.decode("utf-8", "replace"), final_url)


def _decode_hls(run: _Run, src: Source) -> Iterator[SampledFrame]:
    """Follow an HLS playlist: every segment of a VOD one; new segments of a live one until the
    broadcast ends.

    livemod reads the playlist itself instead of FFmpeg's hls demuxer so that every segment
    URI passes ``check_uri`` (a playlist cannot point at a metadata address or a local file
    outside the roots), and limits apply per segment. Segment times continue across segments
    from the #EXTINF durations. A live playlist ends with #EXT-X-ENDLIST, the caller's stop,
    its duration (``live_limit_s``), or ``live_idle_timeout_s`` without a new segment; a
    playlist or segment that cannot be fetched meanwhile (a retriable error) is tried again
    with backoff. Segments that left the playlist before they could be read count as stream
    time (the target duration each), so the outage shows in ``gap_s``.
    """
    cfg, rc = run.config, run.config.reconnect
    playlist = _fetch_playlist(run, src)
    if playlist.variants:  # master playlist: take the highest bandwidth variant
        src = _check_linked(max(playlist.variants)[1], src, cfg, "variant")
        playlist = _fetch_playlist(run, src)
    done_upto: int | None = None  # media sequence number of the last segment read
    t_next = 0.0
    idle_since = time.monotonic()
    backoff = rc.initial_s
    trouble: str | None = None  # why the last fetch failed (None: all well)
    while True:
        failed: str | None = None
        for seq, uri, dur in playlist.segments:
            if done_upto is not None and seq <= done_upto:
                continue
            if run.stopped() or (not playlist.ended and run.live_done()):
                return
            if done_upto is not None and seq > done_upto + 1:
                missed = seq - done_upto - 1
                t_next += missed * playlist.target
                log.info("%s: %d segments left the playlist before they were read (about %.0f s of media missed)",
                         src.display, missed, missed * playlist.target)
            seg = _check_linked(uri, src, cfg, "segment")  # a playlist cannot point anywhere a URI could not
            if seg.kind == "hls":
                raise CorruptMediaError(f"{src.display}: segment {seg.display} is itself a playlist")
            try:
                yield from _decode_segment(run, seg, t_offset=t_next)
            except SourceUnavailableError as exc:
                if playlist.ended:
                    raise
                failed = str(exc)
                break
            t_next += dur
            done_upto = seq
            run.media_t = t_next
            idle_since = time.monotonic()
        if failed is None and playlist.ended:
            return
        if run.stopped() or run.live_done():
            return
        quiet = time.monotonic() - idle_since
        if quiet > cfg.live_idle_timeout_s:
            log.info("%s: no new segment for %.0f s; the broadcast has ended", src.display, quiet)
            return
        if failed is not None:
            if trouble is None:
                log.info("%s: live playlist dropped (%s); trying again until %g s without media",
                         src.display, failed, cfg.live_idle_timeout_s)
            trouble = failed
        if run.wait(backoff if trouble else max(0.2, playlist.target / 2)):
            return
        try:
            playlist = _fetch_playlist(run, src)
        except SourceUnavailableError as exc:
            if trouble is None:
                log.info("%s: live playlist dropped (%s); trying again until %g s without media",
                         src.display, exc, cfg.live_idle_timeout_s)
            trouble = str(exc)
            backoff = min(backoff * 2, rc.max_s)
            continue
        if failed is None:
            if trouble is not None:
                log.info("%s: live playlist is back", src.display)
            trouble, backoff = None, rc.initial_s
        else:
            backoff = min(backoff * 2, rc.max_s)


# ---- RTMP / RTSP -----------------------------------------------------------------------------


def _decode_live(run: _Run, src: Source) -> Iterator[SampledFrame]:
    """Follow an RTMP/RTSP stream until the broadcast ends; reconnect with backoff when it drops.

    An RTMP publisher that stops and one that drops both end the connection with FFmpeg's
    I/O error (errno 5), so an end of connection is never taken as the end of the broadcast:
    the source is reconnected after ``initial_s``, doubling up to ``max_s``, until the caller
    stops it, its duration (``live_limit_s``) is reached, or no media has come for
    ``live_idle_timeout_s`` (then it ends quietly when frames were seen, else with
    SourceUnavailableError); ``max_attempts`` (when set) also bounds the attempts in a row.
    Each drop is logged once. The sampler state carries over, and the stream time runs on
    through the outage, so the first frame after it shows the outage in ``gap_s``.
    """
    cfg = run.config
    rc, idle = cfg.reconnect, cfg.live_idle_timeout_s
    attempt, backoff = 0, rc.initial_s
    began = time.monotonic()
    while not run.stopped() and not run.live_done():
        before = run.frames
        t_offset = 0.0
        if run.media_mono is not None:  # a reconnect: stream time goes on as wall time did
            t_offset = run.media_t + (time.monotonic() - run.media_mono)
        try:
            yield from _decode_segment(run, src, t_offset=t_offset, live=True)
        except SourceUnavailableError as exc:
            why = str(exc)
        else:
            why = "the connection ended"
        if run.stopped() or run.live_done():
            return
        if run.frames > before:
            attempt, backoff = 0, rc.initial_s
            log.info("%s: live source dropped after %.1f s of media (%s); reconnecting until %g s without media",
                     src.display, run.media_t, why, idle)
        attempt += 1
        quiet = time.monotonic() - (run.media_mono if run.media_mono is not None else began)
        if quiet >= idle or (rc.max_attempts and attempt > rc.max_attempts):
            if run.frames:
                log.info("%s: no media for %.0f s (%d reconnect attempts): the broadcast has ended",
                         src.display, quiet, attempt - 1)
                return
            raise SourceUnavailableError(f"{src.display}: no frames after {attempt - 1} reconnect attempts ({why})")
        log.debug("%s: %s; reconnecting in %.1f s (attempt %d)", src.display, why, backoff, attempt)
        if run.wait(min(backoff, max(0.0, idle - quiet))):
            return
        backoff = min(backoff * 2, rc.max_s)


def decode(
    uri: str,
    *,
    stream_id: str,
    sizes: Sequence[Resize],
    config: DecoderConfig,
    wall_start: float | None = None,
    state: SamplerState | None = None,
    stop: threading.Event | None = None,
    duration_s: float | None = None,
) -> Iterator[SampledFrame]:
    """Sample frames from a media URI.

    A generator: nothing runs, and nothing is raised, until the first ``next()``; then the
    URI is checked (``check_uri``) before anything is opened. Finite files and HTTP
    segments are decoded once; .m3u8 playlists are followed (VOD to the end, live until it
    ends); RTMP/RTSP are followed with reconnects. Still images give one frame.

    Args:
        uri: a local path or a file/http(s)/rtmp(s)/rtsp URI.
        stream_id: carried into every SampledFrame.
        sizes: the working images to produce for each sampled frame (FFmpeg scales them).
        config: limits, allowed sources, sampling, reconnects, hwaccel.
        wall_start: Unix time of PTS 0, when the ingest knows it; frame times are
            ``wall_start + pts`` (else the time of decoding).
        state: the stream's sampler state, carried across segments; mutated in place.
        stop: set it to end a live source early.
        duration_s: a live source (RTMP/RTSP, live HLS) ends after this many media seconds
            (the reference's duration); ``max_live_seconds`` applies too.

    Yields:
        SampledFrame in PTS order; ``index`` counts from 0 for this call. No stretch of
        stream time longer than ``config.sampling.max_gap_s`` passes without one (``gap_s``
        says how long it was), except across a live outage.

    Raises:
        BadUriError, ForbiddenSourceError: the URI is refused (before or, for redirects and
            HTTP 401/403, while opening).
        MediaError subclasses: the media is unusable (not retriable).
        SourceNotFoundError: missing file, HTTP 404, unknown host.
        SourceUnavailableError: the network failed or timed out (retriable).
    """
    src = check_uri(uri, config)
    run = _Run(uri, stream_id, sizes, config, Sampler(config.sampling, state), wall_start, stop)
    limits = [x for x in (config.max_live_seconds, duration_s) if x]
    run.live_limit_s = min(limits) if limits else 0.0
    if src.kind == "hls":
        yield from _decode_hls(run, src)
    elif src.is_live:
        yield from _decode_live(run, src)
    else:
        yield from _decode_segment(run, src)
