"""Throughput and latency through the Faust agents on the embedded broker, with and without batching.

    .venv/bin/python benchmarks/service_load.py [--streams 8] [--segments 6] [--paced]

Starts Tansu, encodes --streams sample broadcasts (1280x720, 15 fps) as 2 s MPEG-TS segments
sampled once a second (interval mode) and measures, per run, references/s and sampled frames/s
through one worker process, and the p50/p99 of segment wall clock -> decision from the
worker's histogram. By default every reference is published at once (a backlog, so the worker
runs flat out: throughput); with --paced each segment's reference is published when the
segment would have finished recording, as a live ingest does (latency at a live load).
Three configurations: the baseline (max batch 1) and the cross-stream dynamic batcher (max
batch 16) without a wait for a fuller batch and with 10 ms (the default).
All use the same segments in one invocation, --repeats times each in alternating order
(A B C, C B A, ...), and the medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

from livemod.demo.synth import write_hls
from livemod.demo.broker import EmbeddedBroker, free_port
from livemod.demo.scene import Scene, broadcast_frames
from livemod.demo.service import quantile, scrape, start_worker, http_get
from livemod.stream.records import FrameRef
from livemod.stream.topics import create_topics
from livemod.stream.settings import Settings


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


BASELINE = "baseline: max batch 1"
CONFIGS = {  # label: (max batch, batcher wait in ms)
    BASELINE: (1, 0.0),
    "batcher: max 16, no wait": (16, 0.0),
    "batcher: max 16, 10 ms (the default)": (16, 10.0),
}


async def publish(bootstrap: str, topic: str, refs: list[FrameRef]) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(topic, r.to_bytes(), key=r.stream_id.encode()) for r in refs]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def publish_paced(bootstrap: str, topic: str, segs: dict[str, list[Path]], seg_s: float) -> None:
    """Publish segment i of every stream when it has been recorded: at start + (i + 1) x seg_s."""
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await p.start()
    try:
        start = time.time()
        for i in range(max(len(files) for files in segs.values())):
            await asyncio.sleep(max(0.0, start + (i + 1) * seg_s - time.time()))
            futs = [await p.send(topic, FrameRef(stream_id=sid, uri=str(files[i].resolve()), seq=i,
                                                 wall_start=start + i * seg_s, duration=seg_s).to_bytes(),
                                 key=sid.encode())
                    for sid, files in segs.items() if i < len(files)]
            await asyncio.gather(*futs)
    finally:
        await p.stop()


def run_once(broker: EmbeddedBroker, base: Settings, segs: dict[str, list[Path]], max_batch: int, wait_ms: float,
             tmp: Path, models_dir: Path, paced: bool = False) -> dict[str, float]:
    tag = f"b{max_batch}-w{wait_ms:g}-{int(time.time())}"
    s = base.model_copy(update={
        "kafka": base.kafka.model_copy(update={
            "bootstrap_servers": broker.url, "app_id": f"bench-{tag}", "frame_refs_topic": f"refs-{tag}",
            "alerts_topic": f"alerts-{tag}", "dlq_topic": f"dlq-{tag}", "reviews_topic": f"reviews-{tag}",
            "callbacks_dlq_topic": f"cbdlq-{tag}", "producer_max_batch_size": 1, "partitions": 8,
            "session_timeout_s": 6.0, "heartbeat_interval_s": 1.0, "rebalance_timeout_s": 10.0}),
        "engines": base.engines.model_copy(update={"models_dir": models_dir.resolve(), "max_batch": max_batch,
                                                "batch_wait_ms": wait_ms}),
        "rules": base.rules.model_copy(update={"default_policy": "demo", "write_evidence": False}),
        "decoder": base.decoder.model_copy(update={"file_roots": (tmp.resolve(),)}),
        "worker": base.worker.model_copy(update={"web_port": free_port(), "max_in_flight": 16, "id": tag}),
    })
    asyncio.run(create_topics(s))
    worker = start_worker(s, tmp / f"worker-{tag}.log")
    url = f"http://127.0.0.1:{s.worker.web_port}"
    try:
        while http_get(f"{url}/ready")[0] != 200:
            if worker.poll() is not None:
                raise SystemExit(f"worker died: {(tmp / f'worker-{tag}.log').read_text()[-2000:]}")
            time.sleep(0.3)
        time.sleep(2.0)  # let the group settle
        refs = []
        now = time.time()
        for sid, files in segs.items():
            for i, f in enumerate(files):  # as if the segments had just been recorded back to back
                wall = now - 2.0 * (len(files) - i)
                refs.append(FrameRef(stream_id=sid, uri=str(f.resolve()), seq=i, wall_start=wall, duration=2.0))
        t0 = time.perf_counter()
        if paced:
            say(f"  [max_batch={max_batch}] publishing {len(refs)} references in real time ...")
            asyncio.run(publish_paced(broker.bootstrap, s.kafka.frame_refs_topic, segs, 2.0))
        else:
            asyncio.run(publish(broker.bootstrap, s.kafka.frame_refs_topic, refs))
        last = 0.0
        ramp: tuple[float, float] | None = None  # (time, frames) once a tenth of the references are handled
        while True:
            m = scrape(f"{url}/metrics")
            done = m.get("livemod_references_consumed_total", 0)
            if ramp is None and done >= max(1, len(refs) // 10):
                ramp = (time.perf_counter(), m.get("livemod_frames_sampled_total", 0))
            if done >= len(refs):
                break
            if time.perf_counter() - t0 > 600:
                raise SystemExit("timed out")
            if time.perf_counter() - last > 5:
                say(f"  [max_batch={max_batch}] {done:.0f}/{len(refs)} references handled")
                last = time.perf_counter()
            time.sleep(0.1)
        t_end = time.perf_counter()
        elapsed = t_end - t0
        e2e = m.get("livemod_end_to_end_seconds_bucket", {})
        frames = m.get("livemod_frames_sampled_total", 0)
        batches = m.get("livemod_batch_size_count", 0)
        images = m.get("livemod_batch_size_sum", 0)
        return {"refs": len(refs), "seconds": elapsed, "refs_per_s": len(refs) / elapsed,
                "frames_per_s": frames / elapsed,
                # steady state: from a tenth of the references handled to the last (no group join, first fetch,
                # first inference warm-up)
                "steady_frames_per_s": (frames - ramp[1]) / max(t_end - ramp[0], 1e-9) if ramp else float("nan"),
                "mean_batch": images / max(batches, 1),
                "p50": quantile(e2e, 0.5) or float("nan"), "p99": quantile(e2e, 0.99) or float("nan")}
    finally:
        worker.terminate()
        worker.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--segments", type=int, default=6)
    ap.add_argument("--models-dir", default=".cache/livemod/models")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each configuration (medians are reported)")
    ap.add_argument("--paced", action="store_true", help="publish each reference when its segment is recorded")
    args = ap.parse_args()
    say(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="livemod-load-"))
    segs: dict[str, list[Path]] = {}
    say(f"encoding {args.streams} streams x {args.segments} segments of 2 s (1280x720, 15 fps) ...")
    bgs = ["hopper", "astronaut", "rocket", "coffee"]
    for i in range(args.streams):
        scene = Scene(seconds=2.0 * args.segments, background=bgs[i % 4],
                      cat_from=4.0 if i % 3 == 0 else 1e9, cat_to=9.0 if i % 3 == 0 else 1e9)
        pl = write_hls(tmp / f"s{i}", broadcast_frames(scene), fps=15, segment_seconds=2.0)
        segs[f"s{i}"] = sorted(pl.parent.glob("seg*.ts"))
    base = Settings()
    base = base.model_copy(update={"decoder": base.decoder.model_copy(update={
        "sampling": base.decoder.sampling.model_copy(update={"mode": "interval", "interval_s": 1.0})})})
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in CONFIGS}
    with EmbeddedBroker(log_file=tmp / "broker.log") as broker:
        for r in range(args.repeats):
            order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))  # no configuration always goes first
            for label in order:
                mb, wait_ms = CONFIGS[label]
                say(f"run {r + 1}/{args.repeats}: {label} ...")
                runs[label].append(run_once(broker, base, segs, mb, wait_ms, tmp, Path(args.models_dir),
                                            paced=args.paced))
                say("  " + json.dumps({k: round(v, 3) for k, v in runs[label][-1].items()}))
    results = {label: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for label, rs in runs.items()}
    print(f"Machine: {machine()}")
    print(f"{args.streams} streams x {args.segments} segments of 2 s, "
          + ("published in real time (live pacing)" if args.paced else "published at once (backlog)")
          + f"; medians of {args.repeats} runs per configuration, in alternating order\n")
    print("| run | references | refs/s | sampled frames/s | mean engine batch | p50 segment->decision s | p99 s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['refs']:.0f} | {r['refs_per_s']:.2f} | {r['frames_per_s']:.2f} | "
              f"{r['mean_batch']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} |")
    base_fps = results[BASELINE]["frames_per_s"]
    print()
    for label, r in results.items():
        if label != BASELINE:
            print(f"throughput ratio ({label} / baseline): {r['frames_per_s'] / base_fps:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
