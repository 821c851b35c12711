"""Decoding real clips generated with PyAV at test time: keyframes, sampling modes, HLS, HTTP, bad inputs."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from livemod.decoders import pyav
from livemod.decoders.config import DecoderConfig, ReconnectConfig, SamplerConfig
from livemod.core.errors import (
    CorruptMediaError,
    EmptyMediaError,
    ForbiddenSourceError,
    MediaLimitError,
    SourceNotFoundError,
    SourceUnavailableError,
    TruncatedMediaError,
    UnsupportedMediaError,
)
from livemod.decoders.pyav import decode, probe_nvdec
from livemod.decoders.sampling import SamplerState
from livemod.demo.synth import pattern_frames, write_hls, write_image, write_video
from livemod.core.types import Resize

SIZES = [Resize(64, 64), Resize(96, 54, keep_aspect=True)]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


def cfg_for(root: Path, **kw) -> DecoderConfig:
    return DecoderConfig(file_roots=(root,), **kw)


def run(uri, cfg, **kw):
    return list(decode(str(uri), stream_id="s1", sizes=SIZES, config=cfg, **kw))


@pytest.mark.parametrize(
    "codec, ext",
    [("libx264", ".mp4"), ("libx265", ".mkv"), ("libvpx-vp9", ".webm"), ("mpeg4", ".avi"), ("libx264", ".ts"), ("libx264", ".flv")],
)
def test_keyframes_match_gop(media, codec, ext):
    path = write_video(media / f"gop_{codec}{ext}", pattern_frames(48, 160, 120), fps=12, codec=codec, gop=12)
    frames = run(path, cfg_for(media))
    assert [f.pts for f in frames] == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=0.01)
    f = frames[1]
    assert f.keyframe and f.reason == "keyframe" and (f.width, f.height) == (160, 120) and f.index == 1
    assert f.images[Resize(64, 64)].shape == (64, 64, 3)
    assert f.images[Resize(96, 54, keep_aspect=True)].shape == (54, 72, 3)  # fitted, aspect kept
    assert f.full_rgb().shape == (120, 160, 3) and f.full_rgb().dtype == np.uint8


def test_interval_mode_samples_by_pts(media):
    path = write_video(media / "interval.mp4", pattern_frames(40, 160, 120), fps=10, gop=40)
    cfg = cfg_for(media, sampling=SamplerConfig(mode="interval", interval_s=0.5, scene_threshold=0, dup_max_distance=-1))
    assert [f.pts for f in run(path, cfg)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5], abs=0.01)


def test_intra_refresh_falls_back_to_interval(media):
    path = write_video(media / "ir.mp4", pattern_frames(60, 160, 120), fps=10, gop=1000,
                       options={"preset": "ultrafast", "x264-params": "keyint=1000:min-keyint=1000:scenecut=0:intra-refresh=1"})
    state = SamplerState()
    cfg = cfg_for(media, sampling=SamplerConfig(max_gap_s=2.0, scene_threshold=0, dup_max_distance=-1))
    frames = run(path, cfg, state=state)
    assert frames[0].reason == "keyframe"
    assert [f.reason for f in frames[1:]] == ["interval"] * (len(frames) - 1)
    assert [f.pts for f in frames] == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], abs=0.01)  # the gap is filled
    assert [f.gap_s for f in frames] == [None] + [pytest.approx(1.0, abs=0.01)] * 5
    assert state.mode == "interval" and state.fallbacks == 1 and state.max_gap_s == pytest.approx(1.0, abs=0.01)
    # the frames decoded again from the keyframe are the real pictures, not a decoder's guess over skipped references
    with av.open(str(path)) as c:
        full = {round(float(f.pts * f.time_base), 2): f.to_ndarray(format="rgb24") for f in c.decode(video=0)}
    for f in frames:
        assert np.abs(f.full_rgb().astype(int) - full[round(f.pts, 2)]).mean() < 1.0


def test_static_scene_marked_duplicate_with_heartbeat(media):
    still = np.full((120, 160, 3), 90, np.uint8)
    still[30:90, 40:120] = 200
    path = write_video(media / "still.mp4", (still for _ in range(90)), fps=10, gop=10)
    cfg = cfg_for(media, sampling=SamplerConfig(heartbeat_s=4.0))
    reasons = [f.reason for f in run(path, cfg)]
    assert reasons == ["keyframe", "duplicate", "duplicate", "duplicate", "heartbeat", "duplicate", "duplicate", "duplicate", "heartbeat"]


def test_scene_change_between_intervals(media):
    a = np.full((120, 160, 3), 20, np.uint8)
    b = np.full((120, 160, 3), 230, np.uint8)
    path = write_video(media / "cut.mp4", [a] * 13 + [b] * 7, fps=10, gop=100)
    cfg = cfg_for(media, sampling=SamplerConfig(mode="interval", interval_s=10.0))
    frames = run(path, cfg)
    assert [(f.reason, f.pts) for f in frames] == [("interval", 0.0), ("scene", pytest.approx(1.3, abs=0.01))]


def test_sampler_state_carries_across_segments(media):
    still = np.full((120, 160, 3), 128, np.uint8)
    seg = write_video(media / "seg_still.ts", [still] * 20, fps=10, gop=10)
    cfg = cfg_for(media, sampling=SamplerConfig(heartbeat_s=30))
    state = SamplerState()
    first = run(seg, cfg, state=state, wall_start=1000.0)
    second = run(seg, cfg, state=state, wall_start=1002.0)
    assert [f.reason for f in first] == ["keyframe", "duplicate"]
    assert [f.reason for f in second] == ["duplicate", "duplicate"]  # same picture, next segment
    assert second[0].wall_clock == pytest.approx(1002.0)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_still_images(media, ext):
    rgb = next(iter(pattern_frames(1, 200, 100)))
    path = write_image(media / f"snap{ext}", rgb)
    (frame,) = run(path, cfg_for(media))
    assert frame.reason == "image" and (frame.width, frame.height) == (200, 100)
    if ext == ".png":
        assert np.array_equal(frame.full_rgb(), rgb)


def test_hls_vod(media):
    playlist = write_hls(media / "vod", pattern_frames(60, 160, 120), fps=10, segment_seconds=2.0)
    frames = run(playlist, cfg_for(media))
    assert [f.pts for f in frames] == pytest.approx([0.0, 2.0, 4.0], abs=0.01)


def test_hls_live_follows_new_segments(media):
    src = write_hls(media / "live_src", pattern_frames(40, 160, 120), fps=10, segment_seconds=1.0)
    live = media / "live"
    live.mkdir()
    segs = sorted(p.name for p in src.parent.glob("*.ts"))
    for name in segs:
        shutil.copy(src.parent / name, live / name)

    def playlist(n: int, ended: bool) -> None:
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:0"]
        for name in segs[:n]:
            lines += ["#EXTINF:1.0,", name]
        if ended:
            lines.append("#EXT-X-ENDLIST")
        tmp = live / ".index.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(live / "index.m3u8")

    playlist(2, False)

    def grow() -> None:
        time.sleep(0.8)
        playlist(3, False)
        time.sleep(0.8)
        playlist(4, True)

    t = threading.Thread(target=grow)
    t.start()
    frames = run(live / "index.m3u8", cfg_for(media))
    t.join()
    assert [f.pts for f in frames] == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=0.01)


def test_hls_segment_outside_roots_is_refused(media, tmp_path):
    pl = media / "evil.m3u8"
    pl.write_text("#EXTM3U\n#EXTINF:1.0,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n")
    with pytest.raises(ForbiddenSourceError):
        run(pl, cfg_for(media))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the media folder, plus redirects and error statuses."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path.startswith("/redir/"):
            return self._redirect("/" + self.path[len("/redir/"):])
        if self.path == "/moved/index.m3u8":  # only the playlist moved: its segments resolve against the new place
            return self._redirect("/webhls/index.m3u8")
        if self.path == "/tofile.ts":  # a file inside the roots, but a server may not point at local files
            return self._redirect((Path(self.directory) / "web.ts").as_uri())
        if self.path == "/loop.ts":
            return self._redirect("/loop.ts")
        if self.path == "/meta.ts":
            return self._redirect("http://169.254.169.254/latest/meta-data")
        if self.path == "/forbidden.ts":
            return self.send_error(403)
        if self.path == "/broken.ts":
            return self.send_error(500)
        return super().do_GET()


@pytest.fixture(scope="module")
def http_root(media):
    write_video(media / "web.ts", pattern_frames(24, 160, 120), fps=12, gop=12)
    write_hls(media / "webhls", pattern_frames(40, 160, 120), fps=10, segment_seconds=2.0)
    (media / "playlist_in_disguise.ts").write_text("#EXTM3U\n#EXTINF:1.0,\nhttp://169.254.169.254/x.ts\n#EXT-X-ENDLIST\n")
    (media / "evil.m3u8").write_text("#EXTM3U\n#EXTINF:1.0,\nhttp://169.254.169.254/x.ts\n#EXT-X-ENDLIST\n")
    (media / "local.m3u8").write_text(f"#EXTM3U\n#EXTINF:1.0,\n{(media / 'web.ts').as_uri()}\n#EXT-X-ENDLIST\n")
    handler = functools.partial(_Handler, directory=str(media))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_segment(http_root, media):
    frames = run(f"{http_root}/web.ts", cfg_for(media))
    assert [f.pts for f in frames] == pytest.approx([0.0, 1.0], abs=0.01)


def test_http_404_is_not_found(http_root, media):
    with pytest.raises(SourceNotFoundError) as info:
        run(f"{http_root}/missing.ts", cfg_for(media))
    assert not info.value.retriable


def test_http_redirect_is_followed_after_checking_it(http_root, media):
    frames = run(f"{http_root}/redir/web.ts", cfg_for(media))
    assert [f.pts for f in frames] == pytest.approx([0.0, 1.0], abs=0.01)


@pytest.mark.parametrize(
    "path, kw, error, retriable, words",
    [
        ("/meta.ts", {}, ForbiddenSourceError, False, "169.254.169.254"),  # redirect to a metadata address
        ("/loop.ts", {}, ForbiddenSourceError, False, "redirects"),
        ("/redir/web.ts", {"max_redirects": 0}, ForbiddenSourceError, False, "redirects"),
        ("/forbidden.ts", {}, ForbiddenSourceError, False, "403"),
        ("/broken.ts", {}, SourceUnavailableError, True, "5XX"),
        ("/playlist_in_disguise.ts", {}, CorruptMediaError, False, "playlist_in_disguise"),  # FFmpeg's hls demuxer is off
        ("/evil.m3u8", {}, ForbiddenSourceError, False, "169.254.169.254"),  # every segment is checked
        ("/local.m3u8", {}, ForbiddenSourceError, False, "local file"),
        ("/tofile.ts", {}, ForbiddenSourceError, False, "local file"),
    ],
)
def test_http_refusals(http_root, media, path, kw, error, retriable, words):
    with pytest.raises(error) as info:
        run(f"{http_root}{path}", cfg_for(media, **kw))
    assert info.value.retriable == retriable and words in str(info.value)


@pytest.mark.parametrize("path", ["/webhls/index.m3u8", "/moved/index.m3u8"])
def test_hls_over_http(http_root, media, path):
    frames = run(f"{http_root}{path}", cfg_for(media))
    assert [f.pts for f in frames] == pytest.approx([0.0, 2.0], abs=0.01)


def test_http_errors_hide_query_tokens(http_root, media):
    with pytest.raises(SourceNotFoundError) as info:
        run(f"{http_root}/missing.ts?token=s3cret", cfg_for(media))
    assert "s3cret" not in str(info.value) and "missing.ts" in str(info.value)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_url_is_retriable(media):
    with pytest.raises(SourceUnavailableError) as info:
        run(f"http://127.0.0.1:{_closed_port()}/x.ts", cfg_for(media))
    assert info.value.retriable and "127.0.0.1" in str(info.value)


def test_silent_server_times_out(media):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # accepts the connection, never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailableError):
            run(f"http://127.0.0.1:{srv.getsockname()[1]}/x.ts", cfg_for(media, connect_timeout_s=1.0, read_timeout_s=1.0))
        assert time.monotonic() - t0 < 10
    finally:
        srv.close()


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, i * 1024, Fraction(1, 16000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(
    "make, error, reason",
    [
        (lambda d: (d / "zero.mp4").write_bytes(b"") and None or d / "zero.mp4", EmptyMediaError, "empty_media"),
        (lambda d: _truncate(write_video(d / "full.mp4", pattern_frames(24, 160, 120), fps=12, gop=12), d / "trunc.mp4"),
         TruncatedMediaError, "truncated_media"),
        (lambda d: (d / "text.mp4").write_text("this is not a video\n" * 40) and None or d / "text.mp4", CorruptMediaError, "corrupt_media"),
        (lambda d: _audio_only(d / "audio.mp4"), UnsupportedMediaError, "unsupported_media"),
        (lambda d: d / "missing.mp4", SourceNotFoundError, "source_not_found"),
    ],
)
def test_bad_inputs_give_typed_errors(media, make, error, reason):
    path = make(media)
    with pytest.raises(error) as info:
        run(path, cfg_for(media))
    assert info.value.reason == reason and not info.value.retriable
    assert str(path.name) in str(info.value)


def _truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_oversized_frame(media):
    path = write_video(media / "big.mp4", pattern_frames(2, 320, 240), fps=2, gop=2)
    with pytest.raises(MediaLimitError, match="pixels"):
        run(path, cfg_for(media, max_pixels=320 * 200))


def test_segment_longer_than_limit(media):
    path = write_video(media / "long.mp4", pattern_frames(40, 160, 120), fps=10, gop=10)
    with pytest.raises(MediaLimitError, match="longer"):
        run(path, cfg_for(media, max_segment_seconds=2.0))


def test_truncated_ts_keeps_decodable_frames(media):
    full = write_video(media / "cut.ts", pattern_frames(36, 160, 120), fps=12, gop=12)
    part = media / "cut_part.ts"
    data = full.read_bytes()
    part.write_bytes(data[: len(data) * 2 // 3])
    frames = run(part, cfg_for(media))
    assert 1 <= len(frames) <= 3


def test_rtmp_unreachable_reconnects_with_backoff_then_fails(media):
    cfg = cfg_for(media, reconnect=ReconnectConfig(initial_s=0.05, max_s=0.1, max_attempts=3))
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailableError) as info:
        run(f"rtmp://127.0.0.1:{_closed_port()}/live/cam", cfg)
    assert time.monotonic() - t0 >= 0.05 + 0.1 + 0.1  # three waits: 0.05, then doubled and capped at 0.1
    assert info.value.retriable and "3 reconnect attempts" in str(info.value)


def test_stop_ends_a_live_source_while_it_waits_to_reconnect(media):
    cfg = cfg_for(media, reconnect=ReconnectConfig(initial_s=30, max_attempts=0))  # forever
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    t0 = time.monotonic()
    assert run(f"rtmp://127.0.0.1:{_closed_port()}/live/cam", cfg, stop=stop) == []
    assert time.monotonic() - t0 < 5
    timer.join()


def test_limits_apply_per_hls_segment(media):
    playlist = write_hls(media / "limits", pattern_frames(60, 160, 120), fps=10, segment_seconds=2.0)
    cfg = cfg_for(media, max_frames_per_segment=25, max_segment_seconds=2.5,
                  sampling=SamplerConfig(mode="interval", interval_s=1.0, scene_threshold=0, dup_max_distance=-1))
    assert [f.pts for f in run(playlist, cfg)] == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], abs=0.01)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"max_frames_per_segment": 10, "sampling": SamplerConfig(mode="interval")}, "frames"),
        ({"decode_timeout_s": 1e-9}, "longer than"),
    ],
)
def test_file_limits(media, kw, words):
    path = write_video(media / "limited.mp4", pattern_frames(24, 160, 120), fps=12, gop=12)
    with pytest.raises(MediaLimitError, match=words):
        run(path, cfg_for(media, **kw))


def test_container_outside_the_allowed_demuxers(media):
    path = write_video(media / "notallowed.mp4", pattern_frames(12, 160, 120), fps=12, gop=12)
    with pytest.raises(UnsupportedMediaError, match="demuxers"):
        run(path, cfg_for(media, demuxers=("mpegts",)))


def test_oversized_image(media):
    path = write_image(media / "big.png", np.zeros((100, 200, 3), np.uint8))
    with pytest.raises(MediaLimitError, match="pixels"):
        run(path, cfg_for(media, max_pixels=10_000))


def test_directory_is_not_media(media):
    (media / "adir.mp4").mkdir(exist_ok=True)
    with pytest.raises(SourceNotFoundError):
        run(media / "adir.mp4", cfg_for(media))


@pytest.mark.parametrize("setting", ["auto", "cuda", "none"])
def test_hwaccel_choice_says_why(media, setting, caplog, monkeypatch):
    monkeypatch.setattr(pyav, "_warned", set())  # the "cuda requested" warning is logged once per process
    cfg = cfg_for(media, hwaccel=setting)
    accel, why = pyav.choose_hwaccel(cfg)
    available, _ = probe_nvdec()
    if setting == "none":
        assert accel is None and "none" in why
    elif not available:  # this machine: no GPU, so "auto" and "cuda" pick the CPU and say why
        assert accel is None and "CUDA" in why
        pyav.choose_hwaccel(cfg)
        warnings = [r for r in caplog.records if "NVDEC is unavailable" in r.getMessage()]
        assert len(warnings) == (1 if setting == "cuda" else 0)
    else:
        assert accel is not None
    path = write_video(media / "hw.mp4", pattern_frames(24, 160, 120), fps=12, gop=12)
    assert [f.pts for f in run(path, cfg)] == pytest.approx([0.0, 1.0], abs=0.01)


def test_nvdec_probe_reports_a_reason():
    ok, why = probe_nvdec()
    assert isinstance(ok, bool) and why
    # on the machines without a GPU the CPU path is taken and says why
    if not ok:
        assert "CUDA" in why
