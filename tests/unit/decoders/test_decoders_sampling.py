"""Sampling decisions, hashing and state persistence (pure logic)."""

from __future__ import annotations

import numpy as np
import pytest

from livemod.decoders.config import SamplerConfig
from livemod.decoders.sampling import Sampler, SamplerState, dhash, hamming, thumb_hash

RNG = np.random.default_rng(7)
A = RNG.integers(0, 255, (32, 32), dtype=np.uint8)
B = RNG.integers(0, 255, (32, 32), dtype=np.uint8)


@pytest.mark.parametrize("a, b, d", [(0, 0, 0), (0, 1, 1), (0, 2**64 - 1, 64), (0b1011, 0b0001, 2)])
def test_hamming(a, b, d):
    assert hamming(a, b) == d


@pytest.mark.parametrize(
    "img, expected",
    [
        (np.tile(np.arange(9, dtype=np.uint8), (8, 1)), 2**64 - 1),  # rising left to right: all bits set
        (np.tile(np.arange(9, 0, -1, dtype=np.uint8), (8, 1)), 0),
        (np.full((8, 9), 7, np.uint8), 0),
    ],
)
def test_dhash_table(img, expected):
    assert dhash(img) == expected


def test_dhash_rejects_wrong_shape():
    with pytest.raises(ValueError):
        dhash(np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize(
    "noise, max_distance",
    [(0, 0), (3, 4)],  # small noise keeps the hash within a few bits
)
def test_thumb_hash_is_robust_to_noise(noise, max_distance):
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.float32), (32, 1))
    smooth = (smooth + np.linspace(0, 60, 32)[:, None]).clip(0, 255).astype(np.uint8)
    noisy = (smooth.astype(int) + np.random.default_rng(1).integers(-noise, noise + 1, smooth.shape)).clip(0, 255)
    assert hamming(thumb_hash(smooth), thumb_hash(noisy.astype(np.uint8))) <= max_distance
    assert hamming(thumb_hash(A), thumb_hash(B)) > 10


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
        # a scene change between intervals forces a sample
        (
            SamplerConfig(mode="interval", interval_s=10.0, scene_threshold=20, dup_max_distance=-1),
            [(0, True, A), (0.1, False, A), (0.2, False, B)],
            ["interval", None, "scene"],
        ),
        # near-duplicates are marked until the heartbeat
        (
            SamplerConfig(mode="interval", interval_s=1.0, heartbeat_s=3.0, scene_threshold=0),
            [(t, False, A) for t in (0, 1, 2, 3, 4)],
            ["interval", "duplicate", "duplicate", "heartbeat", "duplicate"],
        ),
        # duplicate skip off
        (
            SamplerConfig(mode="interval", interval_s=1.0, dup_max_distance=-1, scene_threshold=0),
            [(t, False, A) for t in (0, 1, 2)],
            ["interval", "interval", "interval"],
        ),
    ],
)
def test_sampling_table(cfg, frames, expected):
    got, _ = _run(cfg, frames)
    assert got == expected


@pytest.mark.parametrize(
    "fallback_s, packets, expect_switch_at",
    [
        (3.0, [(0, True), (1, False), (2, False), (3, False), (4, False)], 3),
        (3.0, [(0, True), (1, False), (2, True), (4, False), (5, True)], None),  # keyframes keep coming
        (2.0, [(0, False), (1, False), (2, False)], 2),  # no keyframe at all from the start
    ],
)
def test_keyframe_fallback(fallback_s, packets, expect_switch_at):
    s = Sampler(SamplerConfig(mode="keyframes", keyframe_fallback_s=fallback_s))
    switched = [t for t, key in packets if s.on_packet(t, key)]
    assert switched == ([] if expect_switch_at is None else [expect_switch_at])
    assert s.keyframes_only == (expect_switch_at is None)


def test_state_round_trip_carries_interval_and_hash():
    cfg = SamplerConfig(mode="interval", interval_s=1.0, heartbeat_s=100, scene_threshold=0)
    _, state = _run(cfg, [(0, True, A)])
    restored = SamplerState.from_dict(state.to_dict())
    got, _ = _run(cfg, [(0.5, False, B), (1.0, False, A)], restored)
    assert got == [None, "duplicate"]
    assert restored.sampled == 1 and restored.skipped_dup == 1
