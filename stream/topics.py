"""The service's topics: who creates them, with how many partitions, and the start-up check that they agree.

The worker creates every missing topic itself at start, with ``kafka.partitions`` partitions
(``livemod topics create`` does the same without starting a worker). The stream-state table is
co-partitioned with ``frame-refs``: both must have the same count, or a reference's state would
be saved to another worker's partition. A topic the broker auto-created (an ingest that
published before the first worker started) has the broker's default count instead; the check
below finds that before anything is consumed and says how to fix it.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any, Sequence

from livemod.core.errors import LivemodError
from livemod.stream.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)


class TopicMismatchError(LivemodError):
    """A topic the worker needs has a partition count that breaks co-partitioning."""

    reason = "topic_mismatch"


def changelog_topic(k: KafkaSettings) -> str:
    """The stream-state table's changelog topic (Faust names it after the app and the table)."""
    return f"{k.app_id}-stream-state-changelog"


def service_topics(settings: Settings) -> list[tuple[str, int]]:
    """Every topic a worker reads or writes, with the partition count it must have."""
    k = settings.kafka
    names = (k.frame_refs_topic, k.alerts_topic, k.dlq_topic, k.reviews_topic, k.callbacks_dlq_topic,
             changelog_topic(k))
    return [(t, k.partitions) for t in names]


def ssl_context(k: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL, from the CA file and the optional client certificate."""
    if k.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=str(k.ssl_cafile) if k.ssl_cafile else None)
    if k.ssl_certfile:
        ctx.load_cert_chain(str(k.ssl_certfile), str(k.ssl_keyfile) if k.ssl_keyfile else None)
    return ctx


def admin_kwargs(k: KafkaSettings) -> dict[str, Any]:
    """aiokafka client keyword arguments for the same cluster, TLS and SASL as the worker."""
    kw: dict[str, Any] = {"bootstrap_servers": bootstrap(k), "security_protocol": k.security_protocol}
    ctx = ssl_context(k)
    if ctx is not None:
        kw["ssl_context"] = ctx
    if k.security_protocol.startswith("SASL"):
        kw.update(sasl_mechanism=k.sasl_mechanism or "PLAIN", sasl_plain_username=k.sasl_username,
                  sasl_plain_password=k.sasl_password.get_secret_value() if k.sasl_password else None)
    return kw


def bootstrap(k: KafkaSettings) -> str:
    """host:port list without Faust's ``kafka://`` prefixes."""
    return ",".join(part.strip().removeprefix("kafka://") for part in k.bootstrap_servers.split(";") if part.strip())


async def create_topics(settings: Settings | KafkaSettings, names: Sequence[tuple[str, int]] | None = None, *,
                        replication: int | None = None) -> list[str]:
    """Create the missing ones among ``names`` (default: every service topic); returns those created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    k = settings.kafka if isinstance(settings, Settings) else settings
    if names is None:
        names = [(t, k.partitions) for t in (k.frame_refs_topic, k.alerts_topic, k.dlq_topic, k.reviews_topic,
                                              k.callbacks_dlq_topic, changelog_topic(k))]
    admin = AIOKafkaAdminClient(**admin_kwargs(k))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        rf = replication or k.replication_factor
        log_topic = changelog_topic(k)
        new = [NewTopic(name, n, rf, topic_configs={"cleanup.policy": "compact"} if name == log_topic else None)
               for name, n in names if name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in new]
    finally:
        await admin.close()


@dataclass(frozen=True)
class TopicReport:
    """What the start-up check found: partition counts by topic (None = missing)."""

    counts: dict[str, int | None]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def judge_topics(k: KafkaSettings, counts: dict[str, int | None]) -> TopicReport:
    """Compare what the broker has with what the worker needs (pure: the counts come from the broker).

    Only existing topics can disagree: the worker creates missing ones with ``kafka.partitions``.
    """
    refs, changelog = k.frame_refs_topic, changelog_topic(k)
    problems = []
    n_refs, n_log = counts.get(refs), counts.get(changelog)
    fix_alter = (f"kafka-topics.sh --bootstrap-server HOST:PORT --alter --topic {{topic}} --partitions "
                 f"{k.partitions}")
    if n_refs is not None and n_refs != k.partitions:
        how = (f"either set LIVEMOD_KAFKA__PARTITIONS={n_refs} on every worker"
               + (" (the state changelog does not exist yet, so nothing is lost)" if n_log is None else
                  f" and recreate {changelog} with {n_refs} partitions")
               + f", or add partitions: {fix_alter.format(topic=refs)} (streams then move between partitions)")
        problems.append(f"topic {refs} has {n_refs} partitions but kafka.partitions is {k.partitions} "
                        f"(its state table's changelog {changelog} must match it; a broker that auto-created "
                        f"{refs} before the first worker started gives it its own default): {how}. "
                        f"To avoid it, create the topics before ingest starts: `livemod topics create`.")
    if n_log is not None and n_log != k.partitions:
        problems.append(f"topic {changelog} has {n_log} partitions but kafka.partitions is {k.partitions}: "
                        f"set LIVEMOD_KAFKA__PARTITIONS={n_log} (and {refs} to match), or "
                        f"{fix_alter.format(topic=changelog)}")
    return TopicReport(counts=dict(counts), problems=tuple(problems))


async def topic_counts(settings: Settings) -> dict[str, int | None]:
    """Partition count of every service topic on the broker (None = missing)."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(**admin_kwargs(settings.kafka))
    await client.bootstrap()
    try:
        md = await client.fetch_all_metadata()
        counts: dict[str, int | None] = {}
        for name, _n in service_topics(settings):
            parts = md.partitions_for_topic(name)
            counts[name] = len(parts) if parts else None
        return counts
    finally:
        await client.close()


async def check_topics(settings: Settings, *, create: bool = True) -> TopicReport:
    """Check the service topics' partition counts; when they agree, create the missing ones (``create``).

    Nothing is created while they disagree, so the fix the report proposes still applies.
    """
    report = judge_topics(settings.kafka, await topic_counts(settings))
    if create and report.ok and any(n is None for n in report.counts.values()):
        await create_topics(settings)
        report = judge_topics(settings.kafka, await topic_counts(settings))
    return report
