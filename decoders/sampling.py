"""Which frames to classify: keyframes, intervals, scene changes, near-duplicate skip. Pure logic, no I/O."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from livemod.core.types import SampleReason
from pydantic import BaseModel, ConfigDict, Field

SampleMode = Literal["keyframes", "interval"]
THUMB_SIZE = 32  # the grey thumbnail the decoder hands to the sampler is THUMB_SIZE x THUMB_SIZE


class SamplerConfig(BaseModel):
    """Which decoded frames are worth classifying.

    Attributes:
        mode: "keyframes" decodes only keyframes (the decoder skips the rest: cheapest);
            "interval" decodes every frame and samples one every ``interval_s`` of PTS.
        interval_s: sampling period in interval mode, and while keyframes cannot keep the
            coverage guarantee (capped at ``max_gap_s``).
        max_gap_s: the coverage guarantee: no stretch of stream time longer than this passes
            without a sampled frame. It is judged on the frames the decoder actually
            produced, not on packet flags: in keyframes mode, when no frame has come out for
            ``max_gap_s`` (intra refresh, keyframes that yield nothing under
            ``skip_frame="NONKEY"``, long or stopped GOPs), the decoder goes back to the last
            keyframe it produced, decodes every frame from there and samples every
            ``interval_s`` (mode "interval"). Keyframes mode resumes when the decoder
            produces two keyframes at most ``max_gap_s`` apart.
        scene_threshold: mean absolute difference (0-255) of a 32x32 grey thumbnail from the
            last sampled frame that forces a sample between intervals. It is checked only on
            frames that are decoded anyway: in keyframes mode the decoder skips non-key frames
            (``skip_frame="NONKEY"``), so the scene trigger acts in interval mode and in the
            fallback. 0 = off.
        dup_max_distance: a frame whose 64-bit dHash is within this Hamming distance of the
            last emitted frame is a near-duplicate (reason "duplicate"). Negative = off.
        heartbeat_s: a still scene is emitted for classification again at least this often.
    """

    model_config = ConfigDict(extra="forbid")

    mode: SampleMode = "keyframes"
    interval_s: float = Field(default=1.0, gt=0)
    max_gap_s: float = Field(default=3.0, gt=0, description="most stream seconds without a sampled frame")
    scene_threshold: float = Field(default=30.0, ge=0, le=255)
    dup_max_distance: int = Field(default=4, le=64)
    heartbeat_s: float = Field(default=10.0, gt=0)


# packets the decoder may hold a keyframe back before it comes out (reordering, frame threads):
# a stream is not judged keyframe-less until this many packets have passed since the last keyframe packet
DECODER_DELAY_PACKETS = 16
_EPS = 1e-6


def dhash(gray: np.ndarray) -> int:
    """64-bit difference hash.

    Args:
        gray: grey image already scaled to shape (8, 9), any real dtype.

    Returns:
        An int in [0, 2**64): bit (r, c), row-major from the most significant bit, is set when
        pixel (r, c + 1) is brighter than pixel (r, c).
    """
    if gray.shape != (8, 9):
        raise ValueError(f"dhash needs an (8, 9) grey image, got {gray.shape}")
    g = gray.astype(np.float32)
    bits = (g[:, 1:] > g[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two 64-bit hashes."""
    return (a ^ b).bit_count()


def thumb_hash(thumb: np.ndarray) -> int:
    """dHash of a grey thumbnail, block-averaged down to (8, 9) in numpy.

    Args:
        thumb: uint8 grey image (H, W) with H a multiple of 8 and W >= 9, e.g. the (32, 32)
            thumbnail FFmpeg's scaler makes for every decoded frame the sampler looks at.
    """
    if thumb.ndim != 2 or thumb.shape[0] % 8 or thumb.shape[1] < 9:
        raise ValueError(f"thumb_hash needs a grey (8k, >=9) thumbnail, got {thumb.shape}")
    t = thumb.astype(np.float32)
    # columns -> 9 by linear interpolation, rows -> 8 by block means
    cols = np.linspace(0, t.shape[1] - 1, 9)
    lo = np.floor(cols).astype(int)
    hi = np.minimum(lo + 1, t.shape[1] - 1)
    w = cols - lo
    resampled = t[:, lo] * (1 - w) + t[:, hi] * w
    small = resampled.reshape(8, t.shape[0] // 8, 9).mean(axis=1)
    return dhash(small)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (0-255) of two uint8 images of the same shape."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@dataclass
class SamplerState:
    """What the sampler remembers, per stream, across the segments of one live stream.

    Times are stream seconds (the reference's wall-clock start plus PTS, when known), so the
    interval and heartbeat carry over from one segment to the next. ``to_dict``/``from_dict``
    give a JSON-safe round trip for the service's state store.

    Attributes:
        mode: the sampling mode in effect (keyframes, or interval after a fallback).
        last_emit_t: time of the last frame emitted for classification (not duplicates).
        last_slot_t: time of the last interval slot taken.
        last_key_t: time of the last keyframe the decoder produced.
        first_t: time of the first packet seen (the gap clock before any sample).
        last_sample_t: time of the last sampled frame, duplicates included (the gap clock).
        max_gap_s: the longest stream time seen between two sampled frames of the stream.
        last_hash: dHash of the last emitted frame.
        last_thumb: hex of the last emitted frame's (32, 32) uint8 grey thumbnail.
        decoded, sampled, skipped_dup, fallbacks: counters.
    """

    mode: SampleMode = "keyframes"
    last_emit_t: float | None = None
    last_slot_t: float | None = None
    last_key_t: float | None = None
    first_t: float | None = None
    last_sample_t: float | None = None
    max_gap_s: float = 0.0
    last_hash: int | None = None
    last_thumb: str | None = None
    decoded: int = 0
    sampled: int = 0
    skipped_dup: int = 0
    fallbacks: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerState:
        """Rebuild from ``to_dict`` output; unknown keys (from another version) are ignored and
        missing ones (an older version) take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in names})
        if state.mode not in ("keyframes", "interval"):
            raise ValueError(f"unknown sampler mode {state.mode!r}")
        return state


class Sampler:
    """Decides, frame by frame, what gets classified, and keeps the coverage guarantee.

    The decoder calls ``on_packet`` for every demuxed video packet before decoding it (it
    says when the decoder must decode more, or may decode less), ``needs_thumb`` to skip
    work, ``decide`` for every decoded frame, and ``on_end`` when a source's packets end.
    ``gap`` is the stream time since the previous sample, for the frame ``decide`` just took.

    Args:
        config: the sampling settings.
        state: carried-over state (a new one in ``config.mode`` when None); mutated in place.
            Interval mode in the settings wins over a saved keyframes mode; a saved interval
            mode (a fallback) stays until keyframes come back.
    """

    def __init__(self, config: SamplerConfig, state: SamplerState | None = None) -> None:
        self.config = config
        self.state = state if state is not None else SamplerState(mode=config.mode)
        if config.mode == "interval":
            self.state.mode = "interval"  # settings changed since the state was saved; a fallback state stays
        self.gap: float | None = None
        self._since_key = 0  # packets since the last keyframe packet
        self._key_pending = False  # a keyframe packet has not produced its frame yet
        self._blind = False  # keyframe packets come and produce nothing (intra-refresh recovery points)
        self._resume = False  # the decoder produced keyframes close enough: keyframes mode at the next keyframe packet

    @property
    def keyframes_only(self) -> bool:
        """True while the decoder may skip non-key frames (``skip_frame="NONKEY"``)."""
        return self.state.mode == "keyframes"

    @property
    def fill_s(self) -> float:
        """The sampling period when keyframes do not do it: ``interval_s``, at most ``max_gap_s``."""
        return min(self.config.interval_s, self.config.max_gap_s)

    def want_decode(self, is_key: bool) -> bool:
        """Whether a packet's frame needs decoding at all: in keyframes mode only keyframes do."""
        return is_key or not self.keyframes_only

    def _due(self, t: float, last: float | None) -> bool:
        return last is None or t - last >= self.fill_s - _EPS or t < last - self.config.max_gap_s

    def needs_thumb(self, t: float, is_key: bool) -> bool:
        """Whether ``decide`` will look at the thumbnail of a frame at time ``t``.

        The thumbnail is needed when the frame may be emitted (a keyframe, a non-key frame the
        decoder produced anyway when a sample is due, a due interval slot) or when the scene
        trigger is on in interval mode; otherwise the decoder can skip making it.
        """
        s, c = self.state, self.config
        if s.mode == "keyframes":
            return is_key or self._due(t, s.last_sample_t)
        return self._due(t, s.last_slot_t) or c.scene_threshold > 0

    def start_fill(self) -> None:
        """Switch to interval sampling from the last sample on (the decoder decodes every frame)."""
        s = self.state
        s.mode = "interval"
        s.last_slot_t = s.last_sample_t
        s.fallbacks += 1
        self._resume = False

    def _gap_clock(self, t: float) -> float:
        s = self.state
        if s.first_t is None:
            s.first_t = t
        ref = s.last_sample_t if s.last_sample_t is not None else s.first_t
        if t < ref - self.config.max_gap_s:  # the stream clock started again: so does the gap clock
            s.first_t, s.last_sample_t = t, None
            ref = t
        return ref

    def on_packet(self, t: float, is_key: bool) -> SampleMode | None:
        """Watch a demuxed video packet (before it is decoded); returns the new mode when it changes.

        "interval": no frame has come out of the decoder for ``max_gap_s`` of stream time
        (a keyframe packet that may still produce its frame, the decoder holding it back,
        postpones this by up to ``DECODER_DELAY_PACKETS`` packets; keyframe packets that were
        seen to produce nothing do not): the caller must decode every frame from the last keyframe the
        decoder produced (the samples fill the gap) and from now on. "keyframes": this is a
        keyframe packet, the decoder produced keyframes at most ``max_gap_s`` apart, and the
        settings ask for keyframes: the caller may skip non-key frames from this packet on.
        """
        s, c = self.state, self.config
        ref = self._gap_clock(t)
        if is_key:
            self._since_key = 0
            self._blind = self._key_pending  # the previous keyframe packet never produced a frame
            self._key_pending = True
            if s.mode == "interval" and self._resume and c.mode == "keyframes":
                self._resume = False
                s.mode = "keyframes"
                return "keyframes"
            return None
        self._since_key += 1
        if s.mode != "keyframes":
            return None
        since = t - ref
        held_back = self._key_pending and not self._blind and self._since_key < DECODER_DELAY_PACKETS
        if since >= c.max_gap_s - _EPS and (not held_back or since >= 2 * c.max_gap_s):
            self.start_fill()
            return "interval"
        return None

    def on_end(self, t: float) -> bool:
        """The source's packets ended at time ``t`` (the last packet's): True when the frames
        since the last sample must be decoded to keep the guarantee (the caller then decodes
        every frame from the last keyframe produced, as for "interval" from ``on_packet``)."""
        s, c = self.state, self.config
        if s.mode != "keyframes":
            return False
        if t - self._gap_clock(t) >= c.max_gap_s - _EPS:
            self.start_fill()
            return True
        return False

    def decide(self, t: float, is_key: bool, thumb: np.ndarray | None) -> SampleReason | None:
        """Whether to emit a decoded frame, and why.

        Args:
            t: the frame's time in stream seconds.
            is_key: the decoder says the frame is a keyframe.
            thumb: (32, 32) uint8 grey thumbnail (for the duplicate and scene checks), or None
                (then neither check runs).

        Returns:
            The reason to sample it, or None to drop it. In keyframes mode a non-key frame
            that the decoder produced anyway (VP9's decoder ignores ``skip_frame``) is taken
            as "interval" every ``fill_s``. "duplicate" means the frame would be sampled but
            its dHash is within ``dup_max_distance`` of the last emitted frame: callers repeat
            that frame's scores instead of classifying it again (static scenes cost nothing,
            and rule windows still advance). A still scene is emitted again as "heartbeat"
            once ``heartbeat_s`` has passed since the last emitted frame. A scene cut is never
            a duplicate. Every returned reason sets ``gap``.
        """
        s, c = self.state, self.config
        s.decoded += 1
        if is_key:
            self._key_pending = self._blind = False
            if s.mode == "interval" and s.last_key_t is not None and 0 < t - s.last_key_t <= c.max_gap_s + _EPS:
                self._resume = True
            s.last_key_t = t
        reason: SampleReason | None = None
        if s.mode == "keyframes":
            if is_key:
                reason = "keyframe"
            elif self._due(t, s.last_sample_t):
                reason = "interval"
        elif self._due(t, s.last_slot_t):
            reason = "interval"
            s.last_slot_t = t
        elif c.scene_threshold > 0 and thumb is not None and s.last_thumb is not None:
            prev = np.frombuffer(bytes.fromhex(s.last_thumb), np.uint8)
            if prev.size == thumb.size and mean_abs_diff(thumb, prev.reshape(thumb.shape)) >= c.scene_threshold:
                reason = "scene"
        if reason is None:
            return None
        self._record(t)
        h = thumb_hash(thumb) if thumb is not None else None
        if (
            reason != "scene"  # a cut is never a duplicate, whatever the hash says (dHash ignores brightness)
            and c.dup_max_distance >= 0
            and h is not None
            and s.last_hash is not None
            and hamming(h, s.last_hash) <= c.dup_max_distance
        ):
            if s.last_emit_t is not None and 0 <= t - s.last_emit_t < c.heartbeat_s:
                s.skipped_dup += 1
                return "duplicate"
            reason = "heartbeat"
        s.last_emit_t = t
        s.last_hash = h
        s.last_thumb = np.ascontiguousarray(thumb, np.uint8).tobytes().hex() if thumb is not None else None
        s.sampled += 1
        return reason

    def _record(self, t: float) -> None:
        """A frame of time ``t`` is sampled: measure the gap since the previous one."""
        s = self.state
        self.gap = t - s.last_sample_t if s.last_sample_t is not None and t >= s.last_sample_t else None
        if self.gap is not None:
            s.max_gap_s = max(s.max_gap_s, self.gap)
        s.last_sample_t = t
