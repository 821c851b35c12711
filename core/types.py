"""Value types that flow out of the decoders room."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

import numpy as np

SampleReason = Literal["keyframe", "interval", "scene", "heartbeat", "image", "duplicate"]


@dataclass(frozen=True)
class Resize:
    """A working-size image a model wants, produced by FFmpeg's scaler.

    Attributes:
        width, height: target size in pixels.
        keep_aspect: False squashes to exactly width x height; True fits inside the box
            keeping the aspect ratio (the engine pads it: letterbox).
    """

    width: int
    height: int
    keep_aspect: bool = False


class GrayReader(Protocol):
    """``SampledFrame.gray``: full-range grey of the frame, full size or scaled to ``width``."""

    def __call__(self, width: int | None = None) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class SampledFrame:
    """One frame picked for classification.

    Attributes:
        stream_id: the stream it came from.
        index: sequence number of this sample within its source (0-based).
        pts: presentation time in seconds from the start of the source.
        wall_clock: Unix time of the frame: the reference's wall-clock start + pts when the
            ingest gave one, else the time it was decoded.
        keyframe: True when the frame was a keyframe in the bitstream.
        reason: why it was sampled; "duplicate" marks a near-duplicate of the stream's last
            sampled frame, which a caller may score by repeating that frame's result.
        width, height: full-resolution size in pixels.
        images: working-size RGB images, uint8, shape (h, w, 3), one per requested Resize.
        full_rgb: returns the full-resolution RGB frame, uint8 (height, width, 3). It converts
            lazily from the decoded frame, so only frames that need a re-check pay for it.
            Drop the SampledFrame to release the decoded picture.
        gap_s: stream seconds since the previous sampled frame of the same stream (across
            segments and reconnects; an outage counts), None for the stream's first sample.
        gray: the frame as full-range grey, uint8 (h, w): ``gray()`` at full resolution (converted
            lazily and kept, like ``full_rgb``), ``gray(width)`` scaled by FFmpeg (area) to that
            width keeping the aspect. The built-in signals read it (quality, QR codes); None where
            the decoder does not offer it (callers convert ``full_rgb``).
    """

    stream_id: str
    index: int
    pts: float
    wall_clock: float
    keyframe: bool
    reason: SampleReason
    width: int
    height: int
    images: dict[Resize, np.ndarray]
    full_rgb: Callable[[], np.ndarray] = field(repr=False)
    gap_s: float | None = None
    gray: GrayReader | None = field(default=None, repr=False)
