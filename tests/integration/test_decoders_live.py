"""Live sources that drop and come back, against real servers started here (FFmpeg as an RTMP server, HTTP for HLS)."""

from __future__ import annotations

import functools
import http.server
import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from livemod.core.types import Resize
from livemod.decoders.config import DecoderConfig, ReconnectConfig, SamplerConfig
from livemod.decoders.pyav import decode
from livemod.decoders.sampling import SamplerState
from livemod.demo.synth import pattern_frames, write_hls, write_video

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg binary (Debian package ffmpeg) is not installed: "
                                  "no RTMP server to test against")
SIZES = [Resize(32, 32)]
LOGGER = "livemod.decoders.pyav"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtmpServer:
    """Debian's ffmpeg serving a clip as an RTMP server (``-listen 1``: one client, paced with ``-re``)."""

    def __init__(self, clip: Path) -> None:
        self.clip, self.url = clip, f"rtmp://127.0.0.1:{_free_port()}/live/s"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [FFMPEG or "ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(self.clip), "-c", "copy", "-f", "flv",
             "-listen", "1", self.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("live") / "live.flv", pattern_frames(150, 320, 180), fps=25, gop=25)


@pytest.fixture
def server(clip):
    srv = RtmpServer(clip)
    yield srv
    srv.kill()


def _cfg(**kw) -> DecoderConfig:
    kw = {"live_idle_timeout_s": 2.0, **kw}
    return DecoderConfig(hwaccel="none", reconnect=ReconnectConfig(initial_s=0.1, max_s=0.4),
                         sampling=SamplerConfig(scene_threshold=0, dup_max_distance=-1), **kw)


@needs_ffmpeg
def test_rtmp_publisher_drops_and_comes_back(server, caplog):
    server.start()
    state = SamplerState()
    stop = threading.Event()
    watchdog = threading.Timer(60, stop.set)  # the test ends by itself; this only bounds a broken run
    watchdog.start()
    frames, killed_after, restarter = [], None, None
    t0 = time.monotonic()
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            for f in decode(server.url, stream_id="cam", sizes=SIZES, config=_cfg(), state=state, stop=stop):
                frames.append(f)
                if killed_after is None and f.pts >= 1.0:  # the publisher drops mid-broadcast ...
                    server.kill()
                    killed_after = len(frames)
                    restarter = threading.Timer(1.0, server.start)  # ... and is back a second later
                    restarter.start()
    finally:
        watchdog.cancel()
        if restarter is not None:
            restarter.join()
    elapsed = time.monotonic() - t0
    assert not stop.is_set() and elapsed < 45, "the broadcast should end by itself (no media for live_idle_timeout_s)"
    assert killed_after is not None
    # frames already read before the kill still come out; the first one from the new connection
    # is the first whose gap holds the outage (over a second)
    back = next((i for i in range(killed_after, len(frames)) if (frames[i].gap_s or 0) > 1.0), None)
    assert back is not None, f"no gap after the drop: {[(f.pts, f.gap_s) for f in frames]}"
    before, after = frames[:back], frames[back:]
    assert len(after) >= 4, f"frames after the drop: {[f.pts for f in after]}"
    assert all((f.gap_s or 0) <= 1.0 + 1e-6 for f in frames if f is not after[0])  # the drop is the only gap
    assert after[0].pts > before[-1].pts and [f.index for f in frames] == list(range(len(frames)))
    assert state.sampled == len(frames) and state.max_gap_s == pytest.approx(max(f.gap_s or 0 for f in frames))
    drops = [r for r in caplog.records if "live source dropped" in r.getMessage()]
    assert len(drops) == 2  # the drop, and the end of the second publisher (an end looks like a drop to RTMP)
    assert sum("broadcast has ended" in r.getMessage() for r in caplog.records) == 1


@needs_ffmpeg
def test_rtmp_duration_ends_the_broadcast(server):
    server.start()
    t0 = time.monotonic()
    frames = list(decode(server.url, stream_id="cam", sizes=SIZES, config=_cfg(), duration_s=2.0))
    assert frames and max(f.pts for f in frames) <= 2.0
    assert time.monotonic() - t0 < 20


class _FlakyPlaylist(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; answers 503 for the playlist while ``down`` is set."""

    down = threading.Event()

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.endswith(".m3u8") and self.down.is_set():
            return self.send_error(503)
        return super().do_GET()


def test_live_hls_playlist_that_fails_for_a_while_is_followed_again(tmp_path, caplog):
    src = write_hls(tmp_path / "src", pattern_frames(40, 160, 120), fps=10, segment_seconds=1.0)
    segs = sorted(p.name for p in src.parent.glob("*.ts"))

    def publish(n: int, ended: bool) -> None:
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:0"]
        for name in segs[:n]:
            lines += ["#EXTINF:1.0,", name]
        tmp = src.parent / ".live.tmp"
        tmp.write_text("\n".join(lines + (["#EXT-X-ENDLIST"] if ended else [])) + "\n")
        tmp.replace(src.parent / "live.m3u8")

    publish(2, False)
    handler = type("Flaky", (_FlakyPlaylist,), {"down": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(src.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def outage() -> None:
        time.sleep(0.5)
        handler.down.set()
        time.sleep(1.5)
        publish(4, True)
        handler.down.clear()

    t = threading.Thread(target=outage)
    t.start()
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            frames = list(decode(f"http://127.0.0.1:{server.server_address[1]}/live.m3u8", stream_id="h", sizes=SIZES,
                                 config=_cfg(live_idle_timeout_s=10.0)))
    finally:
        t.join()
        server.shutdown()
        server.server_close()
    assert [f.pts for f in frames] == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=0.01)
    assert sum("live playlist dropped" in r.getMessage() for r in caplog.records) == 1
    assert sum("live playlist is back" in r.getMessage() for r in caplog.records) == 1
