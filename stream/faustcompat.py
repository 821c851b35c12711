"""Everything livemod does with faust-streaming's internals, in one place, checked against one version range.

What we rely on, and why (faust-streaming 0.15.3, read in ``faust/transport/consumer.py``):
- ``Consumer._committed_offset[tp]``: the last committed offset of a partition. Faust has no
  public accessor; the ledgers start each partition there after a rebalance, and lag is
  computed from it.
- ``Consumer._add_gap(tp, from, to)`` / ``Consumer._gap``: the fetch loop records a hole when an
  offset arrives past the last one read, and ``_new_offset`` then commits across it. After the
  fetch loop dropped records (flow stopped, a paused partition) that commits references nobody
  handled: upstream issue #606, fix in PR #707 (open). ``GapGuard`` switches the automatic gap
  off for our source topics and hands Faust only holes our ledgers confirmed.
- ``Consumer._new_offset`` commits the highest contiguous acked offset, but its check for a
  hole at the head is off by one (an unacked offset right after the committed one is not
  seen), so acks must go out strictly in order (``offsets.OrderedAcks`` does).
- ``stream_wait_empty``: Faust waits, with no timeout, for every unacked message before a
  rebalance and at shutdown. We turn it off and bound the wait ourselves (``Worker``).
tests/unit/stream/test_stream_faustcompat.py pins each of these on the installed Faust, so an
upgrade that changes them fails a test instead of losing references.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import faust
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from livemod.core.errors import ConfigError

SUPPORTED = ((0, 15, 3), (0, 16, 0))  # [low, high): keep in step with pyproject's faust-streaming pin


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def check_version(version: str = faust.__version__) -> None:
    """Refuse a faust-streaming outside the range whose internals this module was written for.

    Raises:
        ConfigError: with the installed and the supported versions.
    """
    low, high = SUPPORTED
    if not low <= _version(version) < high:
        raise ConfigError(
            f"faust-streaming {version} is not supported: livemod relies on its offset internals "
            f"(see livemod.stream.faustcompat) and was tested with >= {'.'.join(map(str, low))}, "
            f"< {'.'.join(map(str, high))}", reason="bad_config")


check_version()


class App(faust.App):
    """faust.App that declares our topics before subscribing and signals when a rebalance has ended."""

    livemod_on_rebalance_end: Callable[[], Awaitable[None]] | None = None
    livemod_topics: tuple[Any, ...] = ()
    livemod_rebalanced = False  # True once the first group join (and table recovery) has ended

    async def on_start(self) -> None:
        """Create missing topics with our partition counts before the consumer subscribes.

        Faust declares only its internal topics (the table changelog); a source topic that the
        broker auto-created would get the broker's default count and break co-partitioning.
        """
        await super().on_start()
        for topic in self.livemod_topics:
            await topic.maybe_declare()

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        self.livemod_rebalanced = True
        if self.livemod_on_rebalance_end is not None:
            asyncio.ensure_future(self.livemod_on_rebalance_end())


def app_settings() -> dict[str, Any]:
    """Faust settings livemod needs whatever the deployment."""
    return {
        # no unbounded wait for in-flight messages before a rebalance or at shutdown; the worker
        # bounds its own wait and its ledger makes sure nothing unfinished is committed
        "stream_wait_empty": False,
    }


def idempotent_producer(app: Any) -> None:
    """Make the app's producer idempotent (``enable_idempotence``, ``acks=all``) without transactions.

    Faust sets these only inside a transaction (its aiokafka driver's ``Producer._settings_extra``);
    an idempotent producer keeps a retried send from being written twice, and needs a broker that
    supports it (Apache Kafka does; the bundled Tansu does not). Call before the app starts.
    """
    producer = app.producer
    extra = producer._settings_extra

    def settings_extra() -> dict[str, Any]:
        return {**extra(), "acks": "all", "enable_idempotence": True}

    producer._settings_extra = settings_extra


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The partition's last committed offset as Faust knows it (None when nothing was committed)."""
    return consumer._committed_offset.get(tp)


def forget_gaps(consumer: Any, tp: Any) -> None:
    """Drop the holes Faust noted for a partition (after a seek they are not holes)."""
    consumer._gap.pop(tp, None)


def pause(consumer: Any, tp: Any) -> None:
    """Stop fetching from one partition."""
    consumer.pause_partitions({TP(tp.topic, tp.partition)})


def resume(consumer: Any, tp: Any) -> None:
    """Fetch from a paused partition again.

    Faust's ``resume_partitions`` adds its argument to the active set as given (not the set of
    ``TP`` it builds for the paused one), and its fetcher then crashes on an assertion unless the
    items already are ``faust.types.TP``: pass exactly that.
    """
    consumer.resume_partitions({TP(tp.topic, tp.partition)})


def assignment(app: Any) -> set[Any]:
    """The app's assigned partitions; empty while the consumer is still starting."""
    try:
        return set(app.consumer.assignment())
    except ConsumerNotStarted:
        return set()


class GapGuard:
    """Keeps Faust from committing across holes in our source topics' offsets unless a ledger confirmed them."""

    def __init__(self, topics: set[str]) -> None:
        self.topics = topics
        self._original: Callable[[Any, int, int], Awaitable[None]] | None = None

    def install(self, consumer: Any) -> None:
        """Wrap the consumer's ``_add_gap`` once (other topics, such as changelogs, keep Faust's behaviour)."""
        if self._original is not None:
            return
        original = consumer._add_gap

        async def add_gap(tp: Any, offset_from: int, offset_to: int) -> None:
            if tp.topic not in self.topics:
                await original(tp, offset_from, offset_to)

        consumer._add_gap = add_gap
        self._original = original

    async def confirm(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Tell Faust that offsets ``offset_from..offset_to`` of ``tp`` really do not exist."""
        if self._original is not None:
            await self._original(tp, offset_from, offset_to)
