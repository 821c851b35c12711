"""Sampling decisions, hashing and state persistence (pure logic)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livemod.decoders.config import SamplerConfig as SamplerConfigFromConfig
from livemod.decoders.sampling import (
    Sampler,
    SamplerConfig,
    SamplerState,
    dhash,
    hamming,
    mean_abs_diff,
    thumb_hash,
)

RNG = np.random.default_rng(7)
A = RNG.integers(0, 255, (32, 32), dtype=np.uint8)
B = RNG.integers(0, 255, (32, 32), dtype=np.uint8)
DARK = np.full((32, 32), 20, np.uint8)
LIGHT = np.full((32, 32), 230, np.uint8)


def test_config_is_the_same_class_from_both_modules():
    assert SamplerConfig is SamplerConfigFromConfig


@pytest.mark.parametrize("a, b, d", [(0, 0, 0), (0, 1, 1), (0, 2**64 - 1, 64), (0b1011, 0b0001, 2), (2**63, 0, 1)])
def test_hamming(a, b, d):
    assert hamming(a, b) == d


@pytest.mark.parametrize(
    "img, expected",
    [
        (np.tile(np.arange(9, dtype=np.uint8), (8, 1)), 2**64 - 1),  # rising left to right: all bits set
        (np.tile(np.arange(9, 0, -1, dtype=np.uint8), (8, 1)), 0),
        (np.full((8, 9), 7, np.uint8), 0),
        (np.tile(np.arange(9, dtype=np.float32) / 10, (8, 1)), 2**64 - 1),  # float input keeps fractions
        (np.vstack([np.arange(9, dtype=np.uint8)] + [np.zeros(9, np.uint8)] * 7), 0xFF << 56),  # first row = top byte
    ],
)
def test_dhash_table(img, expected):
    assert dhash(img) == expected


@pytest.mark.parametrize("fn, shape", [(dhash, (8, 8)), (dhash, (9, 8)), (thumb_hash, (30, 32)), (thumb_hash, (32, 4)),
                                       (thumb_hash, (32, 32, 3))])
def test_hashes_reject_wrong_shapes(fn, shape):
    with pytest.raises(ValueError):
        fn(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("noise, max_distance", [(0, 0), (3, 4)])  # small noise keeps the hash within a few bits
def test_thumb_hash_is_robust_to_noise(noise, max_distance):
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.float32), (32, 1))
    smooth = (smooth + np.linspace(0, 60, 32)[:, None]).clip(0, 255).astype(np.uint8)
    noisy = (smooth.astype(int) + np.random.default_rng(1).integers(-noise, noise + 1, smooth.shape)).clip(0, 255)
    assert hamming(thumb_hash(smooth), thumb_hash(noisy.astype(np.uint8))) <= max_distance
    assert hamming(thumb_hash(A), thumb_hash(B)) > 10


@pytest.mark.parametrize("a, b, d", [(DARK, DARK, 0.0), (DARK, LIGHT, 210.0), (LIGHT, DARK, 210.0)])
def test_mean_abs_diff(a, b, d):
    assert mean_abs_diff(a, b) == pytest.approx(d)


def _run(cfg: SamplerConfig, frames, state=None):
    s = Sampler(cfg, state)
    out = []
    for t, key, thumb in frames:
        s.on_packet(t, key)
        out.append(s.decide(t, key, thumb))
    return out, s.state


@pytest.mark.parametrize(
    "cfg, frames, expected",
    [
        # keyframes: only keyframes, distinct content
        (SamplerConfig(mode="keyframes"), [(0, True, A), (0.5, False, B), (1.0, True, B)], ["keyframe", None, "keyframe"]),
        # interval 1 s over 4 fps: every 4th frame
        (
            SamplerConfig(mode="interval", interval_s=1.0, scene_threshold=0),
            [(i / 4, i % 8 == 0, A if (i // 4) % 2 else B) for i in range(9)],
            ["interval", None, None, None, "interval", None, None, None, "interval"],
        ),
        # uneven timestamps: a slot is taken by the first frame at least interval_s after the last slot
        (
            SamplerConfig(mode="interval", interval_s=1.0, scene_threshold=0, dup_max_distance=-1),
            [(0.0, True, A), (0.7, False, B), (1.1, False, A), (1.9, False, B), (2.3, False, A)],
            ["interval", None, "interval", None, "interval"],
        ),
        # a scene change between intervals forces a sample
        (
            SamplerConfig(mode="interval", interval_s=10.0, scene_threshold=20, dup_max_distance=-1),
            [(0, True, A), (0.1, False, A), (0.2, False, B)],
            ["interval", None, "scene"],
        ),
        # a brightness cut (same dHash: flat images) is a scene, never a duplicate
        (
            SamplerConfig(mode="interval", interval_s=10.0, scene_threshold=30),
            [(0, True, DARK), (0.1, False, DARK), (0.2, False, LIGHT), (0.3, False, LIGHT)],
            ["interval", None, "scene", None],
        ),
        # scene trigger off: the cut waits for the next slot
        (
            SamplerConfig(mode="interval", interval_s=10.0, scene_threshold=0, dup_max_distance=-1),
            [(0, True, DARK), (0.2, False, LIGHT), (10.0, False, LIGHT)],
            ["interval", None, "interval"],
        ),
        # keyframes mode never looks for scenes (non-key frames are not decoded there)
        (
            SamplerConfig(mode="keyframes", scene_threshold=1),
            [(0, True, DARK), (0.2, False, LIGHT), (0.4, False, DARK)],
            ["keyframe", None, None],
        ),
        # near-duplicates are marked until the heartbeat
        (
            SamplerConfig(mode="interval", interval_s=1.0, heartbeat_s=3.0, scene_threshold=0),
            [(t, False, A) for t in (0, 1, 2, 3, 4)],
            ["interval", "duplicate", "duplicate", "heartbeat", "duplicate"],
        ),
        # keyframes of a still scene: duplicates with a heartbeat too
        (
            SamplerConfig(mode="keyframes", heartbeat_s=2.0),
            [(t, True, A) for t in (0, 1, 2, 3)],
            ["keyframe", "duplicate", "heartbeat", "duplicate"],
        ),
        # duplicate skip off
        (
            SamplerConfig(mode="interval", interval_s=1.0, dup_max_distance=-1, scene_threshold=0),
            [(t, False, A) for t in (0, 1, 2)],
            ["interval", "interval", "interval"],
        ),
        # no thumbnail: neither duplicate nor scene checks
        (
            SamplerConfig(mode="keyframes"),
            [(0, True, None), (1, True, None)],
            ["keyframe", "keyframe"],
        ),
        # time going backwards (a restarted stream clock) is never a duplicate of the future
        (
            SamplerConfig(mode="keyframes", heartbeat_s=10.0),
            [(100, True, A), (5, True, A)],
            ["keyframe", "heartbeat"],
        ),
    ],
)
def test_sampling_table(cfg, frames, expected):
    got, _ = _run(cfg, frames)
    assert got == expected


@pytest.mark.parametrize(
    "mode, state_kw, scene, t, is_key, want_decode, needs_thumb",
    [
        ("keyframes", {}, 30, 0.0, True, True, True),
        ("keyframes", {"last_sample_t": 0.0}, 30, 0.5, False, False, False),
        ("keyframes", {"last_sample_t": 0.0}, 30, 1.0, False, False, True),  # a decoder that ignores skip_frame
        ("interval", {}, 30, 0.0, False, True, True),  # first frame: a slot is due
        ("interval", {"last_slot_t": 0.0}, 0, 0.5, False, True, False),  # not due, scene off: no thumbnail
        ("interval", {"last_slot_t": 0.0}, 30, 0.5, False, True, True),  # scene trigger needs every thumbnail
        ("interval", {"last_slot_t": 0.0}, 0, 1.0, False, True, True),  # slot due
    ],
)
def test_want_decode_and_needs_thumb(mode, state_kw, scene, t, is_key, want_decode, needs_thumb):
    s = Sampler(SamplerConfig(mode=mode, interval_s=1.0, scene_threshold=scene), SamplerState(mode=mode, **state_kw))
    assert s.want_decode(is_key) == want_decode
    assert s.needs_thumb(t, is_key) == needs_thumb


def _events(cfg: SamplerConfig, events, state=None):
    """Feed packets ("p", t, key) and decoded frames ("f", t, key); note mode changes and samples."""
    s = Sampler(cfg, state)
    out = []
    for kind, t, key in events:
        if kind == "p":
            if (c := s.on_packet(t, key)) is not None:
                out.append((t, c))
        elif kind == "end":
            if s.on_end(t):
                out.append((t, "fill"))
        elif (r := s.decide(t, key, None)) is not None:
            out.append((t, r, None if s.gap is None else round(s.gap, 3)))
    return out, s


def _gop(t0, t1, fps, keys, produced=None):
    """Packets and (under NONKEY) the frames a decoder produces: keyframe packets at ``keys``
    produce a frame only when in ``produced`` (default: all)."""
    ev = []
    for i in range(round(t0 * fps), round(t1 * fps)):
        t = round(i / fps, 3)
        key = t in keys
        ev.append(("p", t, key))
        if key and (produced is None or t in produced):
            ev.append(("f", t, True))
    return ev


K = SamplerConfig(mode="keyframes", max_gap_s=3.0, interval_s=1.0)


@pytest.mark.parametrize(
    "cfg, events, expected",
    [
        # keyframes every 2 s: keyframes only, gap 2 s, no fallback
        (K, _gop(0, 5, 10, {0.0, 2.0, 4.0}), [(0.0, "keyframe", None), (2.0, "keyframe", 2.0), (4.0, "keyframe", 2.0)]),
        # keyframe packets that produce nothing (x264 intra refresh in MPEG-TS): fall back once 3 s have passed
        (K, _gop(0, 3.3, 10, {0.0, 1.0, 2.0, 3.0}, produced={0.0}), [(0.0, "keyframe", None), (3.1, "interval")]),
        # the decoder may hold a keyframe back for a few packets: a keyframe packet just before the
        # deadline postpones the fallback (here by DECODER_DELAY_PACKETS packets)
        (K, _gop(0, 4.8, 10, {0.0, 2.9}, produced={0.0}), [(0.0, "keyframe", None), (4.5, "interval")]),
        # keyframe packets every 0.5 s that produce nothing: seen to be blind, they postpone nothing
        (K, _gop(0, 3.5, 10, {round(0.1 * i, 1) for i in range(0, 35, 5)}, produced={0.0}),
         [(0.0, "keyframe", None), (3.1, "interval")]),
        # a decoder that ignores skip_frame (VP9): its non-key frames are sampled every interval_s
        (K, [("p", 0.0, True), ("f", 0.0, True)]
         + [e for i in range(1, 25) for e in (("p", i / 10, False), ("f", i / 10, False))],
         [(0.0, "keyframe", None), (1.0, "interval", 1.0), (2.0, "interval", 1.0)]),
        # the source ends 3 s after the last sample: decode the tail
        (K, _gop(0, 3.0, 10, {0.0}) + [("end", 3.0, False)], [(0.0, "keyframe", None), (3.0, "fill")]),
        (K, _gop(0, 2.5, 10, {0.0}) + [("end", 2.4, False)], [(0.0, "keyframe", None)]),
        # interval mode: max_gap_s caps interval_s
        (SamplerConfig(mode="interval", interval_s=5.0, max_gap_s=2.0, dup_max_distance=-1),
         [("f", t / 2, False) for t in range(9)], [(0.0, "interval", None), (2.0, "interval", 2.0), (4.0, "interval", 2.0)]),
        # no packet for a while (a live outage): the gap shows on the next frame
        (K, [("p", 0.0, True), ("f", 0.0, True), ("p", 9.0, True), ("f", 9.0, True)],
         [(0.0, "keyframe", None), (9.0, "keyframe", 9.0)]),
    ],
)
def test_coverage_table(cfg, events, expected):
    got, _ = _events(cfg, events)
    assert got == expected


def test_fill_continues_slots_from_the_last_sample_and_keyframes_come_back():
    # keyframes every second, then none for 5 s, then every second again
    ev = _gop(0, 4.1, 10, {0.0, 1.0, 2.0, 3.0, 4.0})
    got, s = _events(K, ev)
    assert s.keyframes_only and [g[0] for g in got] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # the packets run on past 7.0 with no keyframe: fallback; the caller decodes every frame from 4.0 again
    got, _ = _events(K, [("p", round(4.1 + i / 10, 1), False) for i in range(30)], s.state)
    assert got == [(7.0, "interval")] and not s.keyframes_only
    s2 = Sampler(K, s.state)
    frames = [round(4.0 + i / 10, 1) for i in range(1, 90)]  # 4.1 .. 12.9, decoded in full
    got = [(t, s2.decide(t, t in (10.0, 11.0, 12.0), None)) for t in frames]
    samples = [(t, r) for t, r in got if r is not None]
    assert [t for t, _ in samples] == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    assert s2.state.max_gap_s == pytest.approx(1.0)
    # two keyframes 1 s apart came out of the decoder: keyframes mode at the next keyframe packet, not before
    assert s2.on_packet(12.5, False) is None and s2.on_packet(13.0, True) == "keyframes" and s2.keyframes_only
    assert s2.state.fallbacks == 1


def test_keyframes_far_apart_keep_interval_mode():
    s = Sampler(K, SamplerState(mode="interval", last_key_t=0.0))
    assert s.decide(5.0, True, None) is not None  # 5 s after the last keyframe: not close enough
    assert s.on_packet(6.0, True) is None and not s.keyframes_only


def test_interval_mode_never_switches_to_keyframes():
    s = Sampler(SamplerConfig(mode="interval"))
    assert [s.on_packet(t, True) for t in (0, 0.5, 1.0)] == [None, None, None]
    assert not s.keyframes_only


def test_state_round_trip_carries_interval_and_hash():
    cfg = SamplerConfig(mode="interval", interval_s=1.0, heartbeat_s=100, scene_threshold=0)
    _, state = _run(cfg, [(0, True, A)])
    restored = SamplerState.from_dict(json.loads(json.dumps(state.to_dict())))  # JSON-safe
    got, _ = _run(cfg, [(0.5, False, B), (1.0, False, A)], restored)
    assert got == [None, "duplicate"]
    assert restored.sampled == 1 and restored.skipped_dup == 1 and restored.decoded == 3


def test_state_from_dict_ignores_unknown_keys_and_checks_mode():
    assert SamplerState.from_dict({"mode": "interval", "future_field": 1}).mode == "interval"
    old = {"mode": "keyframes", "last_emit_t": 5.0, "last_slot_t": None, "last_key_t": 5.0, "first_t": 0.0,  # before max_gap_s
           "last_hash": None, "last_thumb": None, "decoded": 3, "sampled": 3, "skipped_dup": 0, "fallbacks": 0}
    state = SamplerState.from_dict(old)
    assert state.max_gap_s == 0.0 and state.last_sample_t is None and state.decoded == 3
    with pytest.raises(ValueError):
        SamplerState.from_dict({"mode": "everything"})


@pytest.mark.parametrize(
    "configured, saved, in_effect",
    [
        ("interval", None, "interval"),
        ("keyframes", None, "keyframes"),
        ("interval", "keyframes", "interval"),  # settings changed since the state was saved
        ("keyframes", "interval", "interval"),  # a fallback carries over until keyframes come back
    ],
)
def test_mode_in_effect(configured, saved, in_effect):
    state = SamplerState(mode=saved) if saved else None
    assert Sampler(SamplerConfig(mode=configured), state).state.mode == in_effect
