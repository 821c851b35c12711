"""Open media with PyAV, sample frames, and scale them with FFmpeg; every failure becomes a typed error."""

from __future__ import annotations

import ctypes
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import urljoin

import av
import av.error
import numpy as np

from livemod.decoders.config import DecoderConfig
from livemod.decoders.errors import (
    CorruptMediaError,
    EmptyMediaError,
    LivemodError,
    MediaLimitError,
    SourceNotFoundError,
    SourceUnavailableError,
    TruncatedMediaError,
    UnsupportedMediaError,
)
from livemod.decoders.sampling import Sampler, SamplerState
from livemod.decoders.types import Resize, SampledFrame
from livemod.decoders.uri import Source, check_uri

log = logging.getLogger(__name__)

# first bytes of containers we accept: a file that starts like one but cannot be opened is truncated
SIGNATURES = (b"\x1aE\xdf\xa3", b"FLV", b"RIFF", b"\x47", b"\x00\x00\x00", b"\xff\xd8", b"\x89PNG", b"#EXTM3U")
THUMB = 32


@lru_cache(maxsize=1)
def probe_nvdec() -> tuple[bool, str]:
    """Whether NVDEC decoding can be tried: a CUDA driver loads and reports a device.

    Uses the driver API through ctypes (cuInit, cuDeviceGetCount), so it costs nothing
    where there is no GPU and never touches TensorRT.
    """
    if "cuda" not in av.codec.hwaccel.hwdevices_available():
        return False, "this FFmpeg build has no CUDA hwdevice"
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no CUDA driver (libcuda.so.1 not found)"
    if lib.cuInit(0) != 0:
        return False, "cuInit failed (no usable GPU)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return False, "no CUDA device"
    return True, f"{count.value} CUDA device(s)"


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
    started: float = field(default_factory=time.monotonic)
    index: int = 0
    frames: int = 0
    hw_failed: bool = False

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()


def _map_error(exc: Exception, uri: str, *, local: Path | None = None) -> LivemodError:
    """Translate a PyAV/FFmpeg error into the livemod error that names the cause."""
    msg = f"{uri}: {exc}"
    if isinstance(exc, (av.error.FileNotFoundError, av.error.HTTPNotFoundError)):
        return SourceNotFoundError(msg)
    if isinstance(exc, (av.error.HTTPForbiddenError, av.error.HTTPUnauthorizedError, av.error.HTTPClientError)):
        return SourceNotFoundError(msg, reason="http_client_error")
    if isinstance(exc, (av.error.HTTPServerError, av.error.ConnectionRefusedError, av.error.ConnectionResetError,
                        av.error.TimeoutError, av.error.ExitError, av.error.ConnectionAbortedError)):
        return SourceUnavailableError(msg)
    if isinstance(exc, (av.error.DemuxerNotFoundError, av.error.DecoderNotFoundError, av.error.ProtocolNotFoundError)):
        return UnsupportedMediaError(msg)
    if isinstance(exc, av.error.InvalidDataError):
        if local is not None:
            try:
                size = local.stat().st_size
                with local.open("rb") as fh:
                    head = fh.read(16)
            except OSError:
                size, head = -1, b""
            if size == 0:
                return EmptyMediaError(f"{uri}: the file is empty (0 bytes)")
            if any(head.startswith(sig) for sig in SIGNATURES) or head[4:8] == b"ftyp":
                return TruncatedMediaError(f"{uri}: starts like a media container but cannot be read (truncated?): {exc}")
            return CorruptMediaError(f"{uri}: not a media file this decoder knows: {exc}")
        return CorruptMediaError(msg)
    if isinstance(exc, av.error.OSError) and getattr(exc, "errno", None) == 5:
        return SourceUnavailableError(msg, reason="io_error")
    if isinstance(exc, av.error.MemoryError):
        return MediaLimitError(msg)
    return CorruptMediaError(msg)


def _open(run: _Run, uri: str, src: Source) -> av.container.InputContainer:
    cfg = run.config
    options: dict[str, str] = {}
    if src.scheme in ("http", "https"):
        options.update(rw_timeout=str(int(cfg.read_timeout_s * 1e6)), reconnect="0")
    elif src.scheme == "rtsp":
        options.update(rtsp_transport="tcp", timeout=str(int(cfg.read_timeout_s * 1e6)))
    elif src.scheme in ("rtmp", "rtmps"):
        options.update(rw_timeout=str(int(cfg.read_timeout_s * 1e6)))
    hwaccel = None
    if cfg.hwaccel != "none" and not run.hw_failed and src.kind != "image":
        ok, why = probe_nvdec()
        if ok:
            hwaccel = av.codec.hwaccel.HWAccel(device_type="cuda", allow_software_fallback=True)
        elif cfg.hwaccel == "cuda":
            log.warning("hwaccel=cuda requested but NVDEC is unavailable (%s); decoding on the CPU", why)
    local = Path(uri) if src.scheme == "file" else None
    try:
        return av.open(uri, options=options, timeout=(cfg.connect_timeout_s, cfg.read_timeout_s), hwaccel=hwaccel)
    except av.error.FFmpegError as exc:
        if hwaccel is not None and not isinstance(exc, (av.error.FileNotFoundError, av.error.InvalidDataError)):
            log.warning("NVDEC open failed for %s (%s); falling back to CPU decode for this stream", uri, exc)
            run.hw_failed = True
            return _open(run, uri, src)
        raise _map_error(exc, uri, local=local) from exc


def _lazy_rgb(frame: av.VideoFrame) -> Callable[[], np.ndarray]:
    """Full-resolution RGB of a decoded frame, converted on first use and then reused
    (the re-check and the evidence writer may both ask for it)."""
    cached: list[np.ndarray] = []

    def get() -> np.ndarray:
        if not cached:
            cached.append(frame.to_ndarray(format="rgb24"))
        return cached[0]

    return get


def _scaled(frame: av.VideoFrame, size: Resize) -> np.ndarray:
    w, h = size.width, size.height
    if size.keep_aspect:
        s = min(w / frame.width, h / frame.height)
        w, h = max(1, round(frame.width * s)), max(1, round(frame.height * s))
    return frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")


def _decode_file(run: _Run, uri: str, src: Source, *, t_offset: float = 0.0, live: bool = False) -> Iterator[SampledFrame]:
    """Decode one finite file/segment (or one connection to a live source) and yield sampled frames."""
    cfg, sampler = run.config, run.sampler
    container = _open(run, uri, src)
    local = Path(uri) if src.scheme == "file" else None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise UnsupportedMediaError(f"{uri}: no video stream (streams: {', '.join(kinds)})")
        vs = container.streams.video[0]
        cc = vs.codec_context
        if cc is None:
            raise UnsupportedMediaError(f"{uri}: no decoder for codec {vs.codec.name if vs.codec else '?'}")
        if cc.width and cc.height and cc.width * cc.height > cfg.max_pixels:
            raise MediaLimitError(f"{uri}: frame size {cc.width}x{cc.height} is over the limit of {cfg.max_pixels} pixels")
        tb = vs.time_base
        start = vs.start_time
        if src.kind != "image" and sampler.keyframes_only:
            cc.skip_frame = "NONKEY"
        seen_packets = decoded_here = 0
        base = run.wall_start or 0.0
        packets = container.demux(vs)
        while True:
            if run.stopped():
                return
            if time.monotonic() - run.started > cfg.decode_timeout_s and not live:
                raise MediaLimitError(f"{uri}: decoding took longer than {cfg.decode_timeout_s:.0f} s", reason="decode_timeout")
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                if decoded_here and isinstance(exc, (av.error.InvalidDataError, av.error.EOFError)):
                    log.warning("%s: stream ends in bad data after %d frames (%s); keeping what was decoded", uri, decoded_here, exc)
                    break
                raise _map_error(exc, uri, local=local) from exc
            if packet.pts is not None and packet.size:
                seen_packets += 1
                if start is None:
                    start = packet.pts
                t_pkt = t_offset + float((packet.pts - start) * tb)
                if sampler.on_packet(base + t_pkt, packet.is_keyframe):
                    log.info("%s: no keyframe for %.1f s: switching to interval sampling", uri, cfg.sampling.keyframe_fallback_s)
                    cc.skip_frame = "DEFAULT"
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                if isinstance(exc, av.error.InvalidDataError):
                    log.debug("%s: undecodable packet skipped: %s", uri, exc)
                    continue
                raise _map_error(exc, uri, local=local) from exc
            for frame in frames:
                decoded_here += 1
                run.frames += 1
                if run.frames > cfg.max_frames_per_segment and not live:
                    raise MediaLimitError(f"{uri}: more than {cfg.max_frames_per_segment} frames")
                if frame.width * frame.height > cfg.max_pixels:
                    raise MediaLimitError(f"{uri}: frame size {frame.width}x{frame.height} is over the limit of {cfg.max_pixels} pixels")
                pts = t_offset + (float((frame.pts - (start or 0)) * tb) if frame.pts is not None else 0.0)
                if pts > cfg.max_segment_seconds and not live:
                    raise MediaLimitError(f"{uri}: media longer than {cfg.max_segment_seconds:.0f} s")
                if live and cfg.max_live_seconds and pts > cfg.max_live_seconds:
                    return
                thumb = frame.to_ndarray(format="gray", width=THUMB, height=THUMB, interpolation="AREA")
                reason = "image" if src.kind == "image" else sampler.decide(base + pts, bool(frame.key_frame), thumb)
                if reason is None:
                    continue
                if src.kind == "image":
                    sampler.state.sampled += 1
                images = {size: _scaled(frame, size) for size in run.sizes}
                yield SampledFrame(
                    stream_id=run.stream_id,
                    index=run.index,
                    pts=round(pts, 6),
                    wall_clock=(run.wall_start + pts) if run.wall_start is not None else time.time(),
                    keyframe=bool(frame.key_frame),
                    reason=reason,
                    width=frame.width,
                    height=frame.height,
                    images=images,
                    full_rgb=_lazy_rgb(frame),
                )
                run.index += 1
        if decoded_here == 0 and not live:
            if seen_packets == 0:
                raise TruncatedMediaError(f"{uri}: the container holds no video packets")
            raise CorruptMediaError(f"{uri}: {seen_packets} video packets but no frame could be decoded")


# ---- HLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Playlist:
    """A parsed media playlist: (sequence number, uri, duration) per segment, and whether it ended."""

    segments: tuple[tuple[int, str, float], ...]
    target: float
    ended: bool
    variants: tuple[tuple[int, str], ...] = ()


def parse_m3u8(text: str, base: str) -> Playlist:
    """Parse an HLS playlist (media or master) with segment URIs resolved against ``base``."""
    if not text.lstrip().startswith("#EXTM3U"):
        raise CorruptMediaError(f"{base}: not an HLS playlist (no #EXTM3U)")
    seq, target, ended = 0, 2.0, False
    duration: float | None = None
    segments, variants = [], []
    bandwidth: int | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            seq = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            target = float(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].split(",")[0])
        elif line.startswith("#EXT-X-ENDLIST"):
            ended = True
        elif line.startswith("#EXT-X-STREAM-INF:"):
            attrs = line.split(":", 1)[1]
            bw = [a for a in attrs.split(",") if a.startswith("BANDWIDTH=")]
            bandwidth = int(bw[0].split("=")[1]) if bw else 0
        elif not line.startswith("#"):
            uri = urljoin(base, line)
            if bandwidth is not None:
                variants.append((bandwidth, uri))
                bandwidth = None
            else:
                segments.append((seq, uri, duration if duration is not None else target))
                seq += 1
                duration = None
    return Playlist(tuple(segments), target, ended, tuple(variants))


def _fetch_text(run: _Run, src: Source) -> str:
    if src.scheme == "file":
        try:
            return Path(src.uri).read_text(errors="replace")
        except FileNotFoundError as exc:
            raise SourceNotFoundError(f"{src.uri}: no such playlist") from exc
        except OSError as exc:
            raise CorruptMediaError(f"{src.uri}: cannot read playlist: {exc}") from exc
    try:
        with urllib.request.urlopen(src.uri, timeout=run.config.connect_timeout_s) as resp:  # noqa: S310 - checked URI
            return resp.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise SourceUnavailableError(f"{src.uri}: HTTP {exc.code}") from exc
        raise SourceNotFoundError(f"{src.uri}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise SourceUnavailableError(f"{src.uri}: {exc}") from exc


def _decode_hls(run: _Run, src: Source) -> Iterator[SampledFrame]:
    """Follow an HLS playlist: every segment of a VOD one; new segments of a live one until it ends."""
    cfg = run.config
    base = src.uri if src.scheme != "file" else Path(src.uri).as_uri()
    playlist = parse_m3u8(_fetch_text(run, src), base)
    if playlist.variants:  # master playlist: take the highest bandwidth variant
        variant = max(playlist.variants)[1]
        src = check_uri(variant, cfg)
        base = src.uri if src.scheme != "file" else Path(src.uri).as_uri()
        playlist = parse_m3u8(_fetch_text(run, src), base)
    done: set[int] = set()
    t_next = 0.0
    idle_since = time.monotonic()
    while True:
        for seq, uri, dur in playlist.segments:
            if seq in done:
                continue
            if run.stopped():
                return
            seg = check_uri(uri, cfg)  # every segment is checked: a playlist cannot point elsewhere
            yield from _decode_file(run, seg.uri, seg, t_offset=t_next)
            t_next += dur
            done.add(seq)
            idle_since = time.monotonic()
        if playlist.ended or run.stopped():
            return
        if cfg.max_live_seconds and t_next >= cfg.max_live_seconds:
            return
        if time.monotonic() - idle_since > max(3 * playlist.target, cfg.read_timeout_s):
            log.info("%s: live playlist stalled for %.0f s; treating it as ended", run.uri, time.monotonic() - idle_since)
            return
        wait = max(0.2, playlist.target / 2)
        if run.stop is not None:
            if run.stop.wait(wait):
                return
        else:
            time.sleep(wait)
        playlist = parse_m3u8(_fetch_text(run, src), base)


def _decode_live(run: _Run, src: Source) -> Iterator[SampledFrame]:
    """Follow an RTMP/RTSP stream; reconnect with exponential backoff when it drops."""
    rc = run.config.reconnect
    attempt, backoff, t_offset = 0, rc.initial_s, 0.0
    while not run.stopped():
        before = run.frames
        try:
            for frame in _decode_file(run, src.uri, src, t_offset=t_offset, live=True):
                t_offset = max(t_offset, frame.pts)
                yield frame
            reason = "ended"
        except SourceUnavailableError as exc:
            reason = str(exc)
        if run.frames > before:
            attempt, backoff = 0, rc.initial_s
        attempt += 1
        if rc.max_attempts and attempt > rc.max_attempts:
            if run.frames:
                log.info("%s: gone after %d reconnect attempts; treating as the end of the stream", src.uri, attempt - 1)
                return
            raise SourceUnavailableError(f"{src.uri}: no frames after {attempt - 1} attempts ({reason})")
        log.info("%s: %s; reconnecting in %.1f s (attempt %d)", src.uri, reason, backoff, attempt)
        if run.stop is not None:
            if run.stop.wait(backoff):
                return
        else:
            time.sleep(backoff)
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
) -> Iterator[SampledFrame]:
    """Sample frames from a media URI.

    Args:
        uri: a local path or file/http(s)/rtmp(s)/rtsp URI; .m3u8 is followed as HLS.
        stream_id: carried into every SampledFrame.
        sizes: the working images to produce for each sampled frame (FFmpeg scales them).
        config: limits, allowed sources and sampling.
        wall_start: Unix time of PTS 0, when the ingest knows it.
        state: the stream's sampler state, carried across segments; mutated in place.
        stop: set it to end a live source early.

    Yields:
        SampledFrame in PTS order.

    Raises:
        BadUriError, ForbiddenSourceError: before anything is opened.
        MediaError subclasses: the media is unusable (not retriable).
        SourceUnavailableError: the network failed (retriable).
    """
    src = check_uri(uri, config)
    run = _Run(uri, stream_id, sizes, config, Sampler(config.sampling, state), wall_start, stop)
    if src.kind == "hls":
        yield from _decode_hls(run, src)
    elif src.is_live:
        yield from _decode_live(run, src)
    else:
        yield from _decode_file(run, src.uri, src)
