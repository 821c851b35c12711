"""Integration faults an outside client hits, against the real broker and real worker processes.

Oversize values, keys that are not the stream id, ingest that publishes before the first worker
started, a dead letter that cannot be sent (the broker frozen with SIGSTOP), and a live
reference while a second worker joins the group.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from livemod.demo.broker import free_port
from livemod.demo.scene import Scene, broadcast_frames
from livemod.demo.service import http_get
from livemod.demo.synth import write_hls, write_video
from livemod.stream.records import FrameRef
from livemod.stream.topics import create_topics
from tests.service_helpers import Running, committed_and_end, consume, make_settings, publish, refs_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BOTH_BROKERS = pytest.mark.parametrize("broker", ["tansu", pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder with 'cat' segments (the small PiP cat from 2 s to 8 s) and a longer clip for live tests."""
    root = tmp_path_factory.mktemp("media")
    write_hls(root / "cat", broadcast_frames(Scene(width=640, height=360, fps=4, seconds=8, cat_from=2.0,
                                                   cat_to=8.0)), fps=4, segment_seconds=1.0)
    write_video(root / "live.flv", broadcast_frames(Scene(width=640, height=360, fps=10, seconds=60,
                                                          background="astronaut", cat_from=1e9, cat_to=1e9)),
                fps=10, gop=10)
    return root


def segs(media: Path) -> list[Path]:
    return sorted((media / "cat").glob("seg*.ts"))


def wait_for(pred, timeout: float, what: str, diagnose=lambda: ""):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{diagnose()}")


@BOTH_BROKERS
def test_oversize_values_and_wrong_keys_are_dead_lettered_and_the_partition_moves_on(broker, media, models_dir,
                                                                                     tmp_path):
    s = make_settings(broker, tmp_path, models_dir, media, kafka={"partitions": 1})
    asyncio.run(create_topics(s))
    seg = segs(media)[0]
    big = FrameRef(stream_id="big", uri=str(seg), metadata={"pad": "x" * 900_000}).to_bytes()
    wrong = FrameRef(stream_id="mine", uri=str(seg)).to_bytes()
    keyless = FrameRef(stream_id="nokey", uri=str(seg)).to_bytes()
    after = refs_for("big", segs(media)[:2], 1_770_000_000.0)
    publish(broker, s.kafka.frame_refs_topic, [(b"big", big), (b"other", wrong), (None, keyless), *after])
    w = Running(s, tmp_path / "w.log", "w")
    try:
        w.wait_ready()
        dead = consume(broker, s.kafka.dlq_topic, lambda r: len(r) >= 3)
        letters = [json.loads(r.value) for r in dead]
        assert [d["reason"] for d in letters] == ["too_large", "key_mismatch", "key_mismatch"]
        too_big = letters[0]
        assert too_big["value_size"] == len(big) and too_big["value_sha256"] == hashlib.sha256(big).hexdigest()
        assert too_big["value_truncated"] is True and len(dead[0].value) < s.kafka.max_message_bytes
        assert "stream_id 'mine'" in letters[1]["message"] and "no key" in letters[2]["message"]
        # the references behind them on the same partition are handled, and the partition commits to its end
        wait_for(lambda: w.metric("livemod_references_consumed_total") >= 5, 60, "all five references", w.diagnose)
        wait_for(lambda: committed_and_end(broker, s.kafka.app_id, s.kafka.frame_refs_topic)[0] == (5, 5), 30,
                 "the partition committed to its end (past the dead letters)",
                 lambda: str(committed_and_end(broker, s.kafka.app_id, s.kafka.frame_refs_topic)) + w.diagnose())
        assert w.metric("livemod_dlq_messages_total") == 3
    finally:
        w.stop()
    assert w.proc.returncode == 0


@BOTH_BROKERS
def test_ingest_before_the_first_worker_is_a_clear_start_up_error_then_recovers(broker, media, models_dir, tmp_path):
    # no topics made: the broker auto-creates frame-refs with its own default (4 on Tansu, 1 on a stock
    # Kafka) when ingest publishes
    s = make_settings(broker, tmp_path, models_dir, media, kafka={"partitions": 3})
    publish(broker, s.kafka.frame_refs_topic, refs_for("early", segs(media), 1_780_000_000.0))
    w = Running(s, tmp_path / "w1.log", "w1")
    try:
        body = wait_for(lambda: (lambda r: r[0] == 503 and json.loads(r[1]))(http_get(f"{w.base}/ready")), 60,
                        "a 503 /ready naming the problem")
        problem = " ".join(body["problems"])
        auto = body["topics"][s.kafka.frame_refs_topic]
        assert auto != 3 and f"topic {s.kafka.frame_refs_topic} has {auto} partitions" in problem
        assert "kafka.partitions is 3" in problem and f"LIVEMOD_KAFKA__PARTITIONS={auto}" in problem
        assert body["topics"][f"{s.kafka.app_id}-stream-state-changelog"] is None, "nothing created meanwhile"
        assert http_get(f"{w.base}/health")[0] == 200
        time.sleep(2)
        assert http_get(f"{w.base}/ready")[0] == 503, "still not ready"
        assert not consume(broker, s.kafka.alerts_topic, lambda r: False, timeout=1)
        assert f"has {auto} partitions" in w.log.read_text()
    finally:
        w.stop()
    assert w.proc.returncode == 0
    # the fix the message proposed: the same partition count as the topic
    fixed = s.model_copy(update={"kafka": s.kafka.model_copy(update={"partitions": auto})})
    w2 = Running(fixed, tmp_path / "w2.log", "w2")
    try:
        w2.wait_ready()
        alerts = consume(broker, s.kafka.alerts_topic, lambda r: len(r) >= 1, timeout=90)
        assert json.loads(alerts[0].value)["stream_id"] == "early"
        assert not consume(broker, s.kafka.dlq_topic, lambda r: False, timeout=1)
    finally:
        w2.stop()


def test_a_dead_letter_that_cannot_be_sent_blocks_its_partition_visibly_until_it_goes(broker, media, models_dir,
                                                                                     tmp_path):
    # a source that refuses connections: retried (worker.retries) and then dead-lettered; the broker
    # is frozen (SIGSTOP) while the retries run, so the dead letter cannot be sent
    s = make_settings(broker, tmp_path, models_dir, media, kafka={"partitions": 1},
                      worker={"retries": 3, "retry_backoff_s": 1.0, "retry_backoff_max_s": 1.0,
                              "dlq_retries": 1, "dlq_send_timeout_s": 1.0})
    asyncio.run(create_topics(s))
    dead_port = free_port()
    ref = FrameRef(stream_id="gone", uri=f"http://127.0.0.1:{dead_port}/seg.ts")
    publish(broker, s.kafka.frame_refs_topic, [(b"gone", ref.to_bytes())])
    w = Running(s, tmp_path / "w.log", "w")
    try:
        w.wait_ready()
        wait_for(lambda: w.metric("livemod_retries_total") >= 1, 60, "the first retry", w.diagnose)
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            blocked = wait_for(lambda: (lambda r: r[0] == 503 and json.loads(r[1]).get("blocked"))(
                http_get(f"{w.base}/ready")), 60, "/ready 503 with the blocked partition")
            assert "cannot be sent" in next(iter(blocked.values()))
            assert w.metric("livemod_partitions_blocked") == 1 and w.metric("livemod_dlq_send_failures_total") >= 2
            assert "blocked" in w.log.read_text()
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        dead = consume(broker, s.kafka.dlq_topic, lambda r: len(r) >= 1, timeout=90)
        assert json.loads(dead[0].value)["reason"] == "source_unavailable"
        wait_for(lambda: http_get(f"{w.base}/ready")[0] == 200, 60, "ready again", w.diagnose)
        assert w.metric("livemod_partitions_blocked") == 0
        wait_for(lambda: committed_and_end(broker, s.kafka.app_id, s.kafka.frame_refs_topic)[0] == (1, 1), 30,
                 "the partition committed", w.diagnose)
    finally:
        w.stop()


class RtmpServer:
    """Debian's ffmpeg serving one clip over RTMP, restarted whenever its client leaves (a server that
    accepts reconnections)."""

    def __init__(self, clip: Path, port: int) -> None:
        self.url = f"rtmp://127.0.0.1:{port}/live/s"
        self.clip, self._stop = clip, threading.Event()
        self._proc: subprocess.Popen | None = None
        self.starts = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._proc = subprocess.Popen(
                ["ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip), "-c", "copy",
                 "-f", "flv", "-listen", "1", self.url], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            self.starts += 1
            while self._proc.poll() is None and not self._stop.is_set():
                time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._thread.join(5)


@pytest.mark.skipif(not any((Path(d) / "ffmpeg").is_file() for d in os.environ.get("PATH", "").split(os.pathsep)),
                    reason="Debian's ffmpeg (apt-get install ffmpeg) is the RTMP server of this test; not installed")
@BOTH_BROKERS
def test_a_live_reference_is_followed_in_chunks_and_never_blocks_a_rebalance(broker, media, models_dir, tmp_path):
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "demo.yaml").write_text((REPO / "rules/policies/demo.yaml").read_text().replace(
        "audit_fraction: 0.05", "audit_fraction: 1.0"))  # every judged frame leaves a review record
    s = make_settings(broker, tmp_path, models_dir, media, kafka={"partitions": 2}, rules={"policies_dir": pol},
                      worker={"live_chunk_s": 4.0, "revoke_wait_s": 5.0})
    asyncio.run(create_topics(s))
    server = RtmpServer(media / "live.flv", free_port())
    w1 = w2 = None
    try:
        time.sleep(0.5)
        live = FrameRef(stream_id="on-air", uri=server.url, kind="live", seq=1)
        publish(broker, s.kafka.frame_refs_topic, [(b"on-air", live.to_bytes())])
        w1 = Running(s, tmp_path / "w1.log", "w1")
        w1.wait_ready()
        wait_for(lambda: w1.metric("livemod_live_chunks_total") >= 1, 60, "a live chunk continued", w1.diagnose)
        # a second worker joins while the live reference runs: the group must settle fast (the live
        # chunk is stopped or finishes within worker.live_chunk_s, it does not hold the rebalance)
        t0 = time.monotonic()
        w2 = Running(s, tmp_path / "w2.log", "w2")
        w2.wait_ready(timeout=60)
        wait_for(lambda: http_get(f"{w1.base}/ready")[0] == 200, 60, "w1 ready after the rebalance", w1.diagnose)
        settled = time.monotonic() - t0
        before = len(consume(broker, s.kafka.reviews_topic, lambda r: False, timeout=1))
        wait_for(lambda: len(consume(broker, s.kafka.reviews_topic, lambda r: False, timeout=1)) > before + 3, 60,
                 "frames judged after the rebalance", lambda: w1.diagnose() + w2.diagnose())
        refs = [json.loads(r.value) for r in consume(broker, s.kafka.frame_refs_topic, lambda r: False, timeout=1)]
        chunks = [r.get("chunk") for r in refs if r["stream_id"] == "on-air"]
        print(f"rebalance with a live reference in flight settled in {settled:.1f} s; "
              f"live chunks so far {chunks}; RTMP server (re)started {server.starts} times")
        assert settled < 40 and chunks[0] is None and chunks[1] == 1
    finally:
        for w in (w2, w1):
            if w is not None:
                w.stop()
        server.close()
