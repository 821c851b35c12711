"""Delivery logic of the worker: in-order acks, retry backoff, per-stream locks, signatures, credentials."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import pytest
from pydantic import SecretStr

from livemod.demo.service import quantile, settings_env
from livemod.stream.offsets import OrderedAcks
from livemod.stream.service import StreamLocks, _credentials, backoff_delay
from livemod.stream.settings import Settings
from livemod.stream.webhook import sign, verify


@dataclass(frozen=True)
class _Message:
    tp: str
    offset: int


@dataclass
class _Event:
    """The three things OrderedAcks uses of a Faust event; ``log`` records the acks."""

    message: _Message
    log: list[tuple[str, int]] = field(default_factory=list)

    def ack(self) -> None:
        self.log.append((self.message.tp, self.message.offset))


def _started(*tps: str, at: int = 0) -> OrderedAcks:
    acks = OrderedAcks()
    for tp in tps:
        acks.begin(tp, at, now=0.0)
    return acks


@pytest.mark.parametrize(
    ("arrivals", "finish_order", "acked"),
    [
        # in order: each ack goes out at once
        ([("p0", 0), ("p0", 1), ("p0", 2)], [0, 1, 2], [("p0", 0), ("p0", 1), ("p0", 2)]),
        # a later offset finishing first waits for the earlier one
        ([("p0", 0), ("p0", 1), ("p0", 2)], [2, 1, 0], [("p0", 0), ("p0", 1), ("p0", 2)]),
        # one slow head holds back only its own partition
        ([("p0", 0), ("p1", 0), ("p0", 1), ("p1", 1)], [2, 1, 3], [("p1", 0), ("p1", 1)]),
        ([("p0", 0), ("p1", 0), ("p0", 1), ("p1", 1)], [2, 1, 3, 0], [("p1", 0), ("p1", 1), ("p0", 0), ("p0", 1)]),
        # nothing finished, nothing acked
        ([("p0", 0)], [], []),
        # an offset delivered again (a seek raced a fetch) is not handed out; its copy is acked
        # right after the first one, never before it
        ([("p0", 0), ("p0", 0), ("p0", 1)], [], []),
        ([("p0", 0), ("p0", 0), ("p0", 1)], [0], [("p0", 0), ("p0", 0)]),
        ([("p0", 0), ("p0", 1), ("p0", 0), ("p0", 1)], [1, 0], [("p0", 0), ("p0", 1), ("p0", 0), ("p0", 1)]),
    ],
)
def test_ordered_acks(arrivals, finish_order, acked):
    log: list[tuple[str, int]] = []
    acks = _started("p0", "p1")
    entries = [acks.track(_Event(_Message(tp, off), log)) for tp, off in arrivals]
    fresh = [e for e in entries if e is not None]
    assert len(fresh) == len(set(arrivals)), "each offset is handed out once"
    for i in finish_order:
        acks.done(fresh[i])
    assert log == acked
    assert acks.outstanding() == len(arrivals) - len(acked)


def test_ordered_acks_late_copy_after_the_first_was_acked():
    log: list[tuple[str, int]] = []
    acks = _started("p0")
    first = acks.track(_Event(_Message("p0", 0), log))
    acks.done(first)
    assert acks.track(_Event(_Message("p0", 0), log)) is None
    assert log == [("p0", 0), ("p0", 0)] and acks.outstanding() == 0
    acks.reset()  # a new generation: the partition's offsets are handed out again, once it has started
    assert acks.track(_Event(_Message("p0", 0), log)) is None
    acks.begin("p0", 0, now=0.0)
    assert acks.track(_Event(_Message("p0", 0), log)) is not None


def test_ordered_acks_reset_forgets_unfinished():
    log: list[tuple[str, int]] = []
    acks = _started("p0")
    first = acks.track(_Event(_Message("p0", 0), log))
    second = acks.track(_Event(_Message("p0", 1), log))
    acks.done(second)
    assert acks.reset() == 2 and acks.outstanding() == 0
    acks.done(first)  # a late finisher after a revoke acks nothing of the old generation
    assert log == []


def test_a_partition_is_handed_out_only_from_where_it_starts():
    acks = OrderedAcks()
    assert acks.track(_Event(_Message("p0", 4))) is None, "not started: the rewind delivers it again"
    assert acks.begin("p0", 4, now=0.0) == 4
    assert acks.begin("p0", 0, now=0.0) == 4, "a second begin does not move a started partition"
    assert acks.track(_Event(_Message("p0", 4))) is not None
    assert acks.next_offset("p0") == 5


def test_records_dropped_by_the_fetch_loop_are_fetched_again_never_skipped():
    # Faust dropped offsets 1..5 and delivered 6: 6 is refused, the partition is rewound to 1,
    # and 1..6 are handed out in order; nothing past the hole is acked before the hole is filled
    log: list[tuple[str, int]] = []
    acks = _started("p0")
    handed = [acks.track(_Event(_Message("p0", 0), log))]
    assert acks.track(_Event(_Message("p0", 6), log)) is None
    assert acks.to_rewind(now=0.5, idle_s=2.0, highwater=lambda tp: 7) == [("p0", 1, "skipped")]
    acks.rewound("p0", now=0.5)
    assert acks.to_rewind(now=0.6, idle_s=2.0, highwater=lambda tp: 7) == []
    handed += [acks.track(_Event(_Message("p0", off), log)) for off in range(1, 7)]
    assert all(e is not None and e.gap is None for e in handed)
    for e in reversed(handed):
        acks.done(e)
    assert log == [("p0", off) for off in range(7)]


def test_a_stalled_partition_is_rewound_only_when_the_broker_holds_more():
    acks = _started("p0", "p1")
    acks.track(_Event(_Message("p0", 0)), now=0.0)
    acks.track(_Event(_Message("p1", 0)), now=0.0)
    high = {"p0": 1, "p1": 9}
    assert acks.to_rewind(now=1.0, idle_s=2.0, highwater=high.get) == []
    assert acks.to_rewind(now=3.0, idle_s=2.0, highwater=high.get) == [("p1", 1, "stalled")]
    acks.busy(now=3.0)  # backpressure: no partition counts as stalled
    assert acks.to_rewind(now=4.0, idle_s=2.0, highwater=high.get) == []


def test_a_partition_that_stays_stalled_is_rewound_less_and_less_often():
    # records past the next offset that never come (a trailing transaction marker): back off
    acks = _started("p0")
    acks.track(_Event(_Message("p0", 0)), now=0.0)
    times = []
    for t in range(0, 40):
        if acks.to_rewind(now=float(t), idle_s=2.0, highwater=lambda tp: 2):
            acks.rewound("p0", now=float(t))
            times.append(t)
    assert times == [2, 6, 14, 30]
    acks.track(_Event(_Message("p0", 1)), now=40.0)  # progress resets the back-off
    assert acks.to_rewind(now=42.0, idle_s=2.0, highwater=lambda tp: 3) == [("p0", 2, "stalled")]


def test_a_real_hole_is_accepted_after_repeated_rewinds():
    # offsets 3..4 do not exist (a transaction marker, a compacted record): after each rewind
    # the first event is 5 again; after confirm_gap such rewinds the hole is accepted
    acks = _started("p0", at=3)
    for _ in range(acks.confirm_gap - 1):
        acks.rewound("p0", now=0.0)
        assert acks.track(_Event(_Message("p0", 5))) is None
        assert acks.to_rewind(now=0.0, idle_s=2.0, highwater=lambda tp: 6) == [("p0", 3, "skipped")]
    acks.rewound("p0", now=0.0)
    entry = acks.track(_Event(_Message("p0", 5)))
    assert entry is not None and entry.gap == (3, 4) and acks.next_offset("p0") == 6


def test_a_jump_in_the_middle_of_a_batch_never_counts_as_a_hole():
    acks = _started("p0", at=3)
    for _ in range(5):
        acks.rewound("p0", now=0.0)
        assert acks.track(_Event(_Message("p0", 3))) is not None  # the rewind delivered 3 first
        assert acks.track(_Event(_Message("p0", 9))) is None  # then a stale record, not a hole
        acks.reset()
        acks.begin("p0", 3, now=0.0)


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "expected"),
    [(1, 0.5, 10, 0.5), (2, 0.5, 10, 1.0), (3, 0.5, 10, 2.0), (5, 0.5, 10, 8.0), (6, 0.5, 10, 10.0),
     (40, 0.5, 10, 10.0), (0, 0.5, 10, 0.5)],
)
def test_backoff_delay(attempt, base, cap, expected):
    assert backoff_delay(attempt, base, cap) == expected


@pytest.mark.parametrize(
    ("keys", "expected_order"),
    [
        (["a", "a", "a"], ["a0", "a1", "a2"]),
        (["a", "b", "a", "b"], ["a0", "b1", "a2", "b3"]),
    ],
)
def test_stream_locks_keep_arrival_order_and_forget_idle_streams(keys, expected_order):
    async def run() -> tuple[list[str], int]:
        locks, done = StreamLocks(), []

        async def work(i: int, key: str) -> None:
            async with locks.hold(key):
                await asyncio.sleep(0.01 * (len(keys) - i))  # earlier ones take longer
                done.append(f"{key}{i}")

        await asyncio.gather(*(work(i, k) for i, k in enumerate(keys)))
        return done, len(locks)

    done, left = asyncio.run(run())
    for key in set(keys):
        assert [d for d in done if d[0] == key] == [d for d in expected_order if d[0] == key]
    assert left == 0


@pytest.mark.parametrize(
    ("secret", "ts", "body", "tamper"),
    [(b"s3cret", "1700000000", b'{"id":"a"}', None), (b"k", "1", b"", None),
     (b"s3cret", "1700000000", b'{"id":"a"}', "body"), (b"s3cret", "1700000000", b'{"id":"a"}', "ts")],
)
def test_webhook_signature(secret, ts, body, tamper):
    sig = sign(secret, ts, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    if tamper == "body":
        body += b" "
    elif tamper == "ts":
        ts = str(int(ts) + 1)
    assert verify(secret, ts, body, sig) is (tamper is None)
    assert not verify(secret + b"x", ts, body, sig)


@pytest.mark.parametrize(
    ("kafka", "kind", "protocol", "mechanism"),
    [
        ({}, None, None, None),
        ({"security_protocol": "SSL"}, ssl.SSLContext, None, None),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": "p"},
         "SASLCredentials", "SASL_PLAINTEXT", "PLAIN"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u",
          "sasl_password": "p"}, "SASLCredentials", "SASL_SSL", "SCRAM-SHA-512"),
    ],
)
def test_kafka_credentials(kafka, kind, protocol, mechanism):
    s = Settings()
    s = s.model_copy(update={"kafka": s.kafka.model_validate({**s.kafka.model_dump(), **kafka})})
    creds = _credentials(s)
    if kind is None:
        assert creds is None
    elif kind is ssl.SSLContext:
        assert isinstance(creds, ssl.SSLContext)
    else:
        assert type(creds).__name__ == kind
        assert creds.protocol.value == protocol and creds.mechanism.value == mechanism
        assert creds.password == "p" and "p" not in repr(creds)


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        ({}, 0.5, None),
        ({1.0: 0, 2.0: 0, float("inf"): 0}, 0.5, None),
        ({1.0: 10, 2.0: 10, float("inf"): 10}, 0.5, 0.5),
        ({1.0: 0, 2.0: 10, float("inf"): 10}, 0.5, 1.5),
        ({1.0: 5, 2.0: 10, float("inf"): 10}, 0.99, 1.98),
        ({1.0: 0, 2.0: 0, float("inf"): 4}, 0.5, 2.0),  # all above the last bound: the bound
    ],
)
def test_quantile_from_prometheus_buckets(buckets, q, expected):
    got = quantile(buckets, q)
    assert got == expected if expected is None else got == pytest.approx(expected)


def test_settings_env_round_trips_every_section(monkeypatch):
    s = Settings()
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={"partitions": 3, "sasl_password": SecretStr("pw")}),
                             "worker": s.worker.model_copy(update={"max_in_flight": 5})})
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    back = Settings()
    assert back.kafka.partitions == 3 and back.worker.max_in_flight == 5
    assert back.kafka.sasl_password is not None and back.kafka.sasl_password.get_secret_value() == "pw"
    assert back.model_dump(exclude={"kafka": {"sasl_password"}}) == s.model_dump(exclude={"kafka": {"sasl_password"}})


@pytest.mark.parametrize("index, port, expected_port", [(0, 6066, "6066"), (3, 6066, "6069"), (2, 0, "0")])
def test_worker_processes_get_their_own_id_and_port(index, port, expected_port):
    from livemod.stream.procs import child_env

    s = Settings()
    s = s.model_copy(update={"worker": s.worker.model_copy(update={"id": "node-a", "web_port": port})})
    env = child_env(s, index, base={"LIVEMOD_KAFKA__PARTITIONS": "8"})
    assert env == {"LIVEMOD_KAFKA__PARTITIONS": "8", "LIVEMOD_WORKER__ID": f"node-a-{index}",
                   "LIVEMOD_WORKER__WEB_PORT": expected_port}
