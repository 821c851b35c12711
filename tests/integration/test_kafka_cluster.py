"""Apache Kafka 4.4 (KRaft) with real clients: aiokafka on one broker and on a 3-node cluster,
idempotent and transactional producers, a partition leader SIGKILLed mid-produce and restarted, and a
bare faust-streaming app: processing_guarantee="exactly_once" across a worker crash, and failover times.

Figures go to the terminal summary ("Apache Kafka" section) and to stdout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.kafka.cluster import KafkaCluster
from tests.kafka.failover import FaustRecoveryStall, Outputs, Scenario, measure_failover, wait_for
from tests.kafka.plugin import report

pytestmark = pytest.mark.kafka


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["broker", "cluster"])
def kafka(request: pytest.FixtureRequest) -> KafkaCluster:
    """The single broker, then the 3-node cluster."""
    return request.getfixturevalue(f"kafka_{request.param}")


async def read_all(bootstrap: str, topic: str, partitions: int, *, isolation_level: str = "read_uncommitted",
                   timeout: float = 30.0) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every record of `topic` up to its end offsets (the last stable offsets under read_committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation_level,
                                enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        out: list[tuple[int, int, bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: read {len(out)} records, not at the end offsets {end} in {timeout} s")
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                out.extend((m.partition, m.offset, m.key, m.value) for m in msgs)
        return out
    finally:
        await consumer.stop()


def test_idempotent_produce_then_consume_in_key_order(kafka: KafkaCluster) -> None:
    async def go() -> None:
        topic = unique("refs")
        await kafka.create_topic(topic, 3)
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        t0 = time.monotonic()
        try:
            futures = [await producer.send(topic, f"{i}".encode(), key=f"k{i % 7}".encode()) for i in range(600)]
            metas = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        produce_s = time.monotonic() - t0
        assert len({(m.partition, m.offset) for m in metas}) == 600
        records = await read_all(kafka.bootstrap, topic, 3)
        by_key: dict[bytes, list[int]] = defaultdict(list)
        for _, _, key, value in sorted(records):
            by_key[key].append(int(value))
        assert sorted(v for vs in by_key.values() for v in vs) == list(range(600))
        assert all(vs == sorted(vs) for vs in by_key.values()), "per-key order kept"
        report(f"produce/consume ({kafka.size} node)", f"600 idempotent acks=all sends in {produce_s:.2f} s")

    asyncio.run(go())


def test_transactions_commit_and_abort(kafka: KafkaCluster) -> None:
    async def go() -> None:
        topic = unique("txn")
        await kafka.create_topic(topic, 2)
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=unique("tx"))
        await producer.start()
        try:
            for batch, commit in (("a", True), ("b", False), ("c", True)):
                await producer.begin_transaction()
                for i in range(50):
                    await producer.send(topic, f"{batch}{i}".encode(), key=f"{i % 4}".encode())
                if commit:
                    await producer.commit_transaction()
                else:
                    await producer.abort_transaction()
        finally:
            await producer.stop()
        committed = [v.decode() for *_, v in await read_all(kafka.bootstrap, topic, 2, isolation_level="read_committed")]
        everything = [v.decode() for *_, v in await read_all(kafka.bootstrap, topic, 2)]
        assert Counter(v[0] for v in committed) == {"a": 50, "c": 50}
        assert Counter(v[0] for v in everything) == {"a": 50, "b": 50, "c": 50}

    asyncio.run(go())


def test_leader_killed_mid_produce_loses_no_acknowledged_record(kafka_cluster: KafkaCluster) -> None:
    """RF 3, min.insync.replicas 2, acks=all: SIGKILL partition 0's leader a third of the way in."""
    cluster = kafka_cluster

    async def go() -> None:
        topic = unique("frame-refs")
        await cluster.create_topic(topic, 3)
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True,
                                    request_timeout_ms=15000, retry_backoff_ms=100, linger_ms=2)
        await producer.start()
        acked: dict[str, tuple[int, float]] = {}
        failed: list[str] = []

        def done(value: str, fut: asyncio.Future) -> None:
            if fut.exception() is None:
                acked[value] = (fut.result().partition, time.monotonic())
            else:
                failed.append(f"{value}: {fut.exception()!r}")

        n, victim, t_kill = 1500, None, 0.0
        try:
            for i in range(n):
                if i == n // 3:
                    victim = await cluster.kill_leader(topic, 0)
                    t_kill = time.monotonic()
                fut = await producer.send(topic, f"{i}".encode(), partition=i % 3)
                fut.add_done_callback(lambda f, v=f"{i}": done(v, f))
                await asyncio.sleep(0.002)
            await producer.flush()
        finally:
            await producer.stop()
        assert victim is not None
        after = await cluster.describe(topic)
        new_leader = after[0]["leader"]
        resumed = min((t for p, t in acked.values() if p == 0 and t > t_kill), default=float("nan"))
        records = await read_all(cluster.bootstrap, topic, 3)
        seen = Counter(v.decode() for *_, v in records)
        lost = [v for v in acked if v not in seen]
        dupes = sum(c - 1 for c in seen.values() if c > 1)
        t0 = time.monotonic()
        restart_s = await cluster.restart_node(victim.node_id)
        await cluster.wait_isr(topic)
        isr_s = time.monotonic() - t0
        line = (f"killed node {victim.node_id} (leader of p0) after {n // 3} sends; new leader {new_leader}, "
                f"ISR then {after[0]['isr']}; p0 acks resumed {resumed - t_kill:.1f} s after the kill; "
                f"acked {len(acked)}/{n}, failed {len(failed)}, lost {len(lost)}, duplicates {dupes}; "
                f"restart {restart_s:.1f} s, ISR full again {isr_s:.1f} s after restart")
        report("leader SIGKILL mid-produce", line)
        print(line)
        assert not lost, f"acknowledged records lost: {lost[:10]}"
        assert dupes == 0, "the idempotent producer wrote duplicates"
        assert new_leader not in (-1, victim.node_id)

    asyncio.run(go())


def test_faust_exactly_once_uses_transactions_on_kafka_4_4(kafka_broker: KafkaCluster, tmp_path) -> None:
    """processing_guarantee="exactly_once" runs on Apache Kafka 4.4 with faust-streaming 0.15.3 and
    aiokafka 0.14: every input comes out once (read_committed) and the table's changelog is written in
    transactions (commit markers take offsets). What a worker SIGKILL does to it is measured in
    benchmarks/failover.py, not asserted here: duplicates and losses were both seen (see the README)."""
    sc = Scenario(kafka_broker, tmp_path, session_s=6, heartbeat_s=1, guarantee="exactly_once",
                  copartition=True, subscribe_sink=True)

    async def go() -> None:
        await sc.create_topics()
        worker = sc.start_worker("A")
        try:
            async with Outputs(kafka_broker.bootstrap, sc.dst) as out:
                producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, enable_idempotence=True)
                await producer.start()
                try:
                    for i in range(200):
                        await producer.send(sc.src, f"p{i % 4}-{i}".encode(), key=f"k{i % 4}".encode(), partition=i % 4)
                    await producer.flush()
                finally:
                    await producer.stop()
                t0 = time.monotonic()
                await wait_for(lambda: len(out.records) >= 200, 60, "200 outputs", [worker])
                await asyncio.sleep(1.0)
                values = [r["value"] for _, r in out.records]
                assert sorted(values) == sorted(f"p{i % 4}-{i}" for i in range(200))
            changelog = await read_all(kafka_broker.bootstrap, f"{sc.app_id}-counts-changelog", sc.partitions)
            consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
            await consumer.start()
            try:
                ends = await consumer.end_offsets([TopicPartition(f"{sc.app_id}-counts-changelog", p)
                                                   for p in range(sc.partitions)])
            finally:
                await consumer.stop()
            markers = sum(ends.values()) - len(changelog)
            line = (f"200 inputs -> 200 outputs read_committed in {time.monotonic() - t0:.1f} s; changelog "
                    f"{len(changelog)} records + {markers} transaction markers")
            report("faust exactly_once (no fault)", line)
            print(line)
            assert markers > 0, "the changelog was not written in transactions"
        finally:
            worker.kill()

    asyncio.run(go())


@pytest.mark.parametrize(("mode", "session_s", "heartbeat_s", "static"), [
    ("takeover", 6, 1, False),
    ("replace", 6, 1, True),
], ids=["takeover-6s-1s", "static-replace-6s-1s"])
def test_faust_failover_seconds(kafka_broker: KafkaCluster, tmp_path, mode: str, session_s: float,
                                heartbeat_s: float, static: bool) -> None:
    """Two Faust workers share 4 partitions; one is SIGKILLed. takeover: the other takes its partitions;
    static-replace: a new process starts at once under the dead one's group.instance.id.
    (benchmarks/failover.py measures more settings, with medians.)"""
    sc = Scenario(kafka_broker, tmp_path, session_s=session_s, heartbeat_s=heartbeat_s, static=static)
    try:
        r = asyncio.run(measure_failover(sc, mode=mode, timeout=45))
    except FaustRecoveryStall as exc:  # upstream bug, not the broker's nor this harness's: see its docstring
        pytest.xfail(f"faust-streaming 0.15.3 table recovery stalled: {str(exc).splitlines()[0]}")
    line = (f"partitions {r['partitions_of_killed']} of the killed worker consumed again by {r['by']} after "
            f"{r['failover_s']} s (first {r['first_s']} s); duplicates {r['duplicates']}; "
            f"a worker's start-up to first output {r['ready_s']} s")
    report(f"faust failover {mode} session {session_s}s heartbeat {heartbeat_s}s static={static}", line)
    print(line)
    assert r["failover_s"] < 15.0, r
