"""The Faust service against a real Kafka-protocol broker (Tansu, started by the tests).

Workers run as real `livemod worker` processes, so they can be killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from livemod.demo.scene import Scene, broadcast_frames
from livemod.demo.service import http_get
from livemod.demo.synth import write_hls
from livemod.stream.records import FrameRef
from livemod.stream.topics import create_topics, service_topics
from tests.service_helpers import Running, consume, make_settings, partition_counts, publish, refs_for

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parents[2]
BOTH_BROKERS = pytest.mark.parametrize("broker", ["tansu", pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True)


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> dict[str, list[Path]]:
    """Two streams of 2 s MPEG-TS segments: 'cat' shows the small PiP cat from 2 s to 8 s, 'plain' never."""
    root = tmp_path_factory.mktemp("segments")
    out = {}
    for name, scene in (
        ("cat", Scene(width=960, height=540, fps=4, seconds=12, cat_from=2.0, cat_to=8.0)),
        ("plain", Scene(width=960, height=540, fps=4, seconds=12, background="astronaut", cat_from=1e9, cat_to=1e9)),
    ):
        pl = write_hls(root / name, broadcast_frames(scene), fps=4, segment_seconds=1.0)
        out[name] = sorted(pl.parent.glob("seg*.ts"))
    return out


@BOTH_BROKERS
def test_references_to_alerts_and_every_bad_message_to_the_dlq(broker, segments, models_dir, tmp_path):
    s = make_settings(broker, tmp_path, models_dir, segments["cat"][0].parent.parent)
    asyncio.run(create_topics(s))
    corrupt = tmp_path / "corrupt.ts"
    corrupt.write_bytes(b"\x47" + b"\x00" * 500)
    bad = [
        (b"b1", b"{not json"),
        (b"b2", b'{"v": 9, "stream_id": "b2", "uri": "x.ts"}'),
        (b"b3", b'{"v": 1, "uri": "x.ts"}'),
        (b"b4", FrameRef(stream_id="b4", uri="/etc/passwd").to_bytes()),
        (b"b5", FrameRef(stream_id="b5", uri=str(corrupt)).to_bytes()),
        (b"b6", FrameRef(stream_id="b6", uri=str(segments["plain"][0]), policy="no-such-policy").to_bytes()),
    ]
    wall0 = 1_750_000_000.0
    publish(broker, s.kafka.frame_refs_topic, bad + refs_for("cam-cat", segments["cat"], wall0)
            + refs_for("cam-plain", segments["plain"], wall0))
    w = Running(s, tmp_path / "w1.log", "w1")
    try:
        w.wait_ready()
        dead = consume(broker, s.kafka.dlq_topic, lambda r: len(r) >= len(bad))
        reasons = {json.loads(r.value)["key"]: json.loads(r.value)["reason"] for r in dead}
        assert reasons == {"b1": "bad_json", "b2": "unknown_version", "b3": "invalid_fields", "b4": "forbidden_source",
                           "b5": "truncated_media", "b6": "unknown_policy"}
        one = json.loads(dead[0].value)
        assert one["worker_id"] == "w1" and one["attempts"] >= 1 and one["value"] and one["error_class"]
        alerts = consume(broker, s.kafka.alerts_topic, lambda r: len(r) >= 1)
        t0 = time.monotonic()
        total = len(bad) + len(segments["cat"]) + len(segments["plain"])
        while w.metric("livemod_references_consumed_total") < total and time.monotonic() - t0 < 60:
            time.sleep(0.3)
        assert w.metric("livemod_references_consumed_total") == total, "the worker kept going after every bad message"
        alerts = consume(broker, s.kafka.alerts_topic, lambda r: False, timeout=2)
        assert len(alerts) == 1, "one incident, one alert"
        alert = json.loads(alerts[0].value)
        assert dict(alerts[0].headers)["alert-id"].decode() == alert["id"]
        assert alert["stream_id"] == "cam-cat" and alert["recheck_used"] and alert["box"]
        assert alert["latency"]["segment_to_decision_s"] > 0 and alert["evidence"]["heatmap"].endswith("-heatmap.jpg")
        assert alerts[0].key == b"cam-cat"
        _status, body = http_get(f"{w.base}/metrics")
        text = body.decode()
        for name in ("livemod_frames_decoded_total", "livemod_batch_size_bucket", "livemod_end_to_end_seconds_bucket",
                     "livemod_dlq_messages_total", "livemod_rechecks_total", "livemod_consumer_lag",
                     "livemod_references_in_flight", "livemod_alerts_total"):
            assert name in text, name
        assert http_get(f"{w.base}/health")[0] == 200
    finally:
        w.stop()
    assert w.proc.returncode == 0, w.log.read_text()[-2000:]


@BOTH_BROKERS
def test_sigkill_mid_batch_loses_nothing_and_duplicates_no_incident(broker, segments, models_dir, tmp_path):
    pol = tmp_path / "policies"
    pol.mkdir()
    text = (REPO / "rules/policies/demo.yaml").read_text().replace("audit_fraction: 0.05", "audit_fraction: 1.0")
    (pol / "demo.yaml").write_text(text)
    s = make_settings(broker, tmp_path, models_dir, segments["cat"][0].parent.parent,
                      rules={"policies_dir": pol}, worker={"max_in_flight": 4})
    asyncio.run(create_topics(s))
    streams = {f"cat-{i}": "cat" for i in range(3)} | {f"plain-{i}": "plain" for i in range(3)}
    msgs = []
    for sid, kind in streams.items():
        msgs += refs_for(sid, segments[kind], 1_760_000_000.0)
    publish(broker, s.kafka.frame_refs_topic, msgs)
    w1 = Running(s, tmp_path / "w1.log", "w1")
    w1.wait_ready()
    t0 = time.monotonic()
    while w1.metric("livemod_references_consumed_total") < 8 and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    assert w1.metric("livemod_references_in_flight") >= 1 or w1.metric("livemod_references_consumed_total") < len(msgs)
    w1.stop(signal.SIGKILL)
    w2 = Running(s, tmp_path / "w2.log", "w2")
    try:
        w2.wait_ready()
        wanted = {f"{sid}/{i}" for sid, kind in streams.items() for i in range(len(segments[kind]))}

        def refs_seen() -> set[str]:
            # every judged frame leaves a record: an audit sample (audit_fraction 1.0), a review,
            # a closed incident, or (the deciding frames) an alert
            reviews = consume(broker, s.kafka.reviews_topic, lambda r: False, timeout=1)
            alerts = consume(broker, s.kafka.alerts_topic, lambda r: False, timeout=1)
            ids = {json.loads(r.value)["frame_id"] for r in reviews}
            ids |= {f["frame_id"] for r in alerts for f in json.loads(r.value)["frames"]}
            return {i.split("@")[0] for i in ids}

        t0 = time.monotonic()
        while not wanted <= (seen := refs_seen()) and time.monotonic() - t0 < 120:
            time.sleep(1)
        assert wanted <= seen, f"references never handled: {sorted(wanted - seen)}{w2.diagnose()}"
        time.sleep(2)
        alerts = [json.loads(r.value) for r in consume(broker, s.kafka.alerts_topic, lambda r: False, timeout=2)]
        per_stream: dict[str, set[str]] = {}
        for a in alerts:
            per_stream.setdefault(a["stream_id"], set()).add(a["id"])
        assert per_stream == {sid: per_stream.get(sid) for sid in ("cat-0", "cat-1", "cat-2")}
        assert all(len(ids) == 1 for ids in per_stream.values()), f"an incident got two ids: {per_stream}"
        dupes = len(alerts) - sum(len(ids) for ids in per_stream.values())
        print(f"alert messages {len(alerts)}, incidents {sum(len(i) for i in per_stream.values())}, "
              f"republished with the same id after the kill: {dupes}; after the restart: "
              f"{w2.metric('livemod_offset_rewinds_total'):.0f} rewinds, "
              f"{w2.metric('livemod_offsets_refused_total'):.0f} events refused as out of sequence")
    finally:
        w2.stop()


def test_an_end_reference_closes_the_open_incident(broker, segments, models_dir, tmp_path):
    # the cat is on air from 2 s to 8 s; the broadcast ends at 6 s, with the incident open
    s = make_settings(broker, tmp_path, models_dir, segments["cat"][0].parent.parent)
    asyncio.run(create_topics(s))
    end = FrameRef(stream_id="short-cam", kind="end", seq=6, wall_start=1_790_000_007.0)
    publish(broker, s.kafka.frame_refs_topic, refs_for("short-cam", segments["cat"][:6], 1_790_000_000.0)
            + [(b"short-cam", end.to_bytes())] * 2)  # the end marker twice: a replay closes nothing more
    w = Running(s, tmp_path / "w.log", "w")
    try:
        w.wait_ready()
        alerts = consume(broker, s.kafka.alerts_topic, lambda r: len(r) >= 1)
        consume(broker, s.kafka.reviews_topic,
                lambda r: any(json.loads(x.value)["kind"] == "incident_closed" for x in r))
        t0 = time.monotonic()
        while w.metric("livemod_references_consumed_total") < 8 and time.monotonic() - t0 < 60:
            time.sleep(0.3)
        closed = [json.loads(r.value) for r in consume(broker, s.kafka.reviews_topic, lambda r: False, timeout=2)]
        closed = [c for c in closed if c["kind"] == "incident_closed"]
        assert [(c["alert_id"], c["close_reason"], c["frame_id"]) for c in closed] == [
            (json.loads(alerts[0].value)["id"], "ended", "short-cam/6@end")], w.diagnose()
    finally:
        w.stop()


@BOTH_BROKERS
def test_two_workers_split_the_streams_and_fail_over(broker, segments, models_dir, tmp_path):
    # no topics made beforehand: the workers create them with 3 partitions (the broker's own
    # auto-create would give 4 and break co-partitioning with the 3-partition state table)
    s = make_settings(broker, tmp_path, models_dir, segments["cat"][0].parent.parent, kafka={"partitions": 3})
    w1 = Running(s, tmp_path / "w1.log", "w1")
    w2 = Running(s, tmp_path / "w2.log", "w2")
    try:
        w1.wait_ready()
        w2.wait_ready()
        names = [t for t, _n in service_topics(s)]
        assert partition_counts(broker, names) == dict.fromkeys(names, 3)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 40:
            a1 = json.loads(http_get(f"{w1.base}/ready")[1])["assigned"]
            a2 = json.loads(http_get(f"{w2.base}/ready")[1])["assigned"]
            refs1 = {p for p in a1 if p.startswith(s.kafka.frame_refs_topic + ":")}
            refs2 = {p for p in a2 if p.startswith(s.kafka.frame_refs_topic + ":")}
            if refs1 and refs2 and len(refs1 | refs2) == s.kafka.partitions:
                break
            time.sleep(0.5)
        assert refs1 and refs2 and not refs1 & refs2, (a1, a2)
        streams = [f"s{i}" for i in range(8)]
        msgs = [m for sid in streams for m in refs_for(sid, segments["plain"][:2], 1_770_000_000.0)]
        publish(broker, s.kafka.frame_refs_topic, msgs)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            n1, n2 = w1.metric("livemod_references_consumed_total"), w2.metric("livemod_references_consumed_total")
            if n1 + n2 >= len(msgs):
                break
            time.sleep(0.3)
        assert n1 > 0 and n2 > 0 and n1 + n2 >= len(msgs)  # at least once: a rebalance may replay a few
        w1.stop(signal.SIGKILL)
        more = [m for sid in streams for m in refs_for(sid, segments["plain"][2:4], 1_770_000_000.0)]
        more = [(k, v.replace(b'"seq":0', b'"seq":2').replace(b'"seq":1', b'"seq":3')) for k, v in more]
        publish(broker, s.kafka.frame_refs_topic, more)
        t0 = time.monotonic()
        while w2.metric("livemod_references_consumed_total") < n2 + len(more) and time.monotonic() - t0 < 90:
            time.sleep(0.5)
        assert w2.metric("livemod_references_consumed_total") >= n2 + len(more), "the survivor took over every stream"
    finally:
        w1.stop(signal.SIGKILL)
        w2.stop()


class _Receiver(http.server.BaseHTTPRequestHandler):
    fail_first = 2
    calls: list[tuple[int, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n = len(type(self).calls) + 1
        code = 500 if n <= type(self).fail_first else 200
        type(self).calls.append((code, dict(self.headers), body))
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_retries_then_delivers_signed_and_ttl_goes_to_callback_dlq(broker, segments, models_dir, tmp_path, monkeypatch):
    class Flaky(_Receiver):
        calls: list = []
        fail_first = 2

    class Down(_Receiver):
        calls: list = []
        fail_first = 10**9

    servers = []
    for handler in (Flaky, Down):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    pol = tmp_path / "policies"
    pol.mkdir()
    demo = (REPO / "rules/policies/demo.yaml").read_text()
    for name, srv, ttl in (("hooked", servers[0], 60), ("hooked-down", servers[1], 1.5)):
        (pol / f"{name}.yaml").write_text(demo.replace("name: demo", f"name: {name}").replace(
            "audit_fraction: 0.05",
            f"audit_fraction: 0\nwebhook: {{url: 'http://127.0.0.1:{srv.server_address[1]}/hook', secret_env: HOOK_TEST_SECRET, ttl_s: {ttl}}}"))
    monkeypatch.setenv("HOOK_TEST_SECRET", "s3cret")  # the worker process inherits it
    s = make_settings(broker, tmp_path, models_dir, segments["cat"][0].parent.parent,
                      rules={"policies_dir": pol, "default_policy": "hooked"})
    asyncio.run(create_topics(s))
    publish(broker, s.kafka.frame_refs_topic, refs_for("hook-cam", segments["cat"][:6], 1_780_000_000.0, policy="hooked")
            + refs_for("down-cam", segments["cat"][:6], 1_780_000_000.0, policy="hooked-down"))
    w = Running(s, tmp_path / "w.log", "w")
    try:
        w.wait_ready()
        t0 = time.monotonic()
        while not any(c[0] == 200 for c in Flaky.calls) and time.monotonic() - t0 < 60:
            time.sleep(0.2)
        codes = [c[0] for c in Flaky.calls]
        assert codes[:3] == [500, 500, 200], codes
        _code, headers, body = Flaky.calls[-1]
        alert = json.loads(body)
        assert headers["X-Livemod-Alert-Id"] == alert["id"] and alert["stream_id"] == "hook-cam"
        expected = "sha256=" + hmac.new(b"s3cret", headers["X-Livemod-Timestamp"].encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        assert headers["X-Livemod-Signature"] == expected
        dead = consume(broker, s.kafka.callbacks_dlq_topic, lambda r: len(r) >= 1, timeout=60)
        record = json.loads(dead[0].value)
        assert record["alert"]["stream_id"] == "down-cam" and record["attempts"] >= 2 and "TTL" in record["error"]
    finally:
        w.stop()
        for srv in servers:
            srv.shutdown()
            srv.server_close()
