"""The built-in signals' pure parts: quality maths, the frozen clock, URL hosts and lists, text rules, QR decoding, validation."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest

from livemod.core.errors import ConfigError
from livemod.engines.signals import (
    SIGNAL_MODELS,
    QualityConfig,
    QualityReading,
    Signals,
    _due,
    _Stream,
    blur_score,
    bright_score,
    dark_score,
    flat_score,
    frozen_score,
    laplacian_var,
    unchanged,
    work_gray,
)
from livemod.engines.signals_qr import UrlLists, box_of, find_codes, make_detector, qr_scores, url_host
from livemod.engines.signals_text import TextConfig, classify_line, text_scores
from livemod.engines.types import Finding
from livemod.rules.policy import Policy, validate_against_cards

CFG = QualityConfig()


# ---- quality maths ---------------------------------------------------------------------------


@pytest.mark.parametrize("mean, dark, bright", [
    (0.0, 1.0, 0.0), (32.0, 0.75, 0.0), (64.0, 0.5, 0.0), (128.0, 0.0, 0.0), (191.5, 0.0, 0.5), (255.0, 0.0, 1.0),
])
def test_dark_and_bright(mean, dark, bright):
    assert dark_score(mean) == pytest.approx(dark) and bright_score(mean) == pytest.approx(bright)


@pytest.mark.parametrize("std, flat_std, expected", [(0.0, 4.0, 1.0), (4.0, 4.0, 1.0), (6.0, 4.0, 0.5), (8.0, 4.0, 0.0),
                                                     (50.0, 4.0, 0.0), (1.0, 0.0, 0.0)])
def test_flat(std, flat_std, expected):
    assert flat_score(std, flat_std) == pytest.approx(expected)


@pytest.mark.parametrize("seconds, full_s, expected", [(0, 60, 0.0), (15, 60, 0.25), (30, 60, 0.5), (60, 60, 1.0),
                                                       (600, 60, 1.0), (5, 10, 0.5)])
def test_frozen_score(seconds, full_s, expected):
    assert frozen_score(seconds, full_s) == pytest.approx(expected)


@pytest.mark.parametrize("var, std, expected", [
    (1000.0, 40.0, 0.0),          # sharp
    (CFG.blur_sharp, 40.0, 0.0),
    (CFG.blur_soft, 40.0, 1.0),
    (1.0, 40.0, 1.0),             # very soft
    (1.0, 1.0, 0.0),              # flat: nothing to judge focus on
    ((CFG.blur_sharp * CFG.blur_soft) ** 0.5, 40.0, 0.5),  # log-linear: the geometric mean is halfway
])
def test_blur_score(var, std, expected):
    assert blur_score(var, std, CFG) == pytest.approx(expected)


def _texture(h: int = 180, w: int = 320, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (h // 4, w // 4), dtype=np.uint8), np.ones((4, 4), np.uint8))


@pytest.mark.parametrize("sigma, lo, hi", [(0, CFG.blur_sharp, np.inf), (3, 0, CFG.blur_sharp), (8, 0, CFG.blur_soft)])
def test_laplacian_var_falls_with_blur(sigma, lo, hi):
    img = _texture()
    if sigma:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    assert lo <= laplacian_var(img) <= hi


def test_laplacian_var_of_a_flat_image_is_zero():
    assert laplacian_var(np.full((90, 160), 77, np.uint8)) == 0.0


@pytest.mark.parametrize("shape, width, expected", [((1080, 1920), 640, (360, 640)), ((360, 640), 640, (360, 640)),
                                                    ((240, 320), 640, (240, 320)), ((1920, 1080), 640, (1138, 640))])
def test_work_gray_keeps_aspect(shape, width, expected):
    assert work_gray(np.zeros(shape, np.uint8), width).shape == expected


def _moved(img: np.ndarray, pixels: int) -> np.ndarray:
    out = img.copy()
    out[10:10 + pixels, 10:10 + pixels] = 255 - out[10:10 + pixels, 10:10 + pixels]
    return out


@pytest.mark.parametrize("change, expected", [
    ("same", True),
    ("noise2", True),       # +-2 grey levels everywhere: below still_delta
    ("spot3", True),        # 9 pixels of 14400 (0.06%): below still_share
    ("spot8", False),       # 64 pixels (0.44%)
    ("brighter", False),    # the whole picture +20
    ("none", False),        # no previous frame
    ("shape", False),       # a different size (the stream changed resolution)
])
def test_unchanged(change, expected):
    prev = work_gray(_texture(), 160)
    cur = {
        "same": prev,
        "noise2": np.clip(prev.astype(int) + np.random.default_rng(1).integers(-2, 3, prev.shape), 0, 255).astype(np.uint8),
        "spot3": _moved(prev, 3),
        "spot8": _moved(prev, 8),
        "brighter": np.clip(prev.astype(int) + 20, 0, 255).astype(np.uint8),
        "none": prev,
        "shape": prev[:-2],
    }[change]
    assert unchanged(None if change == "none" else prev, cur, CFG.still_delta, CFG.still_share) is expected


@pytest.mark.parametrize("reading, expected", [
    (QualityReading(mean=0.0, std=0.0, black_share=1.0, lap_var=0.0, frozen_s=0.0),
     dict(black=1.0, flat=1.0, dark=0.0, bright=0.0, blurred=0.0, frozen=0.0)),   # black screen: black and flat only
    (QualityReading(mean=250.0, std=1.0, black_share=0.0, lap_var=0.0, frozen_s=0.0),
     dict(black=0.0, flat=1.0, dark=0.0, bright=0.0, blurred=0.0, frozen=0.0)),   # white screen
    (QualityReading(mean=32.0, std=20.0, black_share=0.4, lap_var=500.0, frozen_s=45.0),
     dict(black=0.4, flat=0.0, dark=0.75, bright=0.0, blurred=0.0, frozen=0.75)),  # a dark, sharp, frozen picture
    (QualityReading(mean=230.0, std=20.0, black_share=0.0, lap_var=5.0, frozen_s=0.0),
     dict(black=0.0, flat=0.0, dark=0.0, bright=0.803, blurred=1.0, frozen=0.0)),
])
def test_reading_scores(reading, expected):
    got = reading.scores(CFG)
    assert set(got) == set(SIGNAL_MODELS["quality"].labels)
    assert got == pytest.approx(expected, abs=1e-3)


# ---- the frozen clock ------------------------------------------------------------------------


@pytest.mark.parametrize("steps, expected", [
    # (picture, gap_s) per sampled frame -> frozen seconds after each
    ([("a", None), ("a", 2.0), ("a", 2.0), ("a", 0.5)], [0.0, 2.0, 4.0, 4.5]),
    ([("a", None), ("a", 2.0), ("b", 2.0), ("b", 2.0)], [0.0, 2.0, 0.0, 2.0]),       # motion resets it
    ([("a", None), ("a", 2.0), ("flat", 2.0), ("flat", 2.0), ("a", 2.0)], [0.0, 2.0, 0.0, 0.0, 0.0]),  # flat: never frozen
    ([("a", None), ("a", None), ("a", 3.0)], [0.0, 0.0, 3.0]),                         # no gap: nothing to add
])
def test_frozen_clock(steps, expected):
    pics = {"a": _texture(seed=1), "b": _texture(seed=2), "flat": np.full((180, 320), 3, np.uint8)}
    st = _Stream()
    got = [Signals.quality(st, pics[p], gap, CFG).frozen_s for p, gap in steps]
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("clock, last, reason, expected", [
    (0.0, None, "keyframe", True),     # the stream's first frame
    (4.9, 0.0, "keyframe", False),
    (5.0, 0.0, "keyframe", True),      # interval_s
    (1.0, 0.0, "scene", True),         # a scene change after scene_min_s
    (0.5, 0.0, "scene", False),
    (1.0, 0.0, "image", True),         # a new still image counts as a scene change
    (1.0, 0.0, "duplicate", False),
    (3.0, 7.0, "keyframe", True),      # the clock went back: start again
])
def test_due(clock, last, reason, expected):
    assert _due(clock, last, reason, 5.0, 1.0) is expected


# ---- URLs and host lists ------------------------------------------------------------------------


@pytest.mark.parametrize("text, host", [
    ("https://win.scam.example/prize?id=1", "win.scam.example"),
    ("HTTP://WWW.Example.ORG", "www.example.org"),
    ("scam-site.example/win", "scam-site.example"),
    ("example.com.", "example.com"),
    ("https://user:pw@host.example:8443/x", "host.example"),
    ("tg://resolve.example", "resolve.example"),
    ("mailto:a@b.example", None),
    ("WIFI:S:home;T:WPA;P:secret;;", None),
    ("hello world", None),
    ("HELLO-123", None),
    ("localhost", None),
    ("", None),
])
def test_url_host(text, host):
    assert url_host(text) == host


@pytest.mark.parametrize("deny, allow, host, denied", [
    ((), (), "a.example", False),
    (("*.scam.example",), (), "win.scam.example", True),
    (("*.scam.example",), (), "scam.example", False),        # the apex needs its own entry
    (("*.scam.example", "scam.example"), (), "scam.example", True),
    ((), ("*.ours.example", "ours.example"), "cdn.ours.example", False),
    ((), ("*.ours.example",), "elsewhere.example", True),    # an allow list refuses every other host
    (("bad.ours.example",), ("*.ours.example",), "bad.ours.example", True),  # deny wins
    (("*.SCAM.Example.",), (), "x.scam.example", True),      # globs are normalised
])
def test_url_lists(deny, allow, host, denied):
    assert UrlLists(deny_hosts=deny, allow_hosts=allow).denied(host) is denied


@pytest.mark.parametrize("bad", [[""], ["a b.example"], ["example.com/path"]])
def test_url_lists_reject_bad_globs(bad):
    with pytest.raises(ValueError):
        UrlLists(deny_hosts=bad)


# ---- text rules -----------------------------------------------------------------------------------

TEXT = TextConfig(banned_words=("free money", "casino"), banned_patterns=(r"\bwin\s*big\b",))
URLS = UrlLists(deny_hosts=("*.scam.example", "scam.example"))


@pytest.mark.parametrize("line, labels", [
    ("Call +1 555 123 4567", {"phone"}),
    ("tel (020) 7946-0958", {"phone"}),
    ("Score 3-1 at 45'", set()),                         # too few digits
    ("Order 1234567890123456789", set()),                 # too many digits for a phone number
    ("write to help@shop.example", {"email"}),            # an email is not also a handle or a URL
    ("follow @freebies_now", {"handle"}),
    ("visit scam-site.example/win", {"url"}),
    ("go to win.scam.example now", {"url", "url_denied"}),
    ("https://www.example.org/a", {"url"}),
    ("FREE MONEY here", {"banned"}),
    ("casinos", set()),                                   # whole words only
    ("WIN  big tonight", {"banned"}),
    ("just a caption", set()),
])
def test_classify_line(line, labels):
    assert classify_line(line, TEXT, URLS) == labels


def test_text_scores_keep_confident_lines():
    lines = [Finding("text", "Call +1 555 123 4567", (0, 0, 10, 10), 0.97), Finding("text", "casino", (0, 20, 9, 30), 0.4),
             Finding("text", " O ", (0, 40, 9, 50), 0.9)]  # unsure, and a single glyph: both ignored
    found = text_scores(lines, TEXT, URLS)
    assert [f.text for f in found["any"]] == ["Call +1 555 123 4567"]
    assert found["phone"] == (lines[0],) and found["banned"] == ()


def test_bad_banned_pattern_is_refused():
    with pytest.raises(ValueError, match="not a regular expression"):
        TextConfig(banned_patterns=("(unclosed",))


# ---- QR codes ------------------------------------------------------------------------------------


def _frame_with_code(text: str, side: int, at: tuple[int, int], size: tuple[int, int] = (960, 540)):
    """A grey frame with a QR code (the encoder's image, quiet zone included, scaled to ``side``)
    at (y, x); returns it and the box of the code's dark modules."""
    code = cv2.resize(cv2.QRCodeEncoder.create().encode(text), (side, side), interpolation=cv2.INTER_NEAREST)
    img = np.full((size[1], size[0]), 90, np.uint8)
    y, x = at
    img[y:y + side, x:x + side] = code
    ys, xs = np.nonzero(code == 0)
    return img, (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)


@pytest.mark.parametrize("detector", ["aruco", "classic"])
@pytest.mark.parametrize("text, side", [("https://win.scam.example/p", 120), ("HELLO-123", 125), ("https://a.example", 250)])
def test_find_codes_decodes_and_boxes(detector, text, side):
    img, want = _frame_with_code(text, side, (100, 300))
    (code,) = find_codes(make_detector(detector), img)
    assert code.text == text and code.kind == "qr"
    assert np.abs(np.array(code.box) - np.array(want)).max() <= 2, (code.box, want)


def test_find_codes_none():
    assert find_codes(make_detector("aruco"), np.full((540, 960), 90, np.uint8)) == []


def test_qr_scores_split_by_label():
    codes = [Finding("qr", "https://win.scam.example/p", (0, 0, 5, 5)), Finding("qr", "HELLO", (9, 9, 20, 20)),
             Finding("qr", "https://ok.example", (30, 30, 40, 40))]
    got = qr_scores(codes, URLS)
    assert got["any"] == tuple(codes)
    assert [c.text for c in got["url"]] == ["https://win.scam.example/p", "https://ok.example"]
    assert [c.text for c in got["url_denied"]] == ["https://win.scam.example/p"]


@pytest.mark.parametrize("points, box", [
    ([[10.2, 20.7], [50.9, 20.1], [50.5, 60.0], [10.0, 60.3]], (10, 20, 52, 62)),
    ([[-3, -2], [5, -2], [5, 4], [-3, 4]], (0, 0, 6, 5)),
    ([[95, 75], [120, 75], [120, 90], [95, 90]], (95, 75, 100, 80)),   # clipped to the 100x80 frame
])
def test_box_of(points, box):
    assert box_of(np.array(points), 100, 80) == box


# ---- policies name built-in models ------------------------------------------------------------------


def _policy(model: str, label: str) -> Policy:
    return Policy.model_validate({"name": "p", "rules": [
        {"name": "r", "model": model, "label": label, "review": 0.5, "alert": 0.5, "recheck": None}]})


@pytest.mark.parametrize("model, label", [("quality", "frozen"), ("quality", "black"), ("quality", "flat"), ("qr", "any"),
                                          ("qr", "url_denied"), ("text", "phone"), ("text", "banned")])
def test_built_in_labels_validate_without_cards(model, label):
    if model == "text":
        pytest.importorskip("rapidocr", reason="the text signal needs the ocr extra (rapidocr); not installed")
    validate_against_cards(_policy(model, label), {})


@pytest.mark.parametrize("model, label, needle", [("quality", "shaky", "no label 'shaky'"), ("qr", "nsfw", "no label 'nsfw'"),
                                                  ("qualty", "frozen", "unknown model 'qualty'")])
def test_built_in_label_mistakes(model, label, needle):
    with pytest.raises(ConfigError, match=needle):
        validate_against_cards(_policy(model, label), {})


def test_a_card_cannot_take_a_built_in_name():
    from livemod.engines.card import load_cards

    card = load_cards()["open-nsfw"].model_copy(update={"name": "qr"})
    with pytest.raises(ConfigError, match="built-in model"):
        validate_against_cards(_policy("qr", "any"), {"qr": card})


def test_unavailable_text_signal_is_reported(monkeypatch):
    monkeypatch.setitem(SIGNAL_MODELS, "text", replace(SIGNAL_MODELS["text"], unavailable=lambda: "needs RapidOCR"))
    with pytest.raises(ConfigError, match="text:phone is unavailable: needs RapidOCR") as info:
        validate_against_cards(_policy("text", "phone"), {})
    assert info.value.reason == "signal_unavailable"


def test_without_rapidocr_the_message_names_the_extra():
    code = ("import sys; sys.modules['rapidocr'] = None\n"
            "from livemod.engines.signals_text import ocr_unavailable; print(ocr_unavailable())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "livemod[ocr]" in out and "not installed" in out


def test_policy_signals_section_validates():
    p = Policy.model_validate({"name": "p", "signals": {"qr": {"interval_s": 2, "detector": "classic"},
                                                      "urls": {"deny_hosts": ["*.bad.example"]}},
                               "rules": [{"name": "r", "model": "qr", "label": "any", "review": 1, "alert": 1}]})
    assert p.signals.qr.interval_s == 2 and p.signals.urls.denied("x.bad.example")
    with pytest.raises(ValueError):
        Policy.model_validate({"name": "p", "signals": {"qr": {"interval": 2}},
                               "rules": [{"name": "r", "model": "qr", "label": "any", "review": 1, "alert": 1}]})
