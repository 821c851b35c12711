"""Hot reload: a policy edited under a running worker judges the next reference; a bad file keeps the old one."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from livemod.demo.scene import Scene, broadcast_frames
from livemod.demo.service import http_get
from livemod.demo.synth import write_hls
from livemod.stream.topics import create_topics
from tests.service_helpers import Running, consume, make_settings, publish, refs_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def ready_body(w: Running) -> dict:
    return json.loads(http_get(f"{w.base}/ready")[1])


def wait_for(pred, timeout: float, what: str, w: Running):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}{w.diagnose()}")


def test_a_policy_edited_under_a_running_worker_judges_the_next_reference(broker, models_dir, tmp_path):
    media = tmp_path / "media"
    write_hls(media / "cat", broadcast_frames(Scene(width=640, height=360, fps=4, seconds=4, cat_from=0.0, cat_to=9.0)),
              fps=4, segment_seconds=1.0)
    segs = sorted((media / "cat").glob("seg*.ts"))
    pol = tmp_path / "policies"
    pol.mkdir()
    demo = (REPO / "rules/policies/demo.yaml").read_text()
    (pol / "demo.yaml").write_text(demo)
    s = make_settings(broker, tmp_path, models_dir, media, rules={"policies_dir": pol, "reload_interval_s": 0.5})
    asyncio.run(create_topics(s))
    w = Running(s, tmp_path / "w.log", "w")
    try:
        w.wait_ready()
        v1 = ready_body(w)["policies"]["demo"]
        publish(broker, s.kafka.frame_refs_topic, refs_for("before", segs, 1_790_000_000.0))
        first = json.loads(consume(broker, s.kafka.alerts_topic, lambda r: len(r) >= 1, timeout=90)[0].value)
        assert first["policy_version"] == v1

        assert 'version: "1"' in demo
        (pol / "demo.yaml").write_text(demo.replace('version: "1"', 'version: "2"', 1))
        v2 = wait_for(lambda: (lambda v: v if v.startswith("2+") else None)(ready_body(w)["policies"]["demo"]), 30,
                      "the edited policy to be loaded", w)
        publish(broker, s.kafka.frame_refs_topic, refs_for("after", segs, 1_790_000_100.0))
        alerts = consume(broker, s.kafka.alerts_topic, lambda r: len(r) >= 2, timeout=90)
        after = [json.loads(a.value) for a in alerts if json.loads(a.value)["stream_id"] == "after"]
        assert after and after[0]["policy_version"] == v2 != v1

        (pol / "broken.yaml").write_text("name: broken\nrules: [ {this is not: valid\n")
        body = wait_for(lambda: (lambda b: b if b["config"].get("last_error") else None)(ready_body(w)), 30,
                        "the bad file to be reported", w)
        assert "broken" in body["config"]["last_error"] or "yaml" in body["config"]["last_error"].lower()
        assert w.metric("livemod_config_reload_failed") == 1 and body["policies"]["demo"] == v2
        publish(broker, s.kafka.frame_refs_topic, refs_for("still", segs, 1_790_000_200.0))
        alerts = consume(broker, s.kafka.alerts_topic, lambda r: len(r) >= 3, timeout=90)
        still = [json.loads(a.value) for a in alerts if json.loads(a.value)["stream_id"] == "still"]
        assert still and still[0]["policy_version"] == v2, "a bad file keeps the running version"
        assert "do not load; keeping the running version" in w.log.read_text()
    finally:
        w.stop()
