"""Apache Kafka in KRaft mode on loopback for tests: one combined broker+controller, or a 3-node quorum.

Each node is a real `kafka.Kafka` JVM (combined `broker,controller` roles) with a small heap and
start-up-friendly flags, its own temp log dir and free loopback ports. Nodes can be SIGKILLed and
restarted on the same ports and data, so fault tests see what a production cluster would.

Blocking calls (`start`, `stop`) are for fixtures; tests running in an event loop use the async ones
(`wait_ready`, `restart_node`, `describe`, `leader`, `kill_leader`, `wait_isr`, `create_topic`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Coroutine, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from tests.kafka.fetch import CACHE, KAFKA_VERSION, LIBS

T = TypeVar("T")
LOG4J = Path(__file__).with_name("log4j2.xml")

# Start-up over throughput: C1 only, serial GC, class-data sharing, a small heap (3 JVMs fit easily).
JVM_FLAGS = (
    "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:CICompilerCount=1",
    "-Xshare:auto", "-XX:-UsePerfData", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)

# Broker settings for tests: few threads (2 shared cores), small internal topics, quick fencing of a
# dead node (so a killed leader is replaced in ~3 s), consumer session timeouts down to 1 s allowed.
BASE_CONFIG: dict[str, str] = {
    "process.roles": "broker,controller",
    "controller.listener.names": "CONTROLLER",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "num.partitions": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.num.partitions": "4",
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "1000",
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "num.replica.fetchers": "1",
    "log.cleaner.dedupe.buffer.size": str(8 * 2**20),
    "log.cleaner.threads": "1",
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
    "replica.lag.time.max.ms": "10000",
    "unclean.leader.election.enable": "false",
    "auto.leader.rebalance.enable": "false",
}


def cds_archive() -> Path:
    """Where the class-data-sharing archive of a Kafka JVM lives (one per Kafka version and Java build).

    A node started with `dump_archive=True` writes it when it exits after SIGTERM; later JVMs map it
    and start about 1.5x faster (measured 3.2-4.7 s -> 2.2-2.6 s to "Kafka Server started" here).
    """
    java = shutil.which("java") or "java"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
        build = out.stderr + out.stdout
    except (OSError, subprocess.TimeoutExpired):
        build = java
    tag = base64.urlsafe_b64encode(hashlib.sha256(build.encode()).digest()[:6]).decode()
    return CACHE / f"kafka-{KAFKA_VERSION}-{tag}.jsa"


class KafkaStartError(RuntimeError):
    """A node did not start or the cluster did not answer in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_id() -> str:
    """A random KRaft cluster id (Kafka's Uuid: 16 bytes, URL-safe base64, no padding)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop runs in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, asyncio.run(coro)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box.append((False, exc))

    t = threading.Thread(target=target)
    t.start()
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


@dataclass
class KafkaNode:
    """One combined broker+controller JVM."""

    node_id: int
    port: int
    controller_port: int
    home: Path
    libs: Path
    archive: Path | None = None  # the CDS archive to map (if it exists) or to write at exit (dump_archive)
    dump_archive: bool = False
    proc: subprocess.Popen | None = None
    started_s: float | None = None  # seconds from exec to "Kafka Server started", last start

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def java(self, main: str, *args: str) -> list[str]:
        cds: list[str] = []
        if self.archive is not None and self.archive.is_file():
            cds = [f"-XX:SharedArchiveFile={self.archive}"]
        elif self.archive is not None and self.dump_archive and main == "kafka.Kafka":
            cds = [f"-XX:ArchiveClassesAtExit={self._dump_path()}"]
        return [shutil.which("java") or "java", *JVM_FLAGS, *cds, f"-Dlog4j2.configurationFile={LOG4J}",
                f"-Dkafka.logs.dir={self.home}", "-cp", f"{self.libs}/*", main, *args]

    def _dump_path(self) -> Path:
        return self.home / "classes.jsa"

    def _keep_archive(self) -> None:
        """After an exit: move a freshly written archive into the cache (atomic; first one wins)."""
        dumped = self._dump_path()
        if self.archive is None or not dumped.is_file():
            return
        if self.proc is not None and self.proc.returncode in (0, 143) and not self.archive.exists():
            self.archive.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.archive.with_name(f"{self.archive.name}.{os.getpid()}.partial")
            shutil.move(dumped, tmp)
            os.replace(tmp, self.archive)
        dumped.unlink(missing_ok=True)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def start(self) -> None:
        """Exec the JVM (returns at once; `wait_started` waits)."""
        if self.alive:
            raise KafkaStartError(f"node {self.node_id} is already running")
        self._mark = self.log.stat().st_size if self.log.exists() else 0
        self._t0 = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.java("kafka.Kafka", str(self.properties)), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def wait_started(self, timeout: float = 60.0) -> float:
        """Block until this start's log says "Kafka Server started"; seconds since exec."""
        deadline = self._t0 + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise KafkaStartError(f"node {self.node_id} exited with {code}:\n{self.log_tail()}")
            with open(self.log, "rb") as f:
                f.seek(self._mark)
                if b"Kafka Server started" in f.read():
                    self.started_s = time.monotonic() - self._t0
                    return self.started_s
            time.sleep(0.05)
        raise KafkaStartError(f"node {self.node_id} not started within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (controlled shutdown), then SIGKILL after `timeout` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout + (30.0 if self.dump_archive else 0.0))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._keep_archive()

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown, as in a crash or a lost machine."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._keep_archive()


class KafkaCluster:
    """`size` combined KRaft nodes; size 1 formats `--standalone`, more use a static controller quorum.

    With `cds`, the JVMs map the class-data-sharing archive (`cds_archive()`) when it exists; with
    `dump_archive` (single node only), the node writes it at its SIGTERM exit when it does not exist yet.

    `bootstrap` is the aiokafka form (`host:port,host:port`), `url` the Faust form (`kafka://...;...`).
    """

    def __init__(self, root: Path, size: int = 1, *, libs: Path = LIBS, replication_factor: int | None = None,
                 min_insync_replicas: int | None = None, config: dict[str, str] | None = None,
                 cds: bool = True, dump_archive: bool = False) -> None:
        self.root = Path(root)
        self.size = size
        self.libs = libs
        self.replication_factor = replication_factor or min(size, 3)
        self.min_insync_replicas = min_insync_replicas or (2 if self.replication_factor >= 3 else 1)
        self.extra = dict(config or {})
        self.cluster_id = cluster_id()
        archive = cds_archive() if cds else None
        self.nodes = [KafkaNode(i, free_port(), free_port(), self.root / f"node{i}", libs, archive)
                      for i in range(1, size + 1)]
        # a single node writes the class-data-sharing archive at its exit, if there is none yet (not a
        # node of a quorum: stopped together, those wait for a lost quorum and end up SIGKILLed)
        self.nodes[0].dump_archive = dump_archive and size == 1 and archive is not None and not archive.exists()
        self.start_s: float | None = None  # exec-to-ready seconds of the whole cluster, last start
        self.format_s: float | None = None

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def url(self) -> str:
        return ";".join(f"kafka://{n.bootstrap}" for n in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def _config(self, node: KafkaNode) -> dict[str, str]:
        rf, isr = str(self.replication_factor), str(self.min_insync_replicas)
        cfg = {
            **BASE_CONFIG,
            "node.id": str(node.node_id),
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "log.dirs": str(node.home / "data"),
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
        }
        if self.size == 1:
            cfg["controller.quorum.bootstrap.servers"] = f"127.0.0.1:{node.controller_port}"
        else:
            cfg["controller.quorum.voters"] = ",".join(
                f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        cfg.update(self.extra)
        return cfg

    def _format(self, node: KafkaNode) -> None:
        node.home.mkdir(parents=True, exist_ok=True)
        node.properties.write_text("".join(f"{k}={v}\n" for k, v in self._config(node).items()))
        args = ["format", "-t", self.cluster_id, "-c", str(node.properties)]
        if self.size == 1:
            args.append("--standalone")
        with open(node.log, "ab") as out:
            done = subprocess.run(node.java("kafka.tools.StorageTool", *args), stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)
        if done.returncode != 0:
            raise KafkaStartError(f"formatting node {node.node_id} failed:\n{node.log_tail()}")

    def start(self, timeout: float = 120.0) -> "KafkaCluster":
        """Format every node's log dir (in parallel), start all JVMs, wait until metadata lists them all."""
        t0 = time.monotonic()
        with ThreadPoolExecutor(self.size) as pool:
            list(pool.map(self._format, self.nodes))
        self.format_s = time.monotonic() - t0
        t1 = time.monotonic()
        try:
            for n in self.nodes:
                n.start()
            for n in self.nodes:
                n.wait_started(timeout)
            run_sync(self.wait_ready(timeout=max(5.0, timeout - (time.monotonic() - t1))))
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - t1
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every node at once, SIGKILL those still running after `timeout` seconds.

        (Stopped together, the last controllers lose their quorum and wait for it: hence the short
        default before SIGKILL; the data is temporary.)
        """
        for n in self.nodes:
            if n.alive:
                n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            n.stop(max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> "KafkaCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- metadata ---------------------------------------------------------------------------------
    def _admin(self) -> AIOKafkaAdminClient:
        live = ",".join(n.bootstrap for n in self.nodes if n.alive) or self.bootstrap
        return AIOKafkaAdminClient(bootstrap_servers=live, request_timeout_ms=5000)

    async def _with_admin(self, fn: Any) -> Any:
        admin = self._admin()
        await admin.start()
        try:
            return await fn(admin)
        finally:
            await admin.close()

    async def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Until metadata lists every running node as a broker and names a controller."""
        want = {n.node_id for n in self.nodes if n.alive}
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                meta = await self._with_admin(lambda a: a.describe_cluster())
                brokers = {b["node_id"] for b in meta["brokers"]}
                if want <= brokers and meta.get("controller_id", -1) >= 0:
                    return meta
                last = meta
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                last = exc
            await asyncio.sleep(0.2)
        raise KafkaStartError(f"cluster not ready in {timeout:.0f} s (want brokers {sorted(want)}): {last!r}")

    async def describe(self, topic: str) -> list[dict[str, Any]]:
        """Per partition (by index): `partition`, `leader` (node id, -1 if none), `replicas`, `isr`."""
        topics = await self._with_admin(lambda a: a.describe_topics([topic]))
        parts = topics[0]["partitions"] if topics else []
        return sorted(({"partition": p["partition"], "leader": p["leader"], "replicas": list(p["replicas"]),
                        "isr": list(p["isr"])} for p in parts), key=lambda p: p["partition"])

    async def leader(self, topic: str, partition: int, timeout: float = 30.0) -> int:
        """The node id leading `topic`/`partition` (waits while there is none)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                parts = await self.describe(topic)
                if partition < len(parts) and parts[partition]["leader"] >= 0:
                    return parts[partition]["leader"]
            except (KafkaError, OSError, asyncio.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise KafkaStartError(f"no leader for {topic}[{partition}] within {timeout:.0f} s")
            await asyncio.sleep(0.2)

    async def wait_isr(self, topic: str, size: int | None = None, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Until every partition of `topic` has `size` (default: its replica count) replicas in sync."""
        deadline = time.monotonic() + timeout
        parts: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                parts = await self.describe(topic)
                if parts and all(len(p["isr"]) >= (size or len(p["replicas"])) for p in parts):
                    return parts
            except (KafkaError, OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2)
        raise KafkaStartError(f"{topic} not in sync within {timeout:.0f} s: {parts}")

    async def create_topic(self, name: str, partitions: int = 1, replication_factor: int | None = None,
                           config: dict[str, str] | None = None) -> None:
        """Create a topic and wait until all its replicas are in sync."""
        topic = NewTopic(name, partitions, replication_factor or self.replication_factor, topic_configs=config or {})
        await self._with_admin(lambda a: a.create_topics([topic]))
        await self.wait_isr(name)

    # --- faults -----------------------------------------------------------------------------------
    def kill_node(self, node_id: int) -> KafkaNode:
        """SIGKILL one node; returns it."""
        node = self.node(node_id)
        node.kill()
        return node

    async def kill_leader(self, topic: str, partition: int) -> KafkaNode:
        """SIGKILL the node leading `topic`/`partition`; returns it."""
        return self.kill_node(await self.leader(topic, partition))

    async def restart_node(self, node_id: int, timeout: float = 60.0) -> float:
        """(Re)start a stopped or killed node on its ports and data; seconds until metadata lists it again."""
        node = self.node(node_id)
        node.stop()
        t0 = time.monotonic()
        node.start()
        await asyncio.to_thread(node.wait_started, timeout)
        await self.wait_ready(timeout)
        return time.monotonic() - t0


def describe_env() -> str:
    """The Java in use, for reports."""
    java = shutil.which("java") or "java"
    out = subprocess.run([java, "-version"], capture_output=True, text=True, env={**os.environ})
    return (out.stderr or out.stdout).splitlines()[0] if (out.stderr or out.stdout) else java
