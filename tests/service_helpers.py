"""What the service tests share: settings for a test worker, a worker process, publishing and reading topics."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from livemod.demo.broker import EmbeddedBroker, free_port
from livemod.demo.service import http_get, scrape, start_worker
from livemod.stream.records import FrameRef
from livemod.stream.settings import Settings

PARTITIONS = 4


def is_tansu(broker: Any) -> bool:
    """The bundled broker, whose workarounds apply to it alone."""
    return isinstance(broker, EmbeddedBroker)


def make_settings(broker: Any, tmp: Path, models_dir: Path, segments_root: Path, **over: Any) -> Settings:
    """Settings for a test worker on ``broker`` (Tansu or Apache Kafka) with topics of its own."""
    s = Settings()
    tag = uuid.uuid4().hex[:8]
    tansu = is_tansu(broker)
    kafka = s.kafka.model_copy(update={
        "bootstrap_servers": broker.url, "app_id": f"livemod-test-{tag}", "frame_refs_topic": f"refs-{tag}",
        "alerts_topic": f"alerts-{tag}", "dlq_topic": f"dlq-{tag}", "reviews_topic": f"reviews-{tag}",
        "callbacks_dlq_topic": f"cbdlq-{tag}", "partitions": PARTITIONS,
        # Tansu's end_offsets are wrong for multi-record batches (table recovery); it has no idempotent producer
        "producer_max_batch_size": 1 if tansu else None, "idempotent_producer": not tansu,
        "session_timeout_s": 4.0, "heartbeat_interval_s": 1.0, "rebalance_timeout_s": 10.0, **over.pop("kafka", {})})
    return s.model_copy(update={
        "kafka": kafka,
        "engines": s.engines.model_copy(update={"models_dir": models_dir, "threads": 1, "batch_wait_ms": 20}),
        "rules": s.rules.model_copy(update={"default_policy": "demo", "evidence_dir": tmp / "evidence",
                                            "review_dir": tmp / "review", **over.pop("rules", {})}),
        "decoder": s.decoder.model_copy(update={"file_roots": (segments_root, tmp)}),
        "worker": s.worker.model_copy(update={"web_port": free_port(), "retries": 1, "retry_backoff_s": 0.2,
                                              **over.pop("worker", {})}),
    })


class Running:
    """A worker process and its HTTP endpoint."""

    def __init__(self, settings: Settings, log: Path, worker_id: str) -> None:
        s = settings.model_copy(update={"worker": settings.worker.model_copy(update={"web_port": free_port(), "id": worker_id})})
        self.base = f"http://127.0.0.1:{s.worker.web_port}"
        self.log = log
        self.proc = start_worker(s, log)

    def wait_ready(self, timeout: float = 60) -> dict[str, Any]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker died: {self.log.read_text()[-3000:]}")
            status, body = http_get(f"{self.base}/ready")
            if status == 200:
                return json.loads(body)
            time.sleep(0.3)
        raise AssertionError(f"worker not ready: {self.log.read_text()[-3000:]}")

    def metric(self, name: str) -> float:
        return scrape(f"{self.base}/metrics").get(name, 0.0)

    def diagnose(self) -> str:
        """What a failing test should show: the worker's counters, its asyncio tasks and its log tail."""
        counters = {k: v for k, v in scrape(f"{self.base}/metrics").items() if k.startswith("livemod_")
                    and not k.endswith("_bucket")}
        tasks = http_get(f"{self.base}/debug/tasks")[1].decode(errors="replace")
        return f"\n--- counters {counters}\n--- tasks\n{tasks[-6000:]}\n--- log\n{self.log.read_text()[-4000:]}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


def publish(broker: EmbeddedBroker, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await p.start()
        try:
            for key, value in messages:
                await p.send_and_wait(topic, value, key=key)
        finally:
            await p.stop()

    asyncio.run(go())


def consume(broker: EmbeddedBroker, topic: str, until: Callable[[list[Any]], bool], timeout: float = 60) -> list[Any]:
    """Read a topic from the start until ``until(records)`` holds or the timeout passes."""

    async def go() -> list[Any]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False)
        await c.start()
        out: list[Any] = []
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout and not until(out):
                batch = await c.getmany(timeout_ms=300)
                for recs in batch.values():
                    out.extend(recs)
        finally:
            await c.stop()
        return out

    return asyncio.run(go())


def refs_for(stream_id: str, segs: list[Path], wall0: float, policy: str | None = None) -> list[tuple[bytes, bytes]]:
    return [(stream_id.encode(), FrameRef(stream_id=stream_id, uri=str(p), seq=i, wall_start=wall0 + i, duration=1.0,
                                          policy=policy).to_bytes()) for i, p in enumerate(segs)]


def partition_counts(broker: EmbeddedBroker, names: list[str]) -> dict[str, int]:
    async def go() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
        finally:
            await admin.close()

    return asyncio.run(go())


def committed_and_end(broker: EmbeddedBroker, group: str, topic: str) -> dict[int, tuple[int | None, int]]:
    """Partition -> (the group's committed offset, the end offset), read from the broker (no group join)."""

    async def go() -> dict[int, tuple[int | None, int]]:
        from aiokafka.structs import TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = await consumer.end_offsets(parts)
            return {tp.partition: (await consumer.committed(tp), ends[tp]) for tp in parts}
        finally:
            await consumer.stop()

    return asyncio.run(go())
