"""Still images through decoders.pyav.decode: the OpenCV path, its checks, and the FFmpeg fallback.

Also the keyframe cost fixes of the same change: an x264 clip with B-frames stays in keyframes mode.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from livemod.core.errors import CorruptMediaError, EmptyMediaError, MediaLimitError, TruncatedMediaError, UnsupportedMediaError
from livemod.core.types import Resize
from livemod.decoders import pyav
from livemod.decoders.config import DecoderConfig
from livemod.decoders.sampling import SamplerConfig, SamplerState
from livemod.demo.synth import pattern_frames, write_image, write_video

SIZES = [Resize(224, 224), Resize(256, 144, keep_aspect=True), Resize(32, 32)]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import skimage.data

    return cv2.resize(skimage.data.astronaut(), (1280, 720), interpolation=cv2.INTER_AREA)


def run(path: Path, cfg: DecoderConfig, sizes=SIZES) -> list:
    return list(pyav.decode(str(path), stream_id="s", sizes=sizes, config=cfg, wall_start=100.0))


def both(path: Path, cfg: DecoderConfig, monkeypatch, sizes=SIZES) -> tuple:
    """The frame from the OpenCV path and from the FFmpeg path."""
    (fast,) = run(path, cfg, sizes)
    with monkeypatch.context() as m:
        m.setattr(pyav, "_still", lambda *a: None)
        (slow,) = run(path, cfg, sizes)
    return fast, slow


@pytest.mark.parametrize(
    "ext, params, tol",
    [
        (".jpg", (cv2.IMWRITE_JPEG_QUALITY, 90), 5.0),  # libjpeg (reduced 1/8 for 32x32) vs FFmpeg decoder + scaler
        (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), 5.0),
        (".png", (), 1.5),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), 1.5),
        (".bmp", (), 1.5),
    ],
)
def test_opencv_path_matches_ffmpeg_path(media, photo, monkeypatch, ext, params, tol):
    path = media / f"photo{ext}"
    cv2.imwrite(str(path), photo[..., ::-1], list(params))
    fast, slow = both(path, DecoderConfig(file_roots=(media,)), monkeypatch)
    assert (fast.width, fast.height, fast.reason, fast.keyframe) == (slow.width, slow.height, "image", True)
    assert (fast.pts, fast.wall_clock, fast.gap_s, fast.index) == (0.0, 100.0, None, 0)
    for size in SIZES:
        a, b = fast.images[size], slow.images[size]
        assert a.shape == b.shape and a.dtype == np.uint8 and a.flags.c_contiguous
        assert np.abs(a.astype(int) - b).mean() < tol, size
    assert fast.full_rgb().shape == (720, 1280, 3)
    assert np.abs(fast.full_rgb().astype(int) - slow.full_rgb()).mean() < tol
    assert fast.full_rgb() is fast.full_rgb()  # decoded once


def test_reduced_jpeg_full_rgb_is_full_size(media, photo):
    path = media / "reduce.jpg"
    cv2.imwrite(str(path), photo[..., ::-1])
    (frame,) = run(path, DecoderConfig(file_roots=(media,)), [Resize(32, 32)])  # decoded at 1/8
    full = frame.full_rgb()
    assert full.shape == (720, 1280, 3)
    assert np.abs(full.astype(int) - photo).mean() < 3.0


@pytest.mark.parametrize("name, write", [
    ("gray.png", lambda p, rgb: cv2.imwrite(str(p), rgb[..., 0])),
    ("gray.jpg", lambda p, rgb: cv2.imwrite(str(p), rgb[..., 0])),
    ("alpha.png", lambda p, rgb: cv2.imwrite(str(p), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)]))),
    ("deep.png", lambda p, rgb: cv2.imwrite(str(p), rgb[..., ::-1].astype(np.uint16) * 257)),
    ("png_named.jpg", lambda p, rgb: cv2.imwrite(str(p.with_suffix(".png")), rgb[..., ::-1]) and p.write_bytes(p.with_suffix(".png").read_bytes())),
])
def test_variants_give_rgb(media, monkeypatch, name, write):
    rgb = next(iter(pattern_frames(1, 200, 100)))
    path = media / name
    write(path, rgb)
    fast, slow = both(path, DecoderConfig(file_roots=(media,)), monkeypatch, [Resize(64, 64)])
    assert fast.images[Resize(64, 64)].shape == (64, 64, 3) and fast.full_rgb().shape == (100, 200, 3)
    assert np.abs(fast.full_rgb().astype(int) - slow.full_rgb()).mean() < 2.0


def test_max_pixels_from_the_header_before_decoding(media, photo):
    data = cv2.imencode(".jpg", photo)[1].tobytes()
    path = media / "big_cut.jpg"
    path.write_bytes(data[:2000])  # header intact, most of the picture missing: never decoded
    with pytest.raises(MediaLimitError, match="1280x720 is over the limit"):
        run(path, DecoderConfig(file_roots=(media,), max_pixels=1280 * 720 - 1))


@pytest.mark.parametrize(
    "name, data, error",
    [
        ("empty.jpg", lambda b: b"", EmptyMediaError),
        ("garbage.jpg", lambda b: b"not an image, only text " * 20, CorruptMediaError),
        ("cut.png", lambda b: b[:60], TruncatedMediaError),
        ("cut_half.png", lambda b: b[: len(b) // 2], TruncatedMediaError),
    ],
)
def test_broken_images_raise_typed_errors(media, name, data, error):
    png = cv2.imencode(".png", np.full((120, 160, 3), 80, np.uint8))[1].tobytes()
    path = media / name
    path.write_bytes(data(png))
    with pytest.raises(error):
        run(path, DecoderConfig(file_roots=(media,)))


def test_cut_jpeg_falls_back_to_ffmpeg_partial_picture(media, photo):
    data = cv2.imencode(".jpg", photo)[1].tobytes()
    path = media / "half.jpg"
    path.write_bytes(data[: len(data) // 2])  # OpenCV refuses it; FFmpeg decodes the top half, as before
    (frame,) = run(path, DecoderConfig(file_roots=(media,)))
    assert (frame.width, frame.height) == (1280, 720)


def test_demuxer_allow_list_still_applies(media):
    path = write_image(media / "snap.jpg", next(iter(pattern_frames(1, 200, 100))))
    with pytest.raises(UnsupportedMediaError, match="demuxers"):
        run(path, DecoderConfig(file_roots=(media,), demuxers=("mpegts",)))


def test_still_image_counts_in_sampler_state(media):
    path = write_image(media / "count.png", next(iter(pattern_frames(1, 64, 64))))
    state = SamplerState()
    cfg = DecoderConfig(file_roots=(media,))
    for _ in range(3):
        list(pyav.decode(str(path), stream_id="s", sizes=[Resize(32, 32)], config=cfg, state=state))
    assert state.sampled == 3


# ---- keyframes of a stream with B-frames (x264 presets other than ultrafast) ------------------


def test_bframe_keyframes_come_out_at_once(media):
    frames = list(pattern_frames(240, 320, 180))  # 8 s at 30 fps, a keyframe every 2 s
    path = write_video(media / "bframes.mp4", frames, fps=30,
                       options={"preset": "veryfast", "x264-params": "keyint=60:min-keyint=60:scenecut=0:bframes=3"})
    state = SamplerState()
    cfg = DecoderConfig(file_roots=(media,), hwaccel="none", sampling=SamplerConfig(max_gap_s=3.0, scene_threshold=0))
    out = list(pyav.decode(str(path), stream_id="s", sizes=[Resize(32, 32)], config=cfg, state=state))
    assert [(f.reason, f.pts) for f in out] == [("keyframe", pytest.approx(t, abs=0.01)) for t in (0.0, 2.0, 4.0, 6.0)]
    assert state.fallbacks == 0 and state.decoded == 4  # no replay: only the keyframes were decoded
