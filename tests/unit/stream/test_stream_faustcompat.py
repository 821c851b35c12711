"""Pins the faust-streaming behaviour livemod's offset handling relies on (see livemod.stream.faustcompat).

When one of these fails after a Faust upgrade, read faustcompat's docstring before changing
anything: the ledger (OrderedAcks) exists because of exactly these behaviours.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
import faust
import pytest
from faust.types import TP

from livemod.core.errors import ConfigError
from livemod.stream import faustcompat

T = TP("refs", 0)
# Faust's services make event loops of their own when built outside a running loop; their garbage
# collection warns. Nothing here starts or connects anything.
pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore::ResourceWarning")]


@pytest.fixture
def app():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # Faust's services ask asyncio for "the" loop: make it this one
    app = faust.App("pin", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False, loop=loop,
                    **faustcompat.app_settings())
    yield app
    asyncio.set_event_loop(None)
    del app
    for obj in gc.get_objects():  # the loop, and any Faust's services made on the side
        if isinstance(obj, asyncio.AbstractEventLoop) and not obj.is_running() and not obj.is_closed():
            obj.close()
    with warnings.catch_warnings():  # collect Faust's leftovers here, not in the middle of a later test
        warnings.simplefilter("ignore")
        gc.collect()


@pytest.fixture
def consumer(app):
    return app.consumer  # built lazily; nothing connects


def run(consumer, coro):
    return consumer.app.loop.run_until_complete(coro)


def test_installed_version_is_supported():
    faustcompat.check_version()


@pytest.mark.parametrize("version", ["0.15.2", "0.16.0", "1.0.0"])
def test_other_versions_are_refused(version):
    with pytest.raises(ConfigError, match="not supported"):
        faustcompat.check_version(version)


def test_commits_the_highest_contiguous_acked_offset(consumer):
    consumer._committed_offset[T] = 4
    consumer._acked[T] = [4, 5, 6, 8]
    assert consumer._new_offset(T) == 7


def test_misses_a_hole_right_after_the_committed_offset(consumer):
    """faust-streaming #606: offset 4 was never acked, yet 5..7 commit as 8. Hence in-order acks."""
    consumer._committed_offset[T] = 4
    consumer._acked[T] = [5, 6, 7]
    assert consumer._new_offset(T) == 8


def test_a_recorded_gap_lets_commits_pass_a_hole(consumer):
    """What GapGuard.confirm relies on: after _add_gap(5, 8), acks of 4 and 9 commit up to 10."""
    consumer._committed_offset[T] = 3
    consumer._acked[T] = [4, 9]
    run(consumer, consumer._add_gap(T, 5, 8))
    assert consumer._new_offset(T) == 10


def test_gap_guard_passes_only_confirmed_holes_of_our_topics(consumer):
    guard = faustcompat.GapGuard({"refs"})
    guard.install(consumer)
    other = TP("changelog", 0)
    run(consumer, consumer._add_gap(T, 5, 8))  # what Faust's fetch loop would call
    run(consumer, consumer._add_gap(other, 5, 8))
    assert not consumer._gap.get(T) and consumer._gap[other]
    run(consumer, guard.confirm(T, 5, 8))
    assert consumer._gap[T]
    faustcompat.forget_gaps(consumer, T)
    assert T not in consumer._gap


def test_committed_offset_reads_faust_private_map(consumer):
    assert faustcompat.committed_offset(consumer, T) is None
    consumer._committed_offset[T] = 12
    assert faustcompat.committed_offset(consumer, T) == 12


def test_wait_empty_can_be_switched_off(app):
    assert app.conf.stream_wait_empty is False


def test_pause_and_resume_keep_the_fetcher_s_partition_set_typed(consumer):
    """Faust's resume_partitions adds its argument as given; faustcompat.resume hands it TP items."""
    from aiokafka.structs import TopicPartition

    consumer._active_partitions = {T}
    faustcompat.pause(consumer, TopicPartition("refs", 0))
    assert T not in consumer._get_active_partitions()
    faustcompat.resume(consumer, TopicPartition("refs", 0))
    assert consumer._get_active_partitions() == {T}  # its assertion: every item is a faust TP


def test_the_producer_can_be_made_idempotent_without_transactions(app):
    assert "enable_idempotence" not in app.producer._settings_extra()  # Faust: only inside a transaction
    faustcompat.idempotent_producer(app)
    assert app.producer._settings_extra() == {"acks": "all", "enable_idempotence": True}
