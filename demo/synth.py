"""Write real media with PyAV: test clips with known keyframes, demo broadcasts, HLS, images."""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODEC_OPTIONS = {
    "libx264": lambda g: {"preset": "ultrafast", "tune": "zerolatency", "x264-params": f"keyint={g}:min-keyint={g}:scenecut=0"},
    "libx265": lambda g: {"preset": "ultrafast", "x265-params": f"keyint={g}:min-keyint={g}:scenecut=0:log-level=error"},
    "libvpx-vp9": lambda g: {"deadline": "realtime", "cpu-used": "8", "g": str(g), "keyint_min": str(g)},
    "mpeg4": lambda g: {"g": str(g)},
    "mjpeg": lambda g: {},
}
CODEC_ALIASES = {"h264": "libx264", "hevc": "libx265", "h265": "libx265", "vp9": "libvpx-vp9"}
CONTAINER_BY_EXT = {".mp4": "mp4", ".ts": "mpegts", ".mkv": "matroska", ".webm": "webm", ".flv": "flv", ".avi": "avi"}


def _encode(out: av.container.OutputContainer, frames: Iterable[np.ndarray], *, codec: str, fps: int, gop: int,
            options: dict[str, str], pix_fmt: str) -> None:
    """Add a video stream sized from the first frame (even dimensions) and encode every frame."""
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
    """
    path = Path(path)
    codec = CODEC_ALIASES.get(codec, codec)
    fmt = container or CONTAINER_BY_EXT.get(path.suffix.lower())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    opts = options if options is not None else CODEC_OPTIONS.get(codec, lambda g: {})(gop)
    with av.open(str(tmp), "w", format=fmt) as out:
        _encode(out, frames, codec=codec, fps=fps, gop=gop, options=opts,
                pix_fmt=pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p"))
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
