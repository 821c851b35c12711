"""QR codes found and decoded with OpenCV on full-resolution frames, and the URL host lists both QR and text rules use."""

from __future__ import annotations

import fnmatch
import re
from typing import Literal
from urllib.parse import urlsplit

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from livemod.engines.types import Box, Finding

MAX_TEXT = 512  # a decoded payload or an OCR line is cut to this many characters in findings

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
_BARE_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,24}\.?(?::\d{1,5})?(?:[/?#]\S*)?$", re.IGNORECASE)


class UrlLists(BaseModel):
    """Which URL hosts a policy refuses: ``qr:url_denied`` and ``text:url_denied``.

    A URL is denied when its host matches a ``deny_hosts`` glob, or when ``allow_hosts`` is not
    empty and its host matches none of them. Globs are shell-style (``fnmatch``) on the lower-case
    host without a trailing dot: ``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``
    but not ``example.com`` itself (list both).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    deny_hosts: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()

    @field_validator("deny_hosts", "allow_hosts")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(g.strip().lower().rstrip(".") for g in v)
        if any(not g or any(c.isspace() for c in g) or "/" in g for g in out):
            raise ValueError(f"host globs must be non-empty host patterns without spaces or '/': {list(v)}")
        return out

    def denied(self, host: str) -> bool:
        """Whether a (lower-case) host is refused by these lists."""
        if any(fnmatch.fnmatchcase(host, g) for g in self.deny_hosts):
            return True
        return bool(self.allow_hosts) and not any(fnmatch.fnmatchcase(host, g) for g in self.allow_hosts)


def url_host(text: str) -> str | None:
    """The lower-case host of a URL, or None when the text is not an http(s) URL or a bare host.

    ``https://a.example/x`` and ``a.example/x`` give ``a.example``; ``mailto:``, ``tel:``,
    ``WIFI:`` payloads and plain words give None. Other schemes with a host (``ftp://``,
    ``tg://``) count too: the host is what the lists judge.
    """
    s = text.strip()
    if not s or any(c.isspace() for c in s):
        return None
    if not _SCHEME.match(s):
        if not _BARE_HOST.match(s):
            return None
        s = "http://" + s
    try:
        host = urlsplit(s).hostname
    except ValueError:
        return None
    if not host or "." not in host.strip("."):
        return None
    return host.lower().rstrip(".")


def box_of(points: np.ndarray, width: int, height: int) -> Box:
    """The (x0, y0, x1, y1) box around polygon points (N, 2), clipped to the frame, x1/y1 exclusive."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    x0, y0 = np.floor(p.min(axis=0)).astype(int)
    x1, y1 = np.ceil(p.max(axis=0)).astype(int) + 1
    return (max(0, int(x0)), max(0, int(y0)), min(width, int(x1)), min(height, int(y1)))


class QrConfig(BaseModel):
    """When and how a stream's frames are searched for QR codes.

    Attributes:
        interval_s: a stream is scanned at most once per this many seconds of stream time ...
        scene_min_s: ... except that a scene change (a frame sampled for reason "scene") or a
            new still image is scanned once this long has passed since the last scan.
        detector: "aruco" (``cv2.QRCodeDetectorAruco``) or "classic" (``cv2.QRCodeDetector``);
            see benchmarks/signals.py for which finds small, blurred, recompressed codes.
        max_codes: at most this many decoded codes are kept per frame.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: float = Field(default=5.0, gt=0)
    scene_min_s: float = Field(default=1.0, ge=0)
    detector: Literal["aruco", "classic"] = "aruco"
    max_codes: int = Field(default=8, ge=1, le=64)


def make_detector(kind: Literal["aruco", "classic"]) -> cv2.QRCodeDetector | cv2.QRCodeDetectorAruco:
    """A new OpenCV QR detector (not thread-safe: one per thread)."""
    return cv2.QRCodeDetectorAruco() if kind == "aruco" else cv2.QRCodeDetector()


def find_codes(
    detector: cv2.QRCodeDetector | cv2.QRCodeDetectorAruco, gray: np.ndarray, max_codes: int = 8
) -> list[Finding]:
    """Find and decode the QR codes in a grey frame.

    Args:
        detector: from ``make_detector``.
        gray: uint8 (H, W) at full resolution.
        max_codes: keep at most this many, in the detector's order.

    Returns:
        One Finding per decoded code (kind "qr", confidence 1.0, text cut to MAX_TEXT);
        codes that were located but not decoded are left out.
    """
    h, w = gray.shape[:2]
    ok, texts, points, _ = detector.detectAndDecodeMulti(gray)
    if not ok or points is None:
        return []
    out: list[Finding] = []
    for text, pts in zip(texts, points):
        if not text:
            continue
        out.append(Finding("qr", text[:MAX_TEXT], box_of(pts, w, h)))
        if len(out) >= max_codes:
            break
    return out


def qr_scores(codes: list[Finding], urls: UrlLists) -> dict[str, tuple[Finding, ...]]:
    """The findings behind each ``qr`` label: ``any`` (every decoded code), ``url`` (those whose
    payload is a URL) and ``url_denied`` (those whose host ``urls`` refuses)."""
    with_host = [(c, url_host(c.text)) for c in codes]
    return {
        "any": tuple(codes),
        "url": tuple(c for c, h in with_host if h is not None),
        "url_denied": tuple(c for c, h in with_host if h is not None and urls.denied(h)),
    }
