"""CAM maths and box geometry."""

from __future__ import annotations

import numpy as np
import pytest

from livemod.engines.cam import expand_box, gradcam, hot_boxes, input_to_frame, tile_boxes
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
