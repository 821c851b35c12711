"""The orchestration ceiling: worker processes with decode and inference made nearly free.

    .venv/bin/python benchmarks/run.py --only ceiling     (this module holds the section's parts)

64x64 JPEG snapshots published as ``image`` references, and a 64x64 clip of many frames sampled
in interval mode at a high rate, through the bundled broker (Tansu) and one ``livemod worker``
whose only model is a 32x32 one-conv ONNX model with a ``cams`` output (tests/tinymodels.py):
what is left is the service's own cost per reference and per frame. ``processes`` > 1 starts that
many workers in one consumer group (as ``livemod worker --processes N`` does) and sums them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from livemod.demo.broker import EmbeddedBroker, free_port
from livemod.demo.service import http_get, start_worker
from livemod.demo.synth import pattern_frames, write_video
from livemod.stream.records import FrameRef
from livemod.stream.settings import Settings
from livemod.stream.topics import create_topics

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = float(os.sysconf("SC_CLK_TCK"))


def _tinymodels():  # noqa: ANN202 - a module loaded by path: the repo root stays off sys.path
    spec = importlib.util.spec_from_file_location("livemod_bench_tinymodels", ROOT / "tests" / "tinymodels.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def tiny_setup(tmp: Path) -> tuple[Path, Path, Path]:
    """A 32x32 one-conv model with a card and a one-rule policy in folders of their own: (cards, models, policies)."""
    cards, models, policies = tmp / "cards", tmp / "models", tmp / "policies"
    for d in (cards, models, policies):
        d.mkdir(parents=True, exist_ok=True)
    _tinymodels().tiny_cam_model(models / "tiny.onnx", layout="NHWC", size=32, classes=3, seed=3)
    (cards / "tiny.yaml").write_text(
        "name: tiny\nversion: '1'\nfile: tiny.onnx\nlayout: NHWC\nsize: [32, 32]\nchannel_order: RGB\n"
        "scale: 0.00392157\nresize: squash\nlabels: [a, b, c]\n")
    # thresholds no frame of these inputs reaches: the common path (judged, nothing to publish)
    (policies / "tiny.yaml").write_text(
        "name: tiny\naudit_fraction: 0.0\nrules:\n"
        "  - {name: r1, model: tiny, label: a, review: 0.999, alert: 0.9999, window: {k: 2, n: 3}, recheck: null}\n")
    return cards, models, policies


def write_snapshots(directory: Path, n: int, size: int = 64) -> list[Path]:
    """``n`` distinct size x size JPEG snapshots (random blocks, so no two are near-duplicates)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        path = directory / f"snap{i:04d}.jpg"
        cv2.imwrite(str(path), img)
        out.append(path)
    return out


def write_many_frames(path: Path, frames: int, size: int = 64, fps: int = 30) -> Path:
    """A size x size H.264 clip of ``frames`` moving-pattern frames (2 s GOP)."""
    return write_video(path, pattern_frames(frames, size, size), fps=fps, codec="libx264", gop=2 * fps)


def worker_settings(broker: EmbeddedBroker, tmp: Path, dirs: tuple[Path, Path, Path], tag: str) -> Settings:
    """Service settings for the ceiling worker: its own topics, the tiny model, every frame of a clip sampled."""
    cards, models, policies = dirs
    s = Settings()
    return s.model_copy(update={
        "kafka": s.kafka.model_copy(update={
            "bootstrap_servers": broker.url, "app_id": f"ceiling-{tag}", "frame_refs_topic": f"refs-{tag}",
            "alerts_topic": f"alerts-{tag}", "dlq_topic": f"dlq-{tag}", "reviews_topic": f"reviews-{tag}",
            "callbacks_dlq_topic": f"cbdlq-{tag}", "producer_max_batch_size": 1, "partitions": 8,
            "session_timeout_s": 6.0, "heartbeat_interval_s": 1.0, "rebalance_timeout_s": 10.0}),
        "engines": s.engines.model_copy(update={"models_dir": models.resolve(), "cards_dir": cards.resolve()}),
        "rules": s.rules.model_copy(update={"policies_dir": policies.resolve(), "default_policy": "tiny",
                                            "write_evidence": False, "reload_interval_s": 0.0}),
        "decoder": s.decoder.model_copy(update={
            "file_roots": (tmp.resolve(),),
            "sampling": s.decoder.sampling.model_copy(update={"mode": "interval", "interval_s": 0.001})}),
        "worker": s.worker.model_copy(update={"web_port": free_port(), "id": f"ceiling-{tag}"}),
    })


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def counters(urls: str | list[str]) -> dict[str, float]:
    """livemod_* counters from /metrics, per label set (``name{k=v}``) and summed (``name``), over workers."""
    out: dict[str, float] = {}
    for url in [urls] if isinstance(urls, str) else urls:
        _add_counters(url, out)
    return out


def _add_counters(url: str, out: dict[str, float]) -> None:
    status, body = http_get(url)
    if status != 200:
        return
    for fam in text_string_to_metric_families(body.decode()):
        for sm in fam.samples:
            if not sm.name.startswith("livemod_") or not sm.name.endswith("_total"):
                continue
            out[sm.name] = out.get(sm.name, 0.0) + sm.value
            labels = ",".join(f"{k}={v}" for k, v in sorted(sm.labels.items()))
            key = f"{sm.name}{{{labels}}}"
            out[key] = out.get(key, 0.0) + sm.value


async def _publish(bootstrap: str, topic: str, refs: list[FrameRef]) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(topic, r.to_bytes(), key=r.stream_id.encode()) for r in refs]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def _phase(broker: EmbeddedBroker, s: Settings, urls: list[str], pids: list[int], refs: list[FrameRef],
           say: Callable[[str], None], what: str) -> dict[str, float]:
    """Publish ``refs`` at once and wait until the workers have handled them all; rates and CPU."""
    metrics = [f"{u}/metrics" for u in urls]

    def cpu_now() -> float:
        return sum(proc_cpu_s(pid) for pid in pids)

    before = counters(metrics)
    done0 = before.get("livemod_references_consumed_total", 0.0)
    cpu0, bcpu0, t0 = cpu_now(), proc_cpu_s(broker.proc.pid), time.perf_counter()  # type: ignore[union-attr]
    asyncio.run(_publish(broker.bootstrap, s.kafka.frame_refs_topic, refs))
    last = time.perf_counter()
    while True:
        now = counters(metrics)
        done = now.get("livemod_references_consumed_total", 0.0) - done0
        if done >= len(refs):
            break
        if time.perf_counter() - t0 > 300:
            raise RuntimeError(f"ceiling {what}: {done:.0f}/{len(refs)} references handled after 300 s")
        if time.perf_counter() - last > 5:
            say(f"  ceiling {what}: {done:.0f}/{len(refs)} references handled")
            last = time.perf_counter()
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    cpu, bcpu = cpu_now() - cpu0, proc_cpu_s(broker.proc.pid) - bcpu0  # type: ignore[union-attr]
    ok = (now.get("livemod_references_consumed_total{outcome=handled}", 0.0)
          - before.get("livemod_references_consumed_total{outcome=handled}", 0.0))
    frames = now.get("livemod_frames_sampled_total", 0.0) - before.get("livemod_frames_sampled_total", 0.0)
    return {"refs": len(refs), "ok": ok, "frames": frames, "seconds": elapsed, "refs_per_s": len(refs) / elapsed,
            "frames_per_s": frames / elapsed, "worker_cpu_s": cpu, "broker_cpu_s": bcpu,
            "worker_cpu_ms_per_ref": cpu / len(refs) * 1e3, "worker_cpu_ms_per_frame": cpu / max(frames, 1) * 1e3}


def run_ceiling(broker: EmbeddedBroker, tmp: Path, *, refs: int, clip_refs: int, clip_frames: int,
                say: Callable[[str], None], processes: int = 1) -> dict[str, dict[str, float]]:
    """``processes`` workers (one consumer group): ``refs`` snapshot references, then ``clip_refs``
    references to a ``clip_frames``-frame clip."""
    tmp.mkdir(parents=True, exist_ok=True)
    dirs = tiny_setup(tmp)
    say(f"  ceiling: writing 256 snapshots (64x64 JPEG) and a 64x64 clip of {clip_frames} frames ...")
    snaps = write_snapshots(tmp / "snaps", 256)
    clip = write_many_frames(tmp / "many.mp4", clip_frames)
    tag = f"{int(time.time() * 1000) % 10**9}"
    base = worker_settings(broker, tmp, dirs, tag)
    asyncio.run(create_topics(base))
    workers, urls, logs = [], [], []
    try:
        for i in range(processes):  # what `livemod worker --processes N` does: own id and web port each
            s = base if i == 0 else base.model_copy(update={"worker": base.worker.model_copy(update={
                "web_port": free_port(), "id": f"{base.worker.id}-{i}"})})
            logs.append(tmp / f"worker-{tag}-{i}.log")
            workers.append(start_worker(s, logs[-1]))
            urls.append(f"http://127.0.0.1:{s.worker.web_port}")
        t0 = time.perf_counter()
        for worker, url, log in zip(workers, urls, logs):
            while http_get(f"{url}/ready")[0] != 200:
                if worker.poll() is not None:
                    raise RuntimeError(f"ceiling worker died: {log.read_text()[-2000:]}")
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError(f"ceiling worker not ready after 120 s: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        say(f"  ceiling: {processes} worker process(es) ready after {time.perf_counter() - t0:.1f} s")
        time.sleep(2.0 + 2.0 * (processes - 1))  # let the group settle
        pids = [w.pid for w in workers]
        now = time.time()
        warm = [FrameRef(stream_id=f"w{i}", uri=str(snaps[i].resolve()), kind="image", seq=0, wall_start=now)
                for i in range(16 * processes)]
        _phase(broker, base, urls, pids, warm, say, "warm-up")
        streams = 64
        image_refs = [FrameRef(stream_id=f"cam{i % streams}", uri=str(snaps[i % len(snaps)].resolve()), kind="image",
                               seq=1 + i // streams, wall_start=now + i // streams) for i in range(refs)]
        say(f"  ceiling: {refs} image references over {streams} streams, {processes} worker process(es) ...")
        images = _phase(broker, base, urls, pids, image_refs, say, "images")
        clip_list = [FrameRef(stream_id=f"clip{i}", uri=str(clip.resolve()), seq=0, wall_start=now,
                              duration=clip_frames / 30) for i in range(clip_refs)]
        say(f"  ceiling: {clip_refs} references to the {clip_frames}-frame clip ...")
        frames = _phase(broker, base, urls, pids, clip_list, say, "frames")
        return {"images": images, "frames": frames}
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except Exception:  # noqa: BLE001 - a worker that ignores SIGTERM is killed
                worker.kill()
                worker.wait(10)
