"""Heatmap geometry for centre-cropping models, atomic writes, and bad input to the evidence writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livemod.engines.cam import input_to_frame
from livemod.engines.card import load_cards
from livemod.rules.evidence import heatmap_overlay, write_evidence

W, H = 640, 360


def _hot(row: int, col: int) -> np.ndarray:
    cam = np.full((7, 7), -1.0, np.float32)  # negative everywhere else: ReLU'd to zero
    cam[row, col] = 2.0
    return cam


def _red_peak(img: np.ndarray) -> tuple[int, int]:
    score = img[..., 0].astype(int) - img[..., 2].astype(int)  # RGB: red minus blue
    y, x = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(x), int(y)


@pytest.mark.parametrize("row, col", [(0, 0), (3, 3), (6, 6), (1, 5)])
def test_hot_cell_lands_inside_the_centre_crop(row, col):
    card = load_cards()["open-nsfw"]  # resize 256x256, centre crop 224: the model sees 87.5% of each side
    region = input_to_frame(card, (0.0, 0.0, 1.0, 1.0), W, H)
    out = heatmap_overlay(np.full((H, W, 3), 90, np.uint8), _hot(row, col), None, "", cam_region=region)
    x0, y0, x1, y1 = region
    want = (x0 + (col + 0.5) * (x1 - x0) / 7, y0 + (row + 0.5) * (y1 - y0) / 7)
    got = _red_peak(out[40:])  # below the caption band
    got = (got[0], got[1] + 40)
    assert abs(got[0] - want[0]) <= (x1 - x0) / 14 and abs(got[1] - want[1]) <= (y1 - y0) / 14 + 1


def test_pixels_the_model_never_saw_are_untinted():
    card = load_cards()["open-nsfw"]
    region = input_to_frame(card, (0.0, 0.0, 1.0, 1.0), W, H)
    frame = np.full((H, W, 3), 90, np.uint8)
    out = heatmap_overlay(frame, _hot(3, 3), None, "", cam_region=region)
    x0, y0, x1, y1 = (round(v) for v in region)
    assert (out[100:, : x0 - 1] == 90).all() and (out[-(H - y1 - 1):, :] == 90).all()
    assert (out[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] != 90).any(axis=-1).all()  # everything inside is tinted


def test_whole_frame_region_matches_no_region():
    frame = np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)
    a = heatmap_overlay(frame, _hot(2, 4), None, "x")
    b = heatmap_overlay(frame, _hot(2, 4), None, "x", cam_region=(0.0, 0.0, float(W), float(H)))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_written_files_are_whole_and_no_temporaries_remain(tmp_path):
    frame = np.random.default_rng(1).integers(0, 255, (H, W, 3), np.uint8)
    refs = write_evidence(tmp_path, "a1", frame, _hot(3, 3), (10, 20, 100, 200), "cap", cam_region=(40.0, 22.5, 600.0, 337.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a1-heatmap.jpg", "a1.jpg"]
    for path in refs.values():
        data = Path(path).read_bytes()
        assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9" and 5_000 < len(data) < 1_000_000


@pytest.mark.parametrize(
    "frame, alert_id",
    [
        (np.zeros((10, 10), np.uint8), "a"),
        (np.zeros((10, 10, 4), np.uint8), "a"),
        (np.zeros((10, 10, 3), np.float32), "a"),
        (np.zeros((10, 10, 3), np.uint8), "../escape"),
        (np.zeros((10, 10, 3), np.uint8), ""),
    ],
)
def test_bad_input_is_refused(tmp_path, frame, alert_id):
    with pytest.raises(ValueError):
        write_evidence(tmp_path, alert_id, frame, None, None, "x")
    assert list(tmp_path.iterdir()) == []
