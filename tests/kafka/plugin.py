"""pytest plugin: the `kafka` marker and fixtures that run Apache Kafka 4.4 (KRaft) on loopback.

Load it from tests/conftest.py with `pytest_plugins = ("tests.kafka.plugin",)`. Tests marked `kafka`
(and every user of the fixtures) skip with the reason where Java 17+ or the jars (and Maven to fetch
them) are missing, and fail instead under CI=true. The JVMs start once per session; the function-scoped
fixtures restart any node an earlier test killed, so each test begins with a healthy cluster.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterator

import pytest

from tests.kafka.cluster import KafkaCluster, run_sync
from tests.kafka.fetch import LIBS, FetchError, fetch, fetch_problem, in_ci, java_problem

TIMINGS: dict[str, str] = {}


def report(key: str, line: str) -> None:
    """Keep a figure for the terminal summary's "Apache Kafka" section."""
    TIMINGS[key] = line


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kafka: needs Apache Kafka 4.4 (Java 17+, jars fetched with Maven); "
                                       "skipped with a reason where missing, fails under CI=true")


@functools.cache
def kafka_unavailable() -> str | None:
    """Why Apache Kafka cannot run here, or None (fetches the jars on first call if needed)."""
    problem = java_problem() or fetch_problem()
    if problem:
        return problem
    try:
        fetch(log=lambda msg: TIMINGS.setdefault("fetch", msg))
    except FetchError as exc:
        return f"fetching Apache Kafka's jars failed: {exc}"
    return None


def require_kafka() -> Path:
    """Skip (or, under CI=true, fail) the current test when Kafka cannot run; the jars' folder otherwise."""
    reason = kafka_unavailable()
    if reason:
        if in_ci():
            pytest.fail(f"{reason} (CI=true: the Kafka lane must run)", pytrace=False)
        pytest.skip(reason)
    return LIBS


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kafka") is not None:
        require_kafka()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "Apache Kafka")
        for key, line in TIMINGS.items():
            terminalreporter.write_line(f"{key}: {line}")


def _heal(cluster: KafkaCluster) -> None:
    """Restart nodes a previous test killed or stopped."""
    for node in cluster.nodes:
        if not node.alive:
            secs = run_sync(cluster.restart_node(node.node_id))
            TIMINGS[f"restart node {node.node_id}"] = f"{secs:.1f} s (before a test, after a fault)"


def _session_cluster(tmp_path_factory: pytest.TempPathFactory, name: str, size: int) -> Iterator[KafkaCluster]:
    libs = require_kafka()
    cluster = KafkaCluster(tmp_path_factory.mktemp(name), size, libs=libs, dump_archive=True)
    cluster.start()
    nodes = ", ".join(f"{n.started_s:.1f}" for n in cluster.nodes)
    TIMINGS[name] = (f"{size} node(s) ready in {cluster.start_s:.1f} s after format {cluster.format_s:.1f} s "
                     f"(per node exec to 'started': {nodes} s); bootstrap {cluster.bootstrap}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kafka_broker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    yield from _session_cluster(tmp_path_factory, "kafka-broker", 1)


@pytest.fixture(scope="session")
def kafka_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    yield from _session_cluster(tmp_path_factory, "kafka-cluster", 3)


@pytest.fixture
def kafka_broker(kafka_broker_session: KafkaCluster) -> KafkaCluster:
    """One Apache Kafka 4.4 KRaft node (broker+controller), replication factor 1, running."""
    _heal(kafka_broker_session)
    return kafka_broker_session


@pytest.fixture
def kafka_cluster(kafka_cluster_session: KafkaCluster) -> KafkaCluster:
    """Three Apache Kafka 4.4 KRaft nodes (each broker+controller), replication factor 3,
    min.insync.replicas 2, all running when the test starts."""
    _heal(kafka_cluster_session)
    return kafka_cluster_session
