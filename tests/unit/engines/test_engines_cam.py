"""CAM maths and box geometry."""

from __future__ import annotations

import numpy as np
import pytest

from livemod.engines.cam import (
    cell_probs,
    expand_box,
    gradcam,
    hot_boxes,
    input_to_frame,
    peaks,
    square_box,
    square_tiles,
    sweep_side,
    tile_boxes,
)
from livemod.engines.card import ModelCard


def _card(resize: str, size=(224, 224), resize_to=None) -> ModelCard:
    return ModelCard(name="m", version="1", file="m.onnx", layout="NHWC", size=size, channel_order="RGB",
                     resize=resize, resize_to=resize_to, labels=("a", "b"))


@pytest.mark.parametrize(
    "cam, expected",
    [
        (np.zeros((7, 7)), np.zeros((7, 7))),
        (-np.ones((7, 7)), np.zeros((7, 7))),
        (np.diag([1.0, 2.0, -3.0]), np.diag([0.5, 1.0, 0.0])),
    ],
)
def test_gradcam_relu_and_normalise(cam, expected):
    np.testing.assert_allclose(gradcam(cam), expected)


@pytest.mark.parametrize(
    "hot_cells, k, expected_count",
    [
        ([(6, 6)], 2, 1),
        ([(0, 0), (6, 6)], 2, 2),
        ([(0, 0), (6, 6), (0, 6)], 2, 2),
        ([], 2, 0),
    ],
)
def test_hot_boxes_finds_separate_regions(hot_cells, k, expected_count):
    cam = np.full((7, 7), -1.0, np.float32)
    for (y, x) in hot_cells:
        cam[y, x] = 5.0
    boxes = hot_boxes(cam, threshold=0.5, max_boxes=k)
    assert len(boxes) == expected_count
    for (x0, y0, x1, y1) in boxes:
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_hot_boxes_ranked_by_peak_and_located():
    cam = np.zeros((7, 7), np.float32)
    cam[1, 1] = 1.0
    cam[5, 5] = 3.0
    (x0, y0, x1, y1), _second = hot_boxes(cam, threshold=0.2, max_boxes=2)
    # the hotter region (cell 5,5 -> fractions 5/7..6/7) comes first
    assert x0 > 0.5 and y0 > 0.5 and x1 <= 1.0


@pytest.mark.parametrize(
    "resize, resize_to, box, wh, expected",
    [
        ("squash", None, (0.0, 0.0, 1.0, 1.0), (1920, 1080), (0, 0, 1920, 1080)),
        ("squash", None, (0.5, 0.5, 1.0, 1.0), (1920, 1080), (960, 540, 1920, 1080)),
        # resize to 256 then centre-crop 224: the input covers 16..240 of 256
        ("resize_crop", (256, 256), (0.0, 0.0, 1.0, 1.0), (256, 256), (16, 16, 240, 240)),
        ("resize_crop", (256, 256), (0.0, 0.0, 1.0, 1.0), (512, 256), (32, 16, 480, 240)),
        # letterbox 1920x1080 into 224x224: 224x126 placed at y 49
        ("letterbox", None, (0.0, 49 / 224, 1.0, 175 / 224), (1920, 1080), (0, 0, 1920, 1080)),
    ],
)
def test_input_to_frame_undoes_resize(resize, resize_to, box, wh, expected):
    got = input_to_frame(_card(resize, resize_to=resize_to), box, *wh)
    np.testing.assert_allclose(got, expected, atol=1.0)


@pytest.mark.parametrize(
    "box, factor, wh, expected",
    [
        ((100, 100, 200, 200), 1.5, (1000, 1000), (75, 75, 225, 225)),
        ((100, 100, 200, 150), 1.5, (1000, 1000), (75, 88, 225, 162)),  # aspect kept (within 2:1)
        ((100, 100, 400, 110), 1.5, (1000, 1000), (25, 0, 475, 218)),  # a sliver is grown to 2:1 first
        ((0, 0, 100, 100), 1.5, (1000, 1000), (0, 0, 125, 125)),  # cut at the edge, not shifted inside
        ((950, 950, 1000, 1000), 2.0, (1000, 1000), (925, 925, 1000, 1000)),
        ((10, 10, 12, 12), 1.5, (1000, 1000), (0, 0, 27, 27)),  # min side 32, then cut at the edge
        ((0, 0, 1000, 500), 1.5, (1000, 500), (0, 0, 1000, 500)),  # clamped to the frame
    ],
)
def test_expand_box(box, factor, wh, expected):
    assert expand_box(box, factor, *wh) == expected


@pytest.mark.parametrize("grid, n", [(0, 0), (1, 1), (2, 4), (3, 9), (4, 16)])
def test_tiles_cover_frame(grid, n):
    tiles = tile_boxes(1920, 1080, grid)
    assert len(tiles) == n
    if grid:
        covered = np.zeros((1080, 1920), bool)
        for x0, y0, x1, y1 in tiles:
            assert 0 <= x0 < x1 <= 1920 and 0 <= y0 < y1 <= 1080
            covered[y0:y1, x0:x1] = True
        assert covered.all()


# ---- per-cell scores and sweep geometry -----------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize(
    "indices",
    [(0,), (2,), (0, 2), (0, 1, 2)],
)
def test_cell_probs_is_each_cells_own_softmax(indices):
    rng = np.random.default_rng(4)
    cams = rng.normal(size=(3, 4, 5)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    logits = cams.mean(axis=(1, 2)) + bias
    got = cell_probs(logits, cams, indices)
    assert got.shape == (4, 5) and got.dtype == np.float32
    for i in range(4):
        for j in range(5):
            assert got[i, j] == pytest.approx(_softmax(cams[:, i, j] + bias)[list(indices)].sum(), rel=1e-5)


def test_cell_probs_of_a_uniform_map_is_the_whole_image_probability():
    cams = np.ones((3, 7, 7), np.float32) * np.array([1.0, 2.0, 3.0], np.float32)[:, None, None]
    logits = np.array([0.5, 2.5, 1.0], np.float32)
    np.testing.assert_allclose(cell_probs(logits, cams, (1,)), _softmax(logits)[1], rtol=1e-5)


@pytest.mark.parametrize(
    "wh, share, tile_share, expected",
    [
        ((1920, 1080), 0.015, 0.12, 509),
        ((1080, 1920), 0.015, 0.12, 509),  # the same for portrait: tiles are squares
        ((1280, 720), 0.015, 0.12, 339),
        ((1920, 1080), 0.065, 0.065, 1080),  # never more than the short side
        ((100, 50), 0.5, 0.12, 50),
    ],
)
def test_sweep_side(wh, share, tile_share, expected):
    assert sweep_side(*wh, share, tile_share) == expected


@pytest.mark.parametrize("wh, n", [((1920, 1080), 24), ((1080, 1920), 24), ((1280, 720), 24), ((1920, 800), 21)])
def test_default_sweep_of_any_shape_costs_about_24_tiles(wh, n):
    assert len(square_tiles(*wh, sweep_side(*wh, 0.015))) == n


@pytest.mark.parametrize(
    "wh, side, n",
    [
        ((1920, 1080), 509, 12),  # 4 x 3
        ((1080, 1920), 509, 12),  # 3 x 4
        ((1280, 720), 339, 12),
        ((1920, 1080), 1080, 2),
        ((1920, 1080), 4000, 2),  # clamped to the short side
        ((640, 640), 640, 1),
        ((640, 640), 320, 4),
    ],
)
def test_square_tiles_cover_the_frame_with_squares(wh, side, n):
    w, h = wh
    tiles = square_tiles(w, h, side)
    assert len(tiles) == n
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in tiles:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 == y1 - y0 == min(side, w, h)
        covered[y0:y1, x0:x1] = True
    assert covered.all()


@pytest.mark.parametrize(
    "cells, min_prob, k, expected",
    [
        # one hot cell: centred on it, extent 1
        ({(2, 3): 0.9}, 0.1, 2, [(0.9, 3.5, 2.5, 1.0)]),
        # below min_prob: nothing
        ({(2, 3): 0.05}, 0.1, 2, []),
        # two equal neighbours: the centre lies between them, extent 2
        ({(2, 3): 0.8, (2, 4): 0.8}, 0.1, 2, [(0.8, 4.0, 2.5, 2.0)]),
        # two separate objects, highest first, k bounds them
        ({(0, 0): 0.5, (6, 6): 0.9}, 0.1, 2, [(0.9, 6.5, 6.5, 1.0), (0.5, 0.5, 0.5, 1.0)]),
        ({(0, 0): 0.5, (6, 6): 0.9}, 0.1, 1, [(0.9, 6.5, 6.5, 1.0)]),
        # a 3-cell-wide region: extent 3
        ({(4, 1): 0.6, (4, 2): 0.9, (4, 3): 0.6}, 0.1, 2, [(0.9, 2.5, 4.5, 3.0)]),
    ],
)
def test_peaks(cells, min_prob, k, expected):
    prob = np.zeros((7, 7), np.float32)
    for (i, j), p in cells.items():
        prob[i, j] = p
    got = peaks(prob, min_prob=min_prob, max_peaks=k)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-5)


@pytest.mark.parametrize(
    "cx, cy, side, wh, expected",
    [
        (500, 500, 100, (1000, 1000), (450, 450, 550, 550)),
        (10, 10, 100, (1000, 1000), (0, 0, 100, 100)),  # shifted inside, still square
        (995, 500, 100, (1000, 800), (900, 450, 1000, 550)),
        (500, 300, 2000, (1920, 1080), (0, 0, 1080, 1080)),  # cut to the short side
        (50, 50, 0.2, (100, 100), (50, 50, 51, 51)),  # at least one pixel
    ],
)
def test_square_box(cx, cy, side, wh, expected):
    assert square_box(cx, cy, side, *wh) == expected
