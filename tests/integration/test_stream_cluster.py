"""livemod workers on a 3-node Apache Kafka 4.4 cluster (replication factor 3, min.insync.replicas 2,
acks=all): a partition leader killed mid-backlog and restarted, and one of two workers SIGKILLed while
streams are live. Each: no reference lost, no incident twice, lag back to 0; the figures are printed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from livemod.demo.scene import Scene, broadcast_frames
from livemod.demo.service import http_get
from livemod.demo.synth import write_hls
from livemod.stream.records import FrameRef
from livemod.stream.settings import Settings
from livemod.stream.topics import create_topics
from tests.kafka.cluster import run_sync
from tests.kafka.plugin import report
from tests.service_helpers import Running, committed_and_end, consume, make_settings, publish, refs_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("media")
    out = {}
    for name, scene in (("cat", Scene(width=480, height=270, fps=4, seconds=8, cat_from=2.0, cat_to=6.0)),
                        ("plain", Scene(width=480, height=270, fps=4, seconds=8, background="astronaut",
                                        cat_from=1e9, cat_to=1e9))):
        pl = write_hls(root / name, broadcast_frames(scene), fps=4, segment_seconds=1.0)
        out[name] = sorted(pl.parent.glob("seg*.ts"))
    return out


def audit_policies(tmp_path: Path) -> Path:
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "demo.yaml").write_text((REPO / "rules/policies/demo.yaml").read_text().replace(
        "audit_fraction: 0.05", "audit_fraction: 1.0"))  # every judged frame leaves a record
    return pol


def judged_refs(cluster, s) -> set[str]:
    """Reference keys with at least one judged frame (reviews, or the frames of an alert)."""
    reviews = consume(cluster, s.kafka.reviews_topic, lambda r: False, timeout=1)
    alerts = consume(cluster, s.kafka.alerts_topic, lambda r: False, timeout=1)
    ids = {json.loads(r.value)["frame_id"] for r in reviews}
    ids |= {f["frame_id"] for r in alerts for f in json.loads(r.value)["frames"]}
    return {i.split("@")[0] for i in ids}


def incidents(cluster, s) -> tuple[int, dict[str, set[str]]]:
    alerts = [json.loads(r.value) for r in consume(cluster, s.kafka.alerts_topic, lambda r: False, timeout=2)]
    per: dict[str, set[str]] = {}
    for a in alerts:
        per.setdefault(a["stream_id"], set()).add(a["id"])
    return len(alerts), per


def wait_for(pred, timeout: float, what: str, diagnose=lambda: ""):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = pred()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{diagnose()}")


@pytest.mark.kafka
def test_a_partition_leader_killed_mid_backlog_and_restarted(kafka_cluster, media, models_dir, tmp_path):
    s = make_settings(kafka_cluster, tmp_path, models_dir, media["cat"][0].parent.parent,
                      kafka={"replication_factor": 3}, rules={"policies_dir": audit_policies(tmp_path)})
    asyncio.run(create_topics(s))
    streams = {f"cat-{i}": "cat" for i in range(2)} | {f"plain-{i}": "plain" for i in range(4)}
    msgs = []
    for sid, kind in streams.items():
        msgs += refs_for(sid, media[kind], 1_795_000_000.0)
    publish(kafka_cluster, s.kafka.frame_refs_topic, msgs)
    w = Running(s, tmp_path / "w.log", "w")
    try:
        w.wait_ready()
        wait_for(lambda: w.metric("livemod_references_consumed_total") >= 6, 90, "the backlog under way", w.diagnose)
        t0 = time.monotonic()
        victim = run_sync(kafka_cluster.kill_leader(s.kafka.frame_refs_topic, 0))
        done_at_kill = w.metric("livemod_references_consumed_total")
        wait_for(lambda: w.metric("livemod_references_consumed_total") >= done_at_kill + 4, 90,
                 "progress with a node down", w.diagnose)
        progress_s = time.monotonic() - t0
        restart_s = run_sync(kafka_cluster.restart_node(victim.node_id))
        wanted = {f"{sid}/{i}" for sid, kind in streams.items() for i in range(len(media[kind]))}
        seen = wait_for(lambda: (lambda got: got if wanted <= got else None)(judged_refs(kafka_cluster, s)), 120,
                        "every reference judged", lambda: f"{sorted(wanted - judged_refs(kafka_cluster, s))}"
                                                          + w.diagnose())
        assert wanted <= seen
        n_alerts, per = incidents(kafka_cluster, s)
        assert set(per) == {"cat-0", "cat-1"} and all(len(ids) == 1 for ids in per.values()), per
        ends = wait_for(lambda: (lambda m: m if all(c == e for c, e in m.values()) else None)(
            committed_and_end(kafka_cluster, s.kafka.app_id, s.kafka.frame_refs_topic)), 60, "lag 0", w.diagnose)
        line = (f"leader of {s.kafka.frame_refs_topic}[0] (node {victim.node_id}) SIGKILLed mid-backlog: "
                f"4 more references handled {progress_s:.1f} s after the kill; node back in {restart_s:.1f} s; "
                f"{len(wanted)} references judged, {n_alerts} alert messages for {len(per)} incidents, lag 0 "
                f"(committed {sum(c for c, _e in ends.values())})")
        print(line)
        report("cluster: leader killed", line)
    finally:
        w.stop()


@pytest.mark.parametrize("where", [pytest.param("kafka", marks=pytest.mark.kafka), "tansu"])
def test_one_of_two_workers_sigkilled_streams_are_moderated_again_within_seconds(where, request, media, models_dir,
                                                                                  tmp_path):
    # the default group timing (kafka.session_timeout_s etc.), not the tests' short session
    kafka_cluster = request.getfixturevalue("kafka_cluster" if where == "kafka" else "broker")
    d = Settings().kafka
    s = make_settings(kafka_cluster, tmp_path, models_dir, media["cat"][0].parent.parent,
                      kafka={"replication_factor": 3 if where == "kafka" else 1, "session_timeout_s": d.session_timeout_s,
                             "heartbeat_interval_s": d.heartbeat_interval_s, "rebalance_timeout_s": d.rebalance_timeout_s},
                      rules={"policies_dir": audit_policies(tmp_path)})
    asyncio.run(create_topics(s))
    w1 = Running(s, tmp_path / "w1.log", "w1")
    w2 = Running(s, tmp_path / "w2.log", "w2")
    stop = threading.Event()
    streams = [f"live-{i}" for i in range(8)]

    def ingest() -> None:  # one 1 s segment per stream per second, as a live ingest publishes them
        seq = 0
        while not stop.is_set():
            seg = media["plain"][seq % len(media["plain"])]
            now = time.time()
            publish(kafka_cluster, s.kafka.frame_refs_topic,
                    [(sid.encode(), FrameRef(stream_id=sid, uri=str(seg), seq=seq, wall_start=now).to_bytes())
                     for sid in streams])
            seq += 1
            stop.wait(max(0.0, 1.0 - (time.time() - now)))

    feeder = threading.Thread(target=ingest, daemon=True)
    try:
        w1.wait_ready(90)
        w2.wait_ready(90)
        refs = f"{s.kafka.frame_refs_topic}:"

        def split():
            a1 = {p for p in json.loads(http_get(f"{w1.base}/ready")[1])["assigned"] if p.startswith(refs)}
            a2 = {p for p in json.loads(http_get(f"{w2.base}/ready")[1])["assigned"] if p.startswith(refs)}
            return (a1, a2) if a1 and a2 and len(a1 | a2) == s.kafka.partitions else None

        a1, _a2 = wait_for(split, 90, "both workers owning partitions", w1.diagnose)
        feeder.start()
        w1_parts = {int(p.split(":")[1]) for p in a1}
        wait_for(lambda: w1.metric("livemod_references_consumed_total") >= 4, 60, "w1 handling its streams",
                 w1.diagnose)
        w1.stop(signal.SIGKILL)
        killed_at = time.time()
        t0 = time.monotonic()

        def moderated_again():
            recs = consume(kafka_cluster, s.kafka.reviews_topic, lambda r: False, timeout=1)
            return [r for r in recs if r.partition in w1_parts and r.timestamp / 1000 > killed_at + 0.5
                    and json.loads(r.value).get("stream_id", "").startswith("live-")]

        wait_for(moderated_again, 60, "w1's streams judged by w2", w2.diagnose)
        failover_s = time.monotonic() - t0
        stop.set()
        feeder.join(10)
        ends = wait_for(lambda: (lambda m: m if all(c == e for c, e in m.values()) else None)(
            committed_and_end(kafka_cluster, s.kafka.app_id, s.kafka.frame_refs_topic)), 90, "lag 0", w2.diagnose)
        published = sum(e for _c, e in ends.values())
        judged = judged_refs(kafka_cluster, s)
        missing = {f"{sid}/{i}" for sid in streams for i in range(published // len(streams))} - judged
        assert not missing, f"references never judged: {sorted(missing)[:10]}{w2.diagnose()}"
        line = (f"{'3-node Apache Kafka' if where == 'kafka' else 'bundled Tansu'}: one of two workers SIGKILLed (session {s.kafka.session_timeout_s:.0f} s, heartbeat "
                f"{s.kafka.heartbeat_interval_s:.0f} s, the defaults): its streams judged again {failover_s:.1f} s after the kill; "
                f"{published} references, none lost, lag 0")
        print(line)
        report(f"worker failover ({where})", line)
        # the README states the measured time (target 15 s); this bound only catches a return to minutes
        assert failover_s <= 40, line
    finally:
        stop.set()
        w2.stop()
        w1.stop(signal.SIGKILL)
