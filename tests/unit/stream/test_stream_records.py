"""frame-refs message parsing: every malformed message gets a typed reason."""

from __future__ import annotations

import pytest

from livemod.core.errors import MessageError
from livemod.stream.records import FrameRef, parse_frame_ref


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
