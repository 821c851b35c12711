"""Failover of bare faust-streaming workers on Apache Kafka 4.4 (KRaft, loopback): medians over runs.

Two workers share a 4-partition topic; one is SIGKILLed. "takeover": the survivor takes its
partitions (the group waits out the dead member's session). "replace": a new process starts at once
in the dead one's place (with static membership, under its group.instance.id). Also: a worker
SIGKILLed mid-stream and replaced, per processing guarantee: duplicates among read_committed outputs.

    python benchmarks/failover.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import machine  # noqa: E402
from tests.kafka.cluster import KafkaCluster  # noqa: E402
from tests.kafka.failover import Scenario, measure_crash_recovery, measure_failover  # noqa: E402
from tests.kafka.fetch import fetch  # noqa: E402

# (label, mode, session_s, heartbeat_s, static, standby replicas)
FAILOVER = [
    ("takeover 3s/1s", "takeover", 3, 1, False, 1),
    ("takeover 6s/1s", "takeover", 6, 1, False, 1),
    ("takeover 10s/3s", "takeover", 10, 3, False, 1),
    ("takeover 6s/1s no standby", "takeover", 6, 1, False, 0),
    ("replace 6s/1s dynamic", "replace", 6, 1, False, 1),
    ("replace 6s/1s static", "replace", 6, 1, True, 1),
]
# (label, guarantee, outputs co-partitioned with inputs, the app also consumes its output topic)
CRASH = [
    ("exactly_once, sink consumed, co-partitioned", "exactly_once", True, True),
    ("exactly_once, sink consumed, by key hash", "exactly_once", False, True),
    ("exactly_once, sink not consumed", "exactly_once", True, False),
    ("at_least_once", "at_least_once", True, False),
]


def say(msg: str) -> None:
    print(msg, flush=True)


async def run(cluster: KafkaCluster, work: Path, runs: int, only: str | None) -> None:
    say("\n| failover (SIGKILL one of two workers) | median s | runs (s) | failed runs |\n|---|---|---|---|")
    for label, mode, session, heartbeat, static, standby in FAILOVER:
        if only and only not in label:
            continue
        times, errors = [], 0
        for _ in range(runs):
            sc = Scenario(cluster, work, session_s=session, heartbeat_s=heartbeat, static=static, standby=standby)
            try:
                r = await measure_failover(sc, mode=mode, timeout=45)
                times.append(r["failover_s"])
            except AssertionError as exc:
                errors += 1
                say(f"  {label}: run failed: {str(exc).splitlines()[0]}")
        med = f"{statistics.median(times):.1f}" if times else "-"
        say(f"| {label} | {med} | {', '.join(f'{t:.1f}' for t in times)} | {errors}/{runs} |")
    say("\n| worker SIGKILL + replacement (session 6 s) | inputs | outputs | duplicates | lost | table counts exact "
        "| replacement's first output after the kill (s) |\n|---|---|---|---|---|---|---|")
    for label, guarantee, copart, sub in CRASH:
        if only and only not in label:
            continue
        for _ in range(runs):
            sc = Scenario(cluster, work, session_s=6, heartbeat_s=1, guarantee=guarantee, copartition=copart,
                          subscribe_sink=sub)
            try:
                r = await measure_crash_recovery(sc, timeout=60)
                say(f"| {label} | {r['sent']} | {r['outputs']} | {r['duplicates']} | {r['lost']} "
                    f"| {r['counts_exact']} | {r['gap_s']} |")
            except AssertionError as exc:
                say(f"| {label} | run failed: {str(exc).splitlines()[0]} | | | | | |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", help="run the rows whose label contains this text")
    args = ap.parse_args()
    fetch(log=say)
    say(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        t0 = time.monotonic()
        with KafkaCluster(Path(tmp) / "kafka", 1, dump_archive=True) as cluster:
            say(f"Apache Kafka 4.4.0, 1 KRaft node, ready in {cluster.start_s:.1f} s; faust-streaming workers as processes")
            asyncio.run(run(cluster, Path(tmp) / "workers", args.runs, args.only))
        say(f"\ntotal {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
