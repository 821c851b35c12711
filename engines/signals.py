"""Built-in models that are not ONNX classifiers: stream health (``quality``), QR codes (``qr``) and on-screen text (``text``).

Policies use their labels like any other ``model:label``. Each runs on what the decoder already
has (the sampled frame's full-resolution grey or RGB), returns a ``FrameScores`` per frame and
keeps a little state per stream (a clock of stream seconds, the last frame's small grey image,
when QR and OCR last ran). The built-in cards live here, not in engines/cards/: they have no
file, so ``livemod models prepare`` never sees them; ``rules.policy.validate_against_cards``
consults ``SIGNAL_MODELS``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from livemod.core.types import SampledFrame
from livemod.engines.signals_qr import QrConfig, UrlLists, find_codes, make_detector, qr_scores
from livemod.engines.signals_text import TEXT_LABELS, Reader, TextConfig, ocr_unavailable, text_scores
from livemod.engines.types import Finding, FrameScores, Recheck


@dataclass(frozen=True)
class SignalCard:
    """A built-in model's card: its name, labels and version (no file, nothing to prepare).

    Attributes:
        unavailable: returns why the signal cannot run on this machine (an optional extra
            missing), or None.
    """

    name: str
    version: str
    labels: tuple[str, ...]
    description: str
    unavailable: Callable[[], str | None] = field(default=lambda: None, compare=False)


QUALITY_LABELS = ("black", "flat", "dark", "bright", "blurred", "frozen")
QR_LABELS = ("any", "url", "url_denied")

SIGNAL_MODELS: dict[str, SignalCard] = {
    "quality": SignalCard("quality", "1", QUALITY_LABELS,
                          "stream health from the frame's grey image: black, one colour, too dark, too bright, blurred, frozen"),
    "qr": SignalCard("qr", "1", QR_LABELS, "QR codes found and decoded with OpenCV; their URLs against host lists"),
    "text": SignalCard("text", "1", TEXT_LABELS, "on-screen text read with RapidOCR (the ocr extra) and text rules",
                       unavailable=ocr_unavailable),
}


# ---- quality: pure maths ---------------------------------------------------------------


class QualityConfig(BaseModel):
    """How the ``quality`` labels are scored (all on full-range luma, 0-255).

    Attributes:
        work_width: the grey frame is scaled (area) to this width, keeping its aspect, for
            every measure (blur is judged at this scale, whatever the stream's resolution).
        black_level: a pixel at or below this counts as black; ``black`` is the share of such pixels.
        flat_std: a frame whose grey standard deviation is below this is flat (black, one
            colour): ``flat`` is 1 on it, falling to 0 at twice this; ``dark``, ``bright``,
            ``blurred`` and ``frozen`` are 0 on it (they judge pictures; ``black`` and ``flat``
            say what a flat frame is).
        blur_sharp, blur_soft: variance of the Laplacian at ``work_width`` at and above which
            ``blurred`` is 0, and at and below which it is 1 (log-linear between).
        still_delta, still_share: a frame is unchanged from the stream's previous sampled frame
            when at most ``still_share`` of the pixels of a 160-pixel-wide copy differ by more
            than ``still_delta``.
        frozen_full_s: ``frozen`` = seconds of stream time unchanged / this, capped at 1
            (with the default 60, a rule "frozen for 30 s" alerts at 0.5).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    work_width: int = Field(default=640, ge=64, le=1920)
    black_level: int = Field(default=32, ge=0, le=255)
    flat_std: float = Field(default=4.0, ge=0)
    blur_sharp: float = Field(default=150.0, gt=0)
    blur_soft: float = Field(default=15.0, gt=0)
    still_delta: int = Field(default=6, ge=0, le=255)
    still_share: float = Field(default=0.002, ge=0, le=1)
    frozen_full_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> "QualityConfig":
        if self.blur_soft >= self.blur_sharp:
            raise ValueError(f"blur_soft {self.blur_soft} must be below blur_sharp {self.blur_sharp}")
        return self


STILL_WIDTH = 160


def work_gray(gray: np.ndarray, width: int) -> np.ndarray:
    """The grey frame scaled (area) to ``width`` keeping its aspect; a narrower frame is kept as is."""
    h, w = gray.shape[:2]
    if w <= width:
        return gray
    return cv2.resize(gray, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def laplacian_var(gray: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of a uint8 grey image (the usual focus measure)."""
    lap = cv2.Laplacian(gray, cv2.CV_16S, ksize=1)
    _mean, std = cv2.meanStdDev(lap)
    return float(std[0, 0]) ** 2


def flat_score(std: float, flat_std: float) -> float:
    """1 when the grey standard deviation is below ``flat_std``, 0 from twice that, linear between."""
    if flat_std <= 0:
        return 0.0
    return float(min(1.0, max(0.0, 2.0 - std / flat_std)))


def dark_score(mean: float) -> float:
    """1 at mean luma 0, 0.5 at 64, 0 from 128 up: 1 - mean / 128, clipped."""
    return float(min(1.0, max(0.0, 1.0 - mean / 128.0)))


def bright_score(mean: float) -> float:
    """0 up to mean luma 128, 0.5 at 191.5, 1 at 255: (mean - 128) / 127, clipped."""
    return float(min(1.0, max(0.0, (mean - 128.0) / 127.0)))


def blur_score(var: float, std: float, cfg: QualityConfig) -> float:
    """0 for a sharp frame (Laplacian variance >= blur_sharp), 1 at or below blur_soft, log-linear
    between; 0 for a flat frame (grey std < flat_std), which has nothing to judge focus on."""
    if std < cfg.flat_std:
        return 0.0
    if var <= cfg.blur_soft:
        return 1.0
    if var >= cfg.blur_sharp:
        return 0.0
    return float(math.log(cfg.blur_sharp / var) / math.log(cfg.blur_sharp / cfg.blur_soft))


def unchanged(prev: np.ndarray | None, cur: np.ndarray, delta: int, share: float) -> bool:
    """True when at most ``share`` of the pixels of two same-size grey images differ by more than ``delta``."""
    if prev is None or prev.shape != cur.shape:
        return False
    diff = cv2.absdiff(prev, cur)
    return float(np.count_nonzero(diff > delta)) <= share * diff.size


def frozen_score(seconds: float, full_s: float) -> float:
    """Seconds frozen / full_s, capped at 1."""
    return float(min(1.0, max(0.0, seconds / full_s)))


@dataclass(frozen=True)
class QualityReading:
    """The measures behind the ``quality`` scores of one frame.

    Attributes:
        mean, std: of the grey work image (0-255).
        black_share: share of its pixels at or below ``black_level``.
        lap_var: variance of its Laplacian.
        frozen_s: seconds of stream time the picture has not changed (0 on a flat frame).
    """

    mean: float
    std: float
    black_share: float
    lap_var: float
    frozen_s: float

    def scores(self, cfg: QualityConfig) -> dict[str, float]:
        """Every ``quality`` label's score (see SIGNAL_MODELS and the README's table)."""
        picture = self.std >= cfg.flat_std
        return {
            "black": round(self.black_share, 6),
            "flat": round(flat_score(self.std, cfg.flat_std), 6),
            "dark": round(dark_score(self.mean), 6) if picture else 0.0,
            "bright": round(bright_score(self.mean), 6) if picture else 0.0,
            "blurred": round(blur_score(self.lap_var, self.std, cfg), 6),
            "frozen": round(frozen_score(self.frozen_s, cfg.frozen_full_s), 6),
        }


# ---- the runner ------------------------------------------------------------------------


class SignalConfig(BaseModel):
    """A policy's ``signals:`` section: how its built-in models score (defaults apply when absent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quality: QualityConfig = Field(default_factory=QualityConfig)
    qr: QrConfig = Field(default_factory=QrConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    urls: UrlLists = Field(default_factory=UrlLists)


@dataclass
class _Stream:
    clock: float = 0.0  # stream seconds seen (sum of the sampled frames' gaps)
    last_wall: float | None = None
    still: np.ndarray | None = None  # the previous sampled frame's STILL_WIDTH grey copy
    frozen_s: float = 0.0
    last_qr: float | None = None
    last_text: float | None = None


def _due(clock: float, last: float | None, reason: str, interval_s: float, scene_min_s: float) -> bool:
    if last is None or clock < last:
        return True
    since = clock - last
    return since >= interval_s or (reason in ("scene", "image") and since >= scene_min_s)


class Signals:
    """Runs the built-in models a policy watches on sampled frames, keeping per-stream state.

    Call ``score`` for every sampled frame of a stream in stream order, duplicates included
    (they advance the frozen clock). ``quality`` is scored on every frame; ``qr`` and ``text``
    only when due (``interval_s`` of stream time since the stream's last scan, or
    ``scene_min_s`` after a scene change): on other frames their model is absent from the
    result, so rules on them do not move. Not thread-safe: one caller at a time (the batcher).

    Args:
        max_streams: streams whose state is remembered (least recently seen dropped first).
    """

    def __init__(self, max_streams: int = 10_000) -> None:
        self.max_streams = max_streams
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._detectors: dict[str, object] = {}
        self._readers: dict[int, Reader] = {}

    def _stream(self, stream_id: str) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None:
            st = self._streams[stream_id] = _Stream()
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(stream_id)
        return st

    def reader(self, threads: int = 0) -> Reader:
        """The OCR reader (loaded once per thread setting)."""
        if threads not in self._readers:
            self._readers[threads] = Reader(threads)
        return self._readers[threads]

    def score(self, frame: SampledFrame, watched: Mapping[str, Collection[str]], config: SignalConfig) -> dict[str, FrameScores]:
        """Score one frame for the watched built-in labels.

        Args:
            frame: the sampled frame.
            watched: built-in model name -> labels the policy watches there.
            config: the policy's ``signals`` section.

        Returns:
            model name -> FrameScores (watched labels only), for each model that ran on this frame.
        """
        st = self._stream(frame.stream_id)
        step = frame.gap_s
        if step is None and st.last_wall is not None:  # still images carry no gap: their wall clocks do
            step = max(0.0, frame.wall_clock - st.last_wall)
        st.clock += step or 0.0
        st.last_wall = frame.wall_clock
        cache: dict[str, np.ndarray] = {}

        def gray(width: int | None = None) -> np.ndarray:
            """Full-resolution grey, or scaled to ``width`` (by FFmpeg when the decoder offers it)."""
            if frame.gray is not None:
                return frame.gray(width)
            if "full" not in cache:  # a frame from elsewhere: convert the RGB once
                cache["full"] = cv2.cvtColor(frame.full_rgb(), cv2.COLOR_RGB2GRAY)
            return cache["full"] if width is None else work_gray(cache["full"], width)

        out: dict[str, FrameScores] = {}
        if "quality" in watched:
            reading = self.quality(st, gray(config.quality.work_width), step, config.quality)
            scores = reading.scores(config.quality)
            out["quality"] = _scores("quality", {k: scores[k] for k in watched["quality"]}, {})
        if "qr" in watched and _due(st.clock, st.last_qr, frame.reason, config.qr.interval_s, config.qr.scene_min_s):
            st.last_qr = st.clock
            det = self._detectors.get(config.qr.detector)
            if det is None:
                det = self._detectors[config.qr.detector] = make_detector(config.qr.detector)
            codes = find_codes(det, gray(), config.qr.max_codes)  # type: ignore[arg-type]
            out["qr"] = _scores("qr", None, {k: v for k, v in qr_scores(codes, config.urls).items() if k in watched["qr"]})
        if "text" in watched and _due(st.clock, st.last_text, frame.reason, config.text.interval_s,
                                      config.text.scene_min_s):
            st.last_text = st.clock
            lines = self.reader(config.text.threads).read(frame.full_rgb(), config.text.max_side)
            found = text_scores(lines, config.text, config.urls)
            out["text"] = _scores("text", None, {k: v for k, v in found.items() if k in watched["text"]})
        return out

    @staticmethod
    def quality(st: _Stream, gray: np.ndarray, step: float | None, cfg: QualityConfig) -> QualityReading:
        """Measure one frame and advance the stream's frozen clock by ``step`` seconds when unchanged.

        Args:
            st: the stream's state (updated).
            gray: uint8 (h, w) grey frame, any size (scaled to ``work_width`` here when wider).
            step: stream seconds since the stream's previous sampled frame (None: unknown).
            cfg: the policy's quality settings.
        """
        work = work_gray(gray, cfg.work_width)
        mean, std = cv2.meanStdDev(work)
        m, s = float(mean[0, 0]), float(std[0, 0])
        black = float(np.count_nonzero(work <= cfg.black_level)) / work.size
        still = work_gray(work, STILL_WIDTH)
        if s < cfg.flat_std:
            st.frozen_s = 0.0  # a flat frame is black/dark/bright, never frozen
        elif step is not None and unchanged(st.still, still, cfg.still_delta, cfg.still_share):
            st.frozen_s += step
        else:
            st.frozen_s = 0.0
        st.still = still
        return QualityReading(mean=m, std=s, black_share=black, lap_var=laplacian_var(work), frozen_s=st.frozen_s)


def _scores(model: str, plain: dict[str, float] | None, found: dict[str, tuple[Finding, ...]]) -> FrameScores:
    """FrameScores of a built-in model: plain scores, or, for findings, the best confidence per label
    with the best finding's box as the label's "re-check" box (so alerts and evidence show it)."""
    if plain is not None:
        return FrameScores(model=model, version=SIGNAL_MODELS[model].version, scores=plain, cams={}, rechecks={})
    scores: dict[str, float] = {}
    rechecks: dict[str, Recheck] = {}
    for label, items in found.items():
        best = max(items, key=lambda f: f.confidence, default=None)
        scores[label] = best.confidence if best else 0.0
        if best is not None:
            rechecks[label] = Recheck(label, best.confidence, best.confidence, best.box, best.kind, 0)
    return FrameScores(model=model, version=SIGNAL_MODELS[model].version, scores=scores, cams={}, rechecks=rechecks,
                       found={k: v for k, v in found.items() if v})
