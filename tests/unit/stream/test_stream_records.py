"""frame-refs message parsing: every malformed message gets a typed reason."""

from __future__ import annotations

import pytest

from livemod.core.errors import MessageError
from livemod.stream.records import DeadLetter, FrameRef, LiveProgress, StreamStateValue, parse_frame_ref


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "bad_json"),
        (b"", "bad_json"),
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'"a string"', "bad_json"),
        (b'{"v": 2, "stream_id": "s", "uri": "a.ts"}', "unknown_version"),
        (b'{"v": "1", "stream_id": "s", "uri": "a.ts"}', "unknown_version"),
        (b'{"v": 1, "uri": "a.ts"}', "invalid_fields"),
        (b'{"v": 1, "stream_id": "s"}', "invalid_fields"),
        (b'{"v": 1, "stream_id": "s", "kind": "live"}', "invalid_fields"),  # only an "end" has no uri
        (b'{"v": 1, "stream_id": "", "uri": "a.ts"}', "invalid_fields"),
        (b'{"v": 1, "stream_id": "s", "uri": "a.ts", "kind": "podcast"}', "invalid_fields"),
        (b'{"v": 1, "stream_id": "s", "uri": "a.ts", "seq": -1}', "invalid_fields"),
        (b'{"v": 1, "stream_id": "s", "uri": "a.ts", "surprise": 1}', "invalid_fields"),
        (b'{"v": 1, "stream_id": "s", "uri": "a.ts", "metadata": {"a": [1]}}', "invalid_fields"),
    ],
)
def test_malformed_messages(raw, reason):
    with pytest.raises(MessageError) as info:
        parse_frame_ref(raw)
    assert info.value.reason == reason and not info.value.retriable


def test_round_trip():
    ref = FrameRef(stream_id="cam-7", uri="http://ingest/cam-7/000042.ts", seq=42, wall_start=1.7e9, duration=2.0,
                   policy="default", tenant="acme", metadata={"region": "eu"})
    assert parse_frame_ref(ref.to_bytes()) == ref
    assert ref.key == "cam-7/42"


def test_version_defaults_to_current():
    assert parse_frame_ref(b'{"stream_id": "s", "uri": "a.ts"}').v == 1


def test_an_end_reference_needs_no_uri():
    ref = parse_frame_ref(b'{"v": 1, "stream_id": "s", "kind": "end", "seq": 7}')
    assert ref.kind == "end" and ref.uri is None and ref.key == "s/7"
    assert parse_frame_ref(ref.to_bytes()) == ref


@pytest.mark.parametrize("live", [None, LiveProgress(seq=3, chunk=2, uri="rtmp://h/live/s")])
def test_stream_state_dump_matches_the_model(live):
    value = StreamStateValue.dump({"v": 1, "rules": {}}, {"mode": "keyframes"}, live)
    assert value == StreamStateValue(rules={"v": 1, "rules": {}}, sampler={"mode": "keyframes"},
                                     live=live).model_dump(mode="json")
    assert StreamStateValue.load(value).live == live


def test_dead_letter_fits_whatever_the_original_size():
    big = b"x" * 3_000_000
    d = DeadLetter.build(topic="t", partition=0, offset=1, key=b"k" * 5000, value=big, headers=[("h", b"v" * 900_000)],
                         error_class="MessageError", reason="too_large", message="m" * 10_000, retriable=False,
                         attempts=1, worker_id="w", max_bytes=100_000)
    assert len(d.to_bytes()) <= 100_000 and d.value_truncated and d.value_size == len(big)
    small = DeadLetter.build(topic="t", partition=0, offset=1, key=b"k", value=b"{}", headers=None,
                             error_class="MessageError", reason="bad_json", message="m", retriable=False, attempts=1,
                             worker_id="w", max_bytes=100_000)
    assert not small.value_truncated and small.value == "e30="


@pytest.mark.parametrize("duration, followed, expected", [(None, 30.0, None), (100.0, 30.0, 70.0), (30.0, 30.0, "end")])
def test_live_continuation(duration, followed, expected):
    ref = FrameRef(stream_id="s", uri="rtmp://h/live/s", kind="live", seq=4, wall_start=1.0, duration=duration)
    nxt = ref.continuation(followed)
    if expected == "end":
        assert nxt is None
        return
    assert nxt.chunk == 1 and nxt.wall_start is None and nxt.duration == expected and nxt.key == "s/4.1"
    assert nxt.continuation(followed).chunk == 2
