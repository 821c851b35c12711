"""Value types and the backend protocol of the engines room."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from livemod.engines.card import ModelCard


@dataclass(frozen=True)
class Outputs:
    """What one batched run returns.

    Attributes:
        logits: float32 (N, C).
        probs: float32 (N, C), softmax of logits.
        cams: float32 (N, C, h, w), per-class activation maps (CAM = Grad-CAM x Z for a
            linear head), before ReLU.
    """

    logits: np.ndarray
    probs: np.ndarray
    cams: np.ndarray


class Classifier(Protocol):
    """A backend that runs one model card on preprocessed batches.

    ``infer`` takes a float32 batch already laid out for the network (NHWC or NCHW, as the
    card says) with any N from 1 to ``max_batch`` and returns Outputs with N rows.
    """

    card: ModelCard
    backend: Literal["onnxruntime", "tensorrt"]
    max_batch: int

    def infer(self, batch: np.ndarray) -> Outputs: ...


Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in full-resolution pixels, x1/y1 exclusive."""


@dataclass(frozen=True)
class Recheck:
    """The small-object re-check of one label on one frame.

    Attributes:
        label: the watched label.
        before: probability on the whole frame.
        after: the best probability over the crops (the CAM boxes and tiles).
        box: the crop that produced ``after``, in full-resolution pixels.
        method: "cam_box" (hot region enlarged 1.5x), "tile" (fixed grid tile), "spot" (a
            cell of the whole frame whose own probability was high although the frame's was
            below the band) or "sweep" (a square tile of the budgeted sweep, or a crop around
            a hot cell of one); for the built-in signals (engines/signals.py) "qr" (a decoded QR
            code's outline) or "text" (a line of on-screen text), with after == before.
        crops: how many crops were classified.
    """

    label: str
    before: float
    after: float
    box: Box
    method: Literal["cam_box", "tile", "spot", "sweep", "qr", "text"]
    crops: int


@dataclass(frozen=True)
class Finding:
    """Something a built-in signal read in a frame: a decoded QR code or a line of on-screen text.

    Attributes:
        kind: "qr" or "text".
        text: the decoded payload or the recognised line (at most ``signals.MAX_TEXT`` characters).
        box: its bounding box in full-resolution pixels.
        confidence: the recogniser's confidence (1.0 for a decoded QR code).
    """

    kind: Literal["qr", "text"]
    text: str
    box: Box
    confidence: float = 1.0


@dataclass(frozen=True)
class FrameScores:
    """One model's view of one frame, for the labels (or groups) a policy watches.

    Attributes:
        model, version: from the card.
        scores: whole-frame probability per watched label (a group sums its members).
        cams: class map per watched label, float32 (h, w) (a group sums its members' maps).
        rechecks: re-checks run on this frame, by label.
        top: the model's top-5 (label, probability) on the whole frame, for reviewers.
        found: for the built-in signals, what produced each label's score (decoded QR codes,
            lines of text), by label; empty for classifiers.
    """

    model: str
    version: str
    scores: dict[str, float]
    cams: dict[str, np.ndarray]
    rechecks: dict[str, Recheck]
    top: tuple[tuple[str, float], ...] = ()
    found: dict[str, tuple[Finding, ...]] = field(default_factory=dict)

    def score(self, label: str) -> float:
        """The decision score: the max of the whole-frame and re-check probabilities."""
        p = self.scores[label]
        rc = self.rechecks.get(label)
        return max(p, rc.after) if rc else p
