"""The demo on the service: bundled broker, one worker process, simulated ingest, alerts as they arrive."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from livemod.demo.broker import EmbeddedBroker, free_port
from livemod.stream.settings import Settings


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as LIVEMOD_* variables (one JSON value per section) for a worker process."""
    env = {}
    for name in ("decoder", "engines", "rules", "kafka", "worker"):
        section = getattr(settings, name)
        data = section.model_dump(mode="json")
        if name == "kafka" and settings.kafka.sasl_password is not None:
            data["sasl_password"] = settings.kafka.sasl_password.get_secret_value()
        env[f"LIVEMOD_{name.upper()}"] = json.dumps(data)
    env["LIVEMOD_LOG_LEVEL"] = settings.log_level
    return env


def start_worker(settings: Settings, log_path: Path, *, cwd: Path | None = None) -> subprocess.Popen:
    """Start `livemod worker` as a child process with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEMOD_")}
    env.update(settings_env(settings))
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "livemod.stream.cli", "worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def scrape(url: str) -> dict[str, Any]:
    """Counters (summed over labels) and histogram buckets from a /metrics page."""
    status, body = http_get(url)
    out: dict[str, Any] = {"_status": status}
    if status != 200:
        return out
    for fam in text_string_to_metric_families(body.decode()):
        for sample in fam.samples:
            if sample.name.endswith("_total") or sample.name.endswith("_count") or sample.name.endswith("_sum"):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
            elif sample.name.endswith("_bucket"):
                out.setdefault(sample.name, {})
                le = float(sample.labels["le"])
                out[sample.name][le] = out[sample.name].get(le, 0.0) + sample.value
            else:
                out.setdefault(sample.name, 0.0)
                out[sample.name] += sample.value
    return out


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """A quantile from cumulative Prometheus buckets, by linear interpolation inside the bucket."""
    if not buckets:
        return None
    items = sorted(buckets.items())
    total = items[-1][1]
    if total <= 0:
        return None
    target, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in items:
        if n >= target:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((target - prev_n) / max(n - prev_n, 1e-9))
        prev_le, prev_n = le, n
    return prev_le


async def _consume(bootstrap: str, topic: str, printer: Any, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for rec in records:
                    printer(rec)
    finally:
        await consumer.stop()


async def _main(settings: Settings, out: Path, seconds: float, streams: int) -> int:
    from livemod.engines.prepare import prepare_models
    from livemod.demo.ingest import default_streams, publish_refs, write_segments
    from livemod.stream.topics import create_topics

    out.mkdir(parents=True, exist_ok=True)
    say("== livemod demo: the service on the embedded broker ==")
    prepare_models(settings.engines.models_dir, log=say)
    seg_dir = Path(tempfile.mkdtemp(prefix="livemod-ingest-"))
    sims = default_streams(seconds, streams)
    say(f"simulated ingest: encoding {len(sims)} sample broadcasts of {seconds:.0f} s into {seg_dir} ...")
    loop = asyncio.get_running_loop()
    plan = [(s, await loop.run_in_executor(None, write_segments, seg_dir, s)) for s in sims]

    with EmbeddedBroker(log_file=out / "broker.log") as broker:
        say(f"embedded broker (Tansu) on {broker.bootstrap}")
        web_port = free_port()
        s = settings.model_copy(update={
            "kafka": settings.kafka.model_copy(update={
                "bootstrap_servers": broker.url, "producer_max_batch_size": 1,
                "session_timeout_s": 6.0, "heartbeat_interval_s": 1.0, "rebalance_timeout_s": 10.0}),
            "worker": settings.worker.model_copy(update={"web_port": web_port, "id": "demo-worker-1"}),
            "rules": settings.rules.model_copy(update={
                "default_policy": "demo", "evidence_dir": (out / "evidence").resolve(),
                "review_dir": (out / "review").resolve()}),
            "engines": settings.engines.model_copy(update={"models_dir": settings.engines.models_dir.resolve()}),
            "decoder": settings.decoder.model_copy(update={"file_roots": (*settings.decoder.file_roots, seg_dir.resolve())}),
        })
        await create_topics(s)
        worker = start_worker(s, out / "worker.log")
        base = f"http://127.0.0.1:{web_port}"
        say(f"worker started (pid {worker.pid}); metrics on {base}/metrics, health on {base}/health")
        try:
            t0 = time.monotonic()
            while http_get(f"{base}/ready")[0] != 200:
                if worker.poll() is not None:
                    say(f"the worker exited with code {worker.returncode}; see {out / 'worker.log'}")
                    return 1
                if time.monotonic() - t0 > 90:
                    say("the worker did not become ready within 90 s")
                    return 1
                await asyncio.sleep(0.3)
            say(f"worker ready after {time.monotonic() - t0:.1f} s")

            alerts: list[dict[str, Any]] = []
            dead: list[dict[str, Any]] = []

            def on_alert(rec: Any) -> None:
                alert = json.loads(rec.value)
                alerts.append(alert)
                print(json.dumps(alert, sort_keys=True), flush=True)
                how = "via Grad-CAM re-check" if alert.get("recheck_used") else "on the whole frame"
                say(f"ALERT {alert['id'][:12]} stream={alert['stream_id']} rule={alert['rule']} "
                    f"{alert['model']}:{alert['label']}={alert['score']:.2f} ({how}), box={alert.get('box')}, "
                    f"segment->decision {alert['latency']['segment_to_decision_s']:.2f} s, evidence {alert['evidence'].get('heatmap')}")

            def on_dead(rec: Any) -> None:
                d = json.loads(rec.value)
                dead.append(d)
                say(f"DLQ     offset {d['offset']}: {d['error_class']} [{d['reason']}] {d['message'][:100]}")

            stop = asyncio.Event()
            consumers = [asyncio.create_task(_consume(broker.bootstrap, s.kafka.alerts_topic, on_alert, stop)),
                         asyncio.create_task(_consume(broker.bootstrap, s.kafka.dlq_topic, on_dead, stop))]
            bad = [(b"broken-cam", b"{not json"),
                   (b"nosy-cam", frame_ref_bytes("nosy-cam", "http://169.254.169.254/latest/meta-data"))]
            say(f"publishing references: {sum(len(p) for _s, p in plan)} segments of 2 s, paced in real time, "
                f"an end marker per stream, plus {len(bad)} bad messages")

            def on_publish(ref: Any) -> None:
                if ref.kind == "end":
                    say(f"[ingest] {ref.stream_id} ended (an 'end' reference closes its open incidents)")
                elif ref.seq % 2 == 1:
                    m = scrape(f"{base}/metrics")
                    say(f"[ingest] {ref.stream_id} segment {ref.seq} published; worker: "
                        f"{m.get('livemod_references_consumed_total', 0):.0f} refs, "
                        f"{m.get('livemod_frames_classified_total', 0):.0f} images classified, "
                        f"{m.get('livemod_alerts_total', 0):.0f} alerts")

            published = await publish_refs(broker.bootstrap, s.kafka.frame_refs_topic, plan, extra=bad,
                                           on_publish=on_publish)
            expected = len(published) + len(bad)
            t_wait = time.monotonic()
            metrics: dict[str, Any] = {}
            while time.monotonic() - t_wait < 60:
                metrics = scrape(f"{base}/metrics")
                if metrics.get("livemod_references_consumed_total", 0) >= expected:
                    break
                await asyncio.sleep(0.3)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*consumers)
            status, body = http_get(f"{base}/metrics")
            say(f"GET /metrics -> {status}, {len(body)} bytes, e.g.:")
            for line in body.decode().splitlines():
                if line.startswith(("livemod_references_consumed_total", "livemod_batch_size_count", "livemod_engine_backend")):
                    say("    " + line)
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
        e2e = metrics.get("livemod_end_to_end_seconds_bucket", {})
        p50, p99 = quantile(e2e, 0.5), quantile(e2e, 0.99)
        summary = {
            "references_published": len(published),
            "bad_messages_published": len(bad),
            "references_handled": metrics.get("livemod_references_consumed_total", 0),
            "frames_sampled": metrics.get("livemod_frames_sampled_total", 0),
            "images_classified": metrics.get("livemod_frames_classified_total", 0),
            "alerts": len(alerts),
            "alerts_via_recheck": sum(bool(a.get("recheck_used")) for a in alerts),
            "dead_letters": len(dead),
            "segment_to_decision_p50_s": round(p50, 2) if p50 is not None else None,
            "segment_to_decision_p99_s": round(p99, 2) if p99 is not None else None,
            "worker_exit_code": worker.returncode,
            "evidence_dir": str(out / "evidence"),
        }
    say("summary: " + json.dumps(summary, sort_keys=True))
    ok = summary["alerts"] >= 1 and summary["references_handled"] >= summary["references_published"]
    return 0 if ok else 1


def frame_ref_bytes(stream_id: str, uri: str) -> bytes:
    from livemod.stream.records import FrameRef

    return FrameRef(stream_id=stream_id, uri=uri, seq=0).to_bytes()


def run_service_demo(settings: Settings, *, out: Path, seconds: float = 12.0, streams: int = 3) -> int:
    return asyncio.run(_main(settings, Path(out), seconds, streams))
