"""Which frames to classify: keyframes, intervals, scene changes, near-duplicate skip. Pure logic, no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from livemod.decoders.config import SamplerConfig
from livemod.decoders.types import SampleReason


def dhash(gray: np.ndarray) -> int:
    """64-bit difference hash of a grey image already scaled to (8, 9): bit = left < right neighbour."""
    if gray.shape != (8, 9):
        raise ValueError(f"dhash needs an (8, 9) grey image, got {gray.shape}")
    bits = (gray[:, 1:].astype(np.int16) > gray[:, :-1].astype(np.int16)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two 64-bit hashes."""
    return (a ^ b).bit_count()


def thumb_hash(thumb: np.ndarray) -> int:
    """dHash of a 32x32 grey thumbnail (block-averaged down to 8x9 without OpenCV)."""
    t = thumb.astype(np.float32)
    # 32 columns -> 9 by linear interpolation, 32 rows -> 8 by block means
    cols = np.linspace(0, t.shape[1] - 1, 9)
    lo = np.floor(cols).astype(int)
    hi = np.minimum(lo + 1, t.shape[1] - 1)
    w = cols - lo
    resampled = t[:, lo] * (1 - w) + t[:, hi] * w
    small = resampled.reshape(8, t.shape[0] // 8, 9).mean(axis=1)
    return dhash(small)


@dataclass
class SamplerState:
    """What the sampler remembers, per stream, across the segments of one live stream.

    Times are stream seconds (the reference's wall-clock start plus PTS, when known), so the
    interval and heartbeat carry over from one segment to the next.
    """

    mode: Literal["keyframes", "interval"] = "keyframes"
    last_emit_t: float | None = None
    last_slot_t: float | None = None
    last_key_t: float | None = None
    first_t: float | None = None
    last_hash: int | None = None
    last_thumb: str | None = None  # hex of the (32, 32) uint8 thumbnail
    decoded: int = 0
    sampled: int = 0
    skipped_dup: int = 0
    fallbacks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamplerState":
        return cls(**data)


class Sampler:
    """Decides, frame by frame, what gets classified.

    Args:
        config: the sampling settings.
        state: carried-over state (a new one when None); mutated in place.
    """

    def __init__(self, config: SamplerConfig, state: SamplerState | None = None) -> None:
        self.config = config
        self.state = state if state is not None else SamplerState(mode=config.mode)
        if state is None:
            self.state.mode = config.mode

    @property
    def keyframes_only(self) -> bool:
        """True while the decoder may skip non-key frames."""
        return self.state.mode == "keyframes"

    def on_packet(self, t: float, is_key: bool) -> bool:
        """Watch demuxed video packets; returns True when keyframe sampling must fall back to interval.

        In keyframes mode, when no keyframe was seen for ``keyframe_fallback_s`` of stream
        time (intra-refresh streams), the mode switches to interval for good.
        """
        s = self.state
        if s.first_t is None:
            s.first_t = t
        if is_key:
            s.last_key_t = t
            return False
        if s.mode != "keyframes":
            return False
        since = t - (s.last_key_t if s.last_key_t is not None else s.first_t)
        if since >= self.config.keyframe_fallback_s:
            s.mode = "interval"
            s.fallbacks += 1
            return True
        return False

    def decide(self, t: float, is_key: bool, thumb: np.ndarray | None) -> SampleReason | None:
        """Whether to emit a decoded frame, and why.

        Args:
            t: the frame's time in stream seconds.
            is_key: the frame is a keyframe.
            thumb: (32, 32) uint8 grey thumbnail (for the duplicate and scene checks), or None.

        Returns:
            The reason to sample it, or None to drop it. "duplicate" means the frame would be
            sampled but looks like the last emitted one: callers repeat that frame's scores
            instead of classifying it again (static scenes cost nothing, and rule windows
            still advance); a still scene is classified again after ``heartbeat_s``.
        """
        s, c = self.state, self.config
        s.decoded += 1
        reason: SampleReason | None = None
        if s.mode == "keyframes":
            if is_key:
                reason = "keyframe"
        elif s.last_slot_t is None or t - s.last_slot_t >= c.interval_s - 1e-6:
            reason = "interval"
            s.last_slot_t = t
        elif c.scene_threshold > 0 and thumb is not None and s.last_thumb is not None:
            prev = np.frombuffer(bytes.fromhex(s.last_thumb), np.uint8).reshape(thumb.shape)
            diff = float(np.abs(thumb.astype(np.int16) - prev.astype(np.int16)).mean())
            if diff >= c.scene_threshold:
                reason = "scene"
        if reason is None:
            return None
        h = thumb_hash(thumb) if thumb is not None else None
        if (
            reason != "scene"  # a cut is never a duplicate, whatever the hash says (it ignores brightness)
            and c.dup_max_distance >= 0
            and h is not None
            and s.last_hash is not None
            and hamming(h, s.last_hash) <= c.dup_max_distance
        ):
            if s.last_emit_t is not None and t - s.last_emit_t < c.heartbeat_s:
                s.skipped_dup += 1
                return "duplicate"
            reason = "heartbeat"
        s.last_emit_t = t
        s.last_hash = h
        s.last_thumb = np.ascontiguousarray(thumb, np.uint8).tobytes().hex() if thumb is not None else None
        s.sampled += 1
        return reason
