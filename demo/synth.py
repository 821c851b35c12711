"""Write real media with PyAV: test clips with known keyframes, demo broadcasts, HLS, images."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODEC_OPTIONS = {
    "libx264": lambda g: {"preset": "ultrafast", "tune": "zerolatency", "x264-params": f"keyint={g}:min-keyint={g}:scenecut=0"},
    "libx265": lambda g: {"preset": "ultrafast", "x265-params": f"keyint={g}:min-keyint={g}:scenecut=0:log-level=error"},
    "libvpx-vp9": lambda g: {"deadline": "realtime", "cpu-used": "8", "g": str(g), "keyint_min": str(g)},
    "libsvtav1": lambda g: {"preset": "12", "svtav1-params": f"keyint={g}:scd=0"},
    "mpeg4": lambda g: {"g": str(g)},
    "mjpeg": lambda g: {},
}
CODEC_ALIASES = {"h264": "libx264", "hevc": "libx265", "h265": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1"}
CONTAINER_BY_EXT = {".mp4": "mp4", ".ts": "mpegts", ".mkv": "matroska", ".webm": "webm", ".flv": "flv", ".avi": "avi"}


def _encode(out: av.container.OutputContainer, frames: Iterable[np.ndarray], *, codec: str, fps: int, gop: int,
            options: dict[str, str], pix_fmt: str, keyframes: Collection[int] = ()) -> None:
    """Add a video stream sized from the first frame (even dimensions) and encode every frame;
    frames whose index is in ``keyframes`` are forced to be keyframes."""
    stream = None
    for i, rgb in enumerate(frames):
        if stream is None:
            h, w = rgb.shape[:2]
            stream = out.add_stream(codec, rate=fps, options=options)
            stream.width, stream.height = w - w % 2, h - h % 2
            stream.pix_fmt = pix_fmt
            stream.codec_context.gop_size = gop
            stream.codec_context.time_base = Fraction(1, fps)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: stream.height, : stream.width]), format="rgb24")
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        if i in keyframes:
            frame.pict_type = av.video.frame.PictureType.I
        out.mux(stream.encode(frame))
    if stream is None:
        raise ValueError("no frames to write")
    out.mux(stream.encode(None))


def write_video(
    path: Path | str,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 30,
    codec: str = "libx264",
    gop: int = 60,
    container: str | None = None,
    options: dict[str, str] | None = None,
    pix_fmt: str | None = None,
    keyframes: Collection[int] = (),
) -> Path:
    """Encode RGB frames into a file with a fixed GOP, so keyframes sit at 0, gop, 2*gop, ...

    Args:
        path: output file (written atomically: a temp name, then renamed).
        frames: uint8 (H, W, 3) RGB frames; all the size of the first.
        fps: frame rate.
        codec: libx264, libx265, libvpx-vp9, mpeg4, mjpeg (or h264, hevc, vp9).
        gop: frames between keyframes.
        container: FFmpeg muxer name; from the extension when None.
        options: encoder options replacing the defaults for the codec.
        pix_fmt: pixel format (yuv420p by default, yuvj420p for mjpeg).
        keyframes: frame indices forced to be keyframes (IDR with libx264's ``forced-idr``).
    """
    path = Path(path)
    codec = CODEC_ALIASES.get(codec, codec)
    fmt = container or CONTAINER_BY_EXT.get(path.suffix.lower())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    opts = options if options is not None else CODEC_OPTIONS.get(codec, lambda g: {})(gop)
    with av.open(str(tmp), "w", format=fmt) as out:
        _encode(out, frames, codec=codec, fps=fps, gop=gop, options=opts,
                pix_fmt=pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p"), keyframes=frozenset(keyframes))
    tmp.replace(path)
    return path


def write_hls(
    directory: Path | str,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 30,
    segment_seconds: float = 2.0,
    codec: str = "libx264",
    live: bool = False,
) -> Path:
    """Encode frames as HLS (MPEG-TS segments + index.m3u8); one keyframe per segment start.

    Args:
        live: write an event playlist without #EXT-X-ENDLIST (what a live source looks like
            while it is running).

    Returns:
        The playlist path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    codec = CODEC_ALIASES.get(codec, codec)
    gop = max(1, round(fps * segment_seconds))
    playlist = directory / "index.m3u8"
    opts = {
        "hls_time": str(segment_seconds),
        "hls_list_size": "0",
        "hls_segment_filename": str(directory / "seg%05d.ts"),
        "hls_playlist_type": "event" if live else "vod",
    }
    if live:
        opts["hls_flags"] = "omit_endlist"
    with av.open(str(playlist), "w", format="hls", options=opts) as out:
        _encode(out, frames, codec=codec, fps=fps, gop=gop, options=CODEC_OPTIONS[codec](gop), pix_fmt="yuv420p")
    return playlist


def write_image(path: Path | str, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as JPEG or PNG (by extension) with PyAV's encoders."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"write_image writes .png, .jpg or .jpeg, not {path.suffix!r}")
    codec = "png" if path.suffix.lower() == ".png" else "mjpeg"
    fmt = "rgb24" if codec == "png" else "yuvj420p"
    h, w = rgb.shape[:2]
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = w - w % 2 if codec == "mjpeg" else w, h - h % 2 if codec == "mjpeg" else h, fmt
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: stream.height, : stream.width]), format="rgb24")
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def pattern_frames(n: int, width: int = 320, height: int = 240, *, moving: bool = True, seed: int = 0) -> Iterable[np.ndarray]:
    """Frames of a moving gradient with a frame counter bar: cheap, deterministic, not duplicates."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), np.uint8))[:height, :width]
    for i in range(n):
        shift = (i * 4) % width if moving else 0
        f = np.roll(big, shift, axis=1).copy()
        f[: height // 10, : int(width * (i % 30) / 30) + 1] = 255
        yield f


# Clips that defeat keyframe-only sampling in different ways (decoders' coverage guarantee):
# name -> (file name, fps, write_video keyword arguments). Every one has a real keyframe at 0.
_IR = "scenecut=0:intra-refresh=1"
COVERAGE_CASES: dict[str, tuple[str, int, dict]] = {
    # x264 periodic intra refresh: one IDR, then recovery points that demuxers flag as keyframes
    "x264-intra-refresh-ts": ("ir.ts", 25, {"codec": "libx264", "gop": 50, "options": {
        "preset": "ultrafast", "x264-params": f"keyint=50:min-keyint=50:{_IR}"}}),
    "x264-intra-refresh-mp4": ("ir.mp4", 25, {"codec": "libx264", "gop": 50, "options": {
        "preset": "ultrafast", "x264-params": f"keyint=50:min-keyint=50:{_IR}"}}),
    "x264-keyint250-25fps": ("k250.mp4", 25, {"codec": "libx264", "gop": 250}),  # a keyframe every 10 s
    "hevc-open-gop": ("hevc_open.mkv", 25, {"codec": "libx265", "gop": 125, "options": {  # CRA every 5 s, B-frames
        "preset": "ultrafast", "x265-params": "keyint=125:min-keyint=125:scenecut=0:open-gop=1:bframes=4:log-level=error"}}),
    "vp9-5s": ("vp9.webm", 25, {"codec": "libvpx-vp9", "gop": 125}),  # VP9's decoder ignores skip_frame
    "av1-5s": ("av1.mkv", 25, {"codec": "libsvtav1", "gop": 125}),  # libdav1d reads skip_frame only when it opens
    # keyframes every second, none from 5 s to 12 s, then every second again
    "x264-keyframes-stop-and-return": ("stop.mp4", 25, {"codec": "libx264", "gop": 1000, "keyframes": (
        *range(0, 125, 25), *range(300, 1000, 25)), "options": {
        "preset": "ultrafast", "forced-idr": "1", "x264-params": "keyint=1000:min-keyint=1000:scenecut=0"}}),
}


def write_coverage_clip(directory: Path | str, case: str, *, seconds: float = 16.0, width: int = 320,
                        height: int = 180) -> Path:
    """Encode one of ``COVERAGE_CASES`` (a small moving pattern) into ``directory``."""
    name, fps, kw = COVERAGE_CASES[case]
    n = round(seconds * fps)
    kw = dict(kw)
    if "keyframes" in kw:
        kw["keyframes"] = [k for k in kw["keyframes"] if k < n]
    return write_video(Path(directory) / name, pattern_frames(n, width, height), fps=fps, **kw)


def last_pts(path: Path | str) -> float:
    """Stream time (s, from the stream's start) of a clip's last video packet: where its coverage ends."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        start = vs.start_time or 0
        return max(float((p.pts - start) * vs.time_base) for p in c.demux(vs) if p.pts is not None)
