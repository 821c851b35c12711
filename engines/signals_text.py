"""On-screen text: RapidOCR (the optional ``ocr`` extra, models from its own wheel only) and text rules."""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from livemod.core.errors import ConfigError
from livemod.engines.signals_qr import MAX_TEXT, UrlLists, box_of, url_host
from livemod.engines.types import Finding

log = logging.getLogger(__name__)

OCR_EXTRA = "pip install 'livemod[ocr]'"
# the PP-OCRv6 small detection and recognition models that the rapidocr wheel ships (nothing else is used)
DET_MODEL = "PP-OCRv6_det_small.onnx"
REC_MODEL = "PP-OCRv6_rec_small.onnx"

PHONE = re.compile(r"(?<![\w+])\+?\d[\d\s().\-]{5,18}\d(?!\w)")
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24}(?![\w-])", re.IGNORECASE)
HANDLE = re.compile(r"(?<![\w@.])@[a-z0-9_][a-z0-9_.]{2,29}(?<!\.)", re.IGNORECASE)
URL = re.compile(
    r"(?<![\w@.-])(?:[a-z][a-z0-9+.-]*://)?(?:www\.)?(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,24}(?::\d{1,5})?"
    r"(?:[/?#][^\s]*)?(?![\w@])",
    re.IGNORECASE,
)


class TextConfig(BaseModel):
    """When a stream's frames are read, and what the text rules look for.

    Attributes:
        interval_s: a stream is read at most once per this many seconds of stream time ...
        scene_min_s: ... except that a scene change or a new still image is read once this
            long has passed since the last read.
        max_side: the frame is scaled down (area) so its longer side is at most this before
            detection; boxes are given back in full-resolution pixels.
        min_confidence: lines the recogniser is less sure of are ignored.
        min_chars: lines with fewer non-space characters are ignored (a round shape reads as "O").
        banned_words: words or phrases (case-insensitive, whole words) for ``text:banned``.
        banned_patterns: regular expressions (Python ``re``, case-insensitive) for ``text:banned``.
        threads: ONNX Runtime threads for the OCR models (0 = its default, all cores).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: float = Field(default=10.0, gt=0)
    scene_min_s: float = Field(default=3.0, ge=0)
    max_side: int = Field(default=960, ge=160, le=4096)
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    min_chars: int = Field(default=2, ge=1)
    banned_words: tuple[str, ...] = ()
    banned_patterns: tuple[str, ...] = ()
    threads: int = Field(default=0, ge=0)

    @field_validator("banned_patterns")
    @classmethod
    def _compiles(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"banned pattern {p!r} is not a regular expression: {exc}") from exc
        return v

    @cached_property
    def banned(self) -> re.Pattern[str] | None:
        """One case-insensitive expression for the banned words and patterns (None when both are empty)."""
        parts = [rf"(?<!\w){re.escape(w.strip())}(?!\w)" for w in self.banned_words if w.strip()]
        parts += [f"(?:{p})" for p in self.banned_patterns]
        return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _digits(s: str) -> int:
    return sum(c.isdigit() for c in s)


def classify_line(text: str, config: TextConfig, urls: UrlLists) -> set[str]:
    """The ``text`` labels one recognised line matches (besides ``any``).

    phone: 7 to 15 digits with spaces, dots, dashes or brackets between, optionally after "+";
    email: name@host.tld; handle: @name (3-30 letters, digits, "_" or "."), not inside an email;
    url: a host name with a 2-24 letter last label, with or without a scheme or path;
    url_denied: such a URL whose host ``urls`` refuses; banned: the policy's words or patterns.
    """
    labels: set[str] = set()
    if any(7 <= _digits(m.group()) <= 15 for m in PHONE.finditer(text)):
        labels.add("phone")
    emails = list(EMAIL.finditer(text))
    if emails:
        labels.add("email")
    rest = EMAIL.sub(" ", text)
    if HANDLE.search(rest):
        labels.add("handle")
    for m in URL.finditer(rest):
        host = url_host(m.group())
        if host is None:
            continue
        labels.add("url")
        if urls.denied(host):
            labels.add("url_denied")
    if config.banned is not None and config.banned.search(text):
        labels.add("banned")
    return labels


def text_scores(lines: list[Finding], config: TextConfig, urls: UrlLists) -> dict[str, tuple[Finding, ...]]:
    """The lines behind each ``text`` label (``any``: every line at or above ``min_confidence``
    with at least ``min_chars`` characters)."""
    kept = [f for f in lines
            if f.confidence >= config.min_confidence and sum(not c.isspace() for c in f.text) >= config.min_chars]
    out: dict[str, list[Finding]] = {label: [] for label in TEXT_LABELS}
    for f in kept:
        out["any"].append(f)
        for label in classify_line(f.text, config, urls):
            out[label].append(f)
    return {k: tuple(v) for k, v in out.items()}


TEXT_LABELS = ("any", "phone", "url", "url_denied", "email", "handle", "banned")


def ocr_unavailable() -> str | None:
    """Why the text signal cannot run here (the extra is missing), or None."""
    try:
        spec = importlib.util.find_spec("rapidocr")
    except (ImportError, ValueError):  # blocked (sys.modules entry None) or broken
        spec = None
    if spec is None or spec.origin is None:
        return f"the text signal needs RapidOCR, which is not installed: {OCR_EXTRA}"
    models = Path(spec.origin).parent / "models"
    missing = [m for m in (DET_MODEL, REC_MODEL) if not (models / m).is_file()]
    if missing:
        return f"the installed rapidocr has no {', '.join(missing)} in {models} (livemod never downloads models): {OCR_EXTRA}"
    return None


class Reader:
    """RapidOCR with the models shipped inside its wheel; loaded on first use, one call at a time.

    Args:
        threads: ONNX Runtime intra-op threads (0 = its default).
    """

    def __init__(self, threads: int = 0) -> None:
        why = ocr_unavailable()
        if why:
            raise ConfigError(why, reason="ocr_unavailable")
        import rapidocr  # noqa: PLC0415 - the optional extra

        models = Path(rapidocr.__file__).parent / "models"
        params: dict[str, Any] = {
            "Global.use_cls": False,  # on-screen text is upright; the angle classifier would cost a pass
            "Global.log_level": "warning",
            "Det.model_path": str(models / DET_MODEL),
            "Rec.model_path": str(models / REC_MODEL),
            # the scaling is done here (TextConfig.max_side): the detector takes the image as it is
            "Det.limit_type": "max",
            "Det.limit_side_len": 4096,
        }
        if threads:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
        self._engine = rapidocr.RapidOCR(params=params)
        self._lock = threading.Lock()

    def read(self, rgb: np.ndarray, max_side: int) -> list[Finding]:
        """Recognised lines of an RGB frame.

        Args:
            rgb: uint8 (H, W, 3) at full resolution.
            max_side: scale down (area) so the longer side is at most this first.

        Returns:
            One Finding per line (kind "text", the recogniser's confidence, text cut to MAX_TEXT,
            box in full-resolution pixels).
        """
        h, w = rgb.shape[:2]
        s = min(1.0, max_side / max(h, w))
        img = rgb if s >= 1.0 else cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        with self._lock:
            res = self._engine(np.ascontiguousarray(img[..., ::-1]))
        if res.boxes is None or res.txts is None:
            return []
        out = []
        for box, text, score in zip(res.boxes, res.txts, res.scores):
            text = str(text).strip()
            if text:
                out.append(Finding("text", text[:MAX_TEXT], box_of(np.asarray(box) / s, w, h), round(float(score), 4)))
        return out
