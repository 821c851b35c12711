"""Small objects in any frame shape: the budgeted sweep on the real EfficientNet-Lite0 and real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from livemod.core.types import SampledFrame
from livemod.demo.scene import _cover, _photos
from livemod.engines.card import load_cards
from livemod.engines.ort import OrtClassifier
from livemod.engines.recheck import RecheckSpec, Scorer, ScoreRequest, Watch

OLD = RecheckSpec(band=(0.02, 0.6))
NEW = RecheckSpec(band=(0.02, 0.6), spot_threshold=0.5, sweep_share=0.015)
SHAPES = [(1920, 1080), (1080, 1920), (1280, 720)]
CARD = load_cards()["efficientnet-lite0"]


@pytest.fixture(scope="module")
def clf(models_dir):
    return OrtClassifier(CARD, CARD.verify_file(models_dir), threads=1)


@pytest.fixture(scope="module")
def photos():
    return {**_photos(), "grass": np.ascontiguousarray(skimage.data.grass()[..., None].repeat(3, -1))}


def _place(bg: np.ndarray, obj: np.ndarray, share: float, w: int, h: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    frame = _cover(bg, w, h, 1.0, 0.5).copy()
    oh, ow = obj.shape[:2]
    s = (share * w * h / (oh * ow)) ** 0.5
    pw, ph = round(ow * s), round(oh * s)
    x0, y0 = int(0.8 * w - pw / 2), int(0.75 * h - ph / 2)
    frame[y0 : y0 + ph, x0 : x0 + pw] = cv2.resize(obj, (pw, ph), interpolation=cv2.INTER_AREA)
    return frame, (x0, y0, x0 + pw, y0 + ph)


def _sampled(frame: np.ndarray, stream: str, index: int = 0) -> SampledFrame:
    small = cv2.resize(frame, (224, 224), interpolation=cv2.INTER_AREA)
    return SampledFrame(stream, index, float(index), float(index), True, "keyframe", frame.shape[1], frame.shape[0],
                        {CARD.working_size: small}, lambda: frame)


@pytest.mark.parametrize("w, h", SHAPES)
def test_a_cat_of_one_and_a_half_percent_is_found_in_any_shape(clf, photos, w, h):
    frame, (x0, y0, x1, y1) = _place(photos["hopper"], photos["cat"], 0.015, w, h)
    old = Scorer({"m": clf}).score([ScoreRequest(_sampled(frame, "a"), {"m": [Watch("cat", OLD)]})])[0]["m"]
    new = Scorer({"m": clf}).score([ScoreRequest(_sampled(frame, "a"), {"m": [Watch("cat", NEW)]})])[0]["m"]
    assert old.scores["cat"] < 0.05 and old.score("cat") < 0.5, "the whole frame and the band re-check miss it"
    assert new.scores["cat"] == old.scores["cat"]
    rc = new.rechecks["cat"]
    assert rc.method == "sweep" and rc.after >= 0.5
    bx0, by0, bx1, by1 = rc.box
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    assert x0 <= cx <= x1 and y0 <= cy <= y1, "the deciding crop is centred on the cat"


@pytest.mark.parametrize("w, h", SHAPES)
@pytest.mark.parametrize("background", ["hopper", "astronaut", "grass"])
def test_clean_frames_stay_below_half(clf, photos, background, w, h):
    frame = _cover(photos[background], w, h, 1.0, 0.5)
    out = Scorer({"m": clf}).score([ScoreRequest(_sampled(frame, "c"), {"m": [Watch("cat", NEW), Watch("firearm", NEW)]})])
    fs = out[0]["m"]
    assert {rc.method for rc in fs.rechecks.values()} <= {"sweep", "spot", "cam_box"}
    assert fs.rechecks, "the sweep ran on the stream's first frame"
    assert max(fs.score("cat"), fs.score("firearm")) < 0.5


def test_extra_inference_on_a_clean_broadcast_stays_within_the_budget(clf, photos):
    stages: dict[str, int] = {}
    scorer = Scorer({"m": clf}, on_batch=lambda _m, n, s: stages.__setitem__(s, stages.get(s, 0) + n), budget=0.3)
    frames = 120
    first = 0
    spec = RecheckSpec(band=(0.02, 0.6), spot_threshold=0.5, sweep_share=0.04)  # 12 tiles: two sweeps in 120 frames
    for i in range(frames):
        t = i / (frames - 1)
        frame = _cover(photos["astronaut"], 640, 360, 1.0 + 0.5 * t, t)
        scorer.score([ScoreRequest(_sampled(frame, "clean", i), {"m": [Watch("cat", spec), Watch("firearm", spec)]})])
        if i == 0:
            first = sum(n for s, n in stages.items() if s != "frame")  # the first frame's borrowed sweep
    extra = sum(n for s, n in stages.items() if s != "frame")
    assert stages["frame"] == frames
    assert stages.get("sweep", 0) > first, "a second sweep ran once the credit had saved up"
    assert (extra - first) / (frames - 1) <= 0.3
