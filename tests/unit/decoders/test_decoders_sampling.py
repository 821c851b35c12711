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
        ("keyframes", {}, 30, 0.5, False, False, False),
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


@pytest.mark.parametrize(
    "fallback_s, packets, changes",
    [
        (3.0, [(0, True), (1, False), (2, False), (3, False), (4, False)], [(3, "interval")]),
        (3.0, [(0, True), (1, False), (2, True), (4, False), (5, True)], []),  # keyframes keep coming
        (2.0, [(0, False), (1, False), (2, False)], [(2, "interval")]),  # no keyframe at all from the start
        # keyframes come back 1 s apart after the fallback: keyframe sampling resumes
        (2.0, [(0, True), (1, False), (2, False), (5, True), (5.5, False), (6, True)], [(2, "interval"), (6, "keyframes")]),
        # keyframes come back but too far apart: stay in interval mode
        (2.0, [(0, True), (2, False), (5, True), (8, True)], [(2, "interval")]),
    ],
)
def test_keyframe_fallback(fallback_s, packets, changes):
    s = Sampler(SamplerConfig(mode="keyframes", keyframe_fallback_s=fallback_s))
    got = [(t, c) for t, key in packets if (c := s.on_packet(t, key)) is not None]
    assert got == changes
    assert s.keyframes_only == (not changes or changes[-1][1] == "keyframes")
    assert s.state.fallbacks == sum(c == "interval" for _, c in changes)


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
