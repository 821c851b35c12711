"""CAM / Grad-CAM maths and box geometry for the small-object re-check, in plain numpy.

For a linear head ``logits = W . GAP(A) + b`` the per-class maps ``M_c = sum_k W_ck A_k``
satisfy ``mean(M_c) + b_c = logits_c`` and Grad-CAM equals ReLU(M_c) / Z (arXiv 1610.02391,
"Grad-CAM generalizes CAM"). The models carry M as their ``cams`` output.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from livemod.engines.card import ModelCard
from livemod.engines.preprocess import fit_size
from livemod.engines.types import Box

NormBox = tuple[float, float, float, float]
"""(x0, y0, x1, y1) as fractions of the network input, 0..1."""


def gradcam(cam: np.ndarray) -> np.ndarray:
    """ReLU of a class map, scaled to [0, 1] (all zeros when nothing is positive). (h, w) float32."""
    m = np.maximum(cam.astype(np.float32), 0.0)
    top = float(m.max())
    return m / top if top > 0 else m


def hot_boxes(cam: np.ndarray, *, threshold: float = 0.5, max_boxes: int = 2, upsample: int = 32) -> list[NormBox]:
    """Boxes around the hottest regions of a class map.

    The map is ReLU'd, normalised, upsampled bilinearly (so a box is not forced onto whole
    cells), thresholded at ``threshold`` x max, split into connected regions, and the
    regions are ranked by their peak.

    Args:
        cam: (h, w) class map.
        threshold: fraction of the map's max that a pixel must reach.
        max_boxes: K, the most boxes returned.
        upsample: pixels per cell for the upsampled map.

    Returns:
        Up to K boxes as fractions of the network input, hottest first; empty when the map
        has no positive value.
    """
    g = gradcam(cam)
    if not g.any():
        return []
    h, w = g.shape
    up = cv2.resize(g, (w * upsample, h * upsample), interpolation=cv2.INTER_LINEAR)
    mask = (up >= threshold * float(up.max())).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    ranked = []
    for i in range(1, n):
        peak = float(up[labels == i].max())
        x, y, bw, bh = stats[i, :4]
        ranked.append((peak, (x / up.shape[1], y / up.shape[0], (x + bw) / up.shape[1], (y + bh) / up.shape[0])))
    ranked.sort(key=lambda t: -t[0])
    return [box for _, box in ranked[:max_boxes]]


def input_to_frame(card: ModelCard, box: NormBox, width: int, height: int) -> tuple[float, float, float, float]:
    """Map a box in network-input fractions back to full-frame pixels, undoing the card's resize.

    Args:
        card: says how the frame was brought to the input (squash, letterbox, resize then crop).
        box: (x0, y0, x1, y1) fractions of the network input.
        width, height: the full frame's size.

    Returns:
        (x0, y0, x1, y1) in frame pixels, floats, not clamped.
    """
    in_w, in_h = card.size
    x0, y0, x1, y1 = box[0] * in_w, box[1] * in_h, box[2] * in_w, box[3] * in_h
    if card.resize == "resize_crop":
        assert card.resize_to is not None
        rw, rh = card.resize_to
        ox, oy = (rw - in_w) / 2, (rh - in_h) / 2
        sx, sy = width / rw, height / rh
        return ((x0 + ox) * sx, (y0 + oy) * sy, (x1 + ox) * sx, (y1 + oy) * sy)
    if card.resize == "letterbox":
        fw, fh = fit_size(width, height, in_w, in_h)
        ox, oy = (in_w - fw) // 2, (in_h - fh) // 2
        sx, sy = width / fw, height / fh
        return ((x0 - ox) * sx, (y0 - oy) * sy, (x1 - ox) * sx, (y1 - oy) * sy)
    sx, sy = width / in_w, height / in_h
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def expand_box(
    box: tuple[float, float, float, float],
    factor: float,
    width: int,
    height: int,
    *,
    min_side: int = 32,
    max_aspect: float = 2.0,
) -> Box:
    """Enlarge a box about its centre and clamp it to the frame (the YY method's x1.5 step).

    Each side is multiplied by ``factor``; a side shorter than ``min_side`` pixels, or
    shorter than 1/``max_aspect`` of the other side, is grown first, so the crop is not
    squashed out of shape at the network input. The result is clamped (cut) at the frame's
    edges, not shifted, so no unrelated context is pulled in.

    Returns:
        (x0, y0, x1, y1) integer pixels with 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height.
    """
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bw, bh = max(box[2] - box[0], 1.0), max(box[3] - box[1], 1.0)
    bw, bh = max(bw, bh / max_aspect), max(bh, bw / max_aspect)
    bw, bh = max(bw * factor, float(min_side)), max(bh * factor, float(min_side))
    x0 = max(0, int(round(cx - bw / 2)))
    y0 = max(0, int(round(cy - bh / 2)))
    x1 = min(width, int(round(cx + bw / 2)))
    y1 = min(height, int(round(cy + bh / 2)))
    return (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))


def tile_boxes(width: int, height: int, grid: int) -> list[Box]:
    """A grid x grid set of overlapping tiles covering the frame (50% overlap).

    Each tile is 2 / (grid + 1) of the frame's width and height, spread evenly, so an object
    smaller than one CAM cell of the whole frame fills about ((grid + 1) / 2)^2 times more
    of some tile.
    """
    if grid <= 0:
        return []
    tw, th = int(round(2 * width / (grid + 1))), int(round(2 * height / (grid + 1)))
    if grid == 1:
        tw, th = width, height
    xs = np.linspace(0, width - tw, grid).round().astype(int)
    ys = np.linspace(0, height - th, grid).round().astype(int)
    return [(int(x), int(y), int(x) + tw, int(y) + th) for y in ys for x in xs]


# ---- per-cell scores and the budgeted sweep (small objects in any frame shape) ------------------

SWEEP_TILE_SHARE = 0.3
"""Share of a sweep tile that an object of the sweep's ``min_share`` is made to cover.

Measured with EfficientNet-Lite0 on real photos pasted into real backgrounds
(``benchmarks/small_objects.py``): at 1.5% of a 16:9 or 9:16 frame, the object's per-cell peak is
the highest of all tiles' for a cat at 12% of a tile, but a tripod needs about 20% and a coffee cup
30% (at 12% the cup's cell ranks first in a third of placements, at 30% in 81%, top two in all).
The price: 24 tiles per sweep of a 16:9 frame for ``min_share`` 1.5%, 15 for 2.5%.
"""


def cell_probs(logits: np.ndarray, cams: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Per-cell probability of a label (or group): softmax over classes of each cell's own logits.

    For a linear head, ``logits = mean(cams) + b``, so each cell's logits are ``cams[:, i, j] + b``
    with ``b = logits - mean(cams)``: what the head would say if the whole image looked like that
    cell. A small object that the pooled score averages away keeps a high probability in its cells.

    Args:
        logits: float32 (C,) of one image.
        cams: float32 (C, h, w) of the same image.
        indices: the label's class indices (a group's members are summed).

    Returns:
        float32 (h, w) in [0, 1].
    """
    cams = cams.astype(np.float32, copy=False)
    bias = logits.astype(np.float32) - cams.mean(axis=(1, 2))
    z = cams + bias[:, None, None]
    z = z - z.max(axis=0, keepdims=True)
    e = np.exp(z)
    return (e[list(indices)].sum(axis=0) / e.sum(axis=0)).astype(np.float32)


def sweep_side(width: int, height: int, min_share: float, tile_share: float = SWEEP_TILE_SHARE) -> int:
    """Side of the square sweep tiles, in frame pixels, so that an object of ``min_share`` of the
    frame covers ``tile_share`` of a tile; never more than the frame's short side."""
    side = math.sqrt(min_share * width * height / tile_share)
    return max(1, min(int(round(side)), width, height))


def square_tiles(width: int, height: int, side: int) -> list[Box]:
    """Square tiles of ``side`` pixels covering the whole frame, spread evenly, row by row.

    The fewest tiles per axis that cover it (ceil(width / side) x ceil(height / side)); where the
    frame is not a multiple of ``side``, neighbours overlap. Square tiles keep the frame's aspect
    at the network input whatever the frame's shape (portrait 9:16 as well as 16:9).
    """
    side = max(1, min(side, width, height))
    nx, ny = -(-width // side), -(-height // side)
    xs = np.linspace(0, width - side, nx).round().astype(int) if nx > 1 else np.zeros(1, int)
    ys = np.linspace(0, height - side, ny).round().astype(int) if ny > 1 else np.zeros(1, int)
    return [(int(x), int(y), int(x) + side, int(y) + side) for y in ys for x in xs]


def peaks(prob: np.ndarray, *, min_prob: float, max_peaks: int) -> list[tuple[float, float, float, float]]:
    """The highest cells of a per-cell map, as (peak, cx, cy, extent) in cell units.

    Each peak's centre is the probability-weighted mean over its 3x3 neighbourhood (so an object
    between two cells lands between them); its extent is the longer side of the bounding box of
    the connected cells around it that reach half the peak (at least 1), a measure of the
    object's size. That region and the 3x3 neighbourhood are cleared before the next peak.

    Args:
        prob: (h, w) per-cell probability.
        min_prob: a peak below this ends the search.
        max_peaks: the most peaks returned.

    Returns:
        Up to ``max_peaks`` tuples, highest first; cx, cy in [0, w] and [0, h].
    """
    m = prob.astype(np.float32).copy()
    h, w = m.shape
    out: list[tuple[float, float, float, float]] = []
    for _ in range(max_peaks):
        i, j = np.unravel_index(int(np.argmax(m)), m.shape)
        top = float(m[i, j])
        if top < min_prob or top <= 0:
            break
        i0, i1, j0, j1 = max(0, i - 1), min(h, i + 2), max(0, j - 1), min(w, j + 2)
        nb = prob[i0:i1, j0:j1].astype(np.float64)
        gy, gx = np.mgrid[i0:i1, j0:j1]
        total = float(nb.sum())
        cy = float((gy * nb).sum() / total) + 0.5
        cx = float((gx * nb).sum() / total) + 0.5
        _n, comp = cv2.connectedComponents((m >= 0.5 * top).astype(np.uint8), connectivity=8)
        region = comp == comp[i, j]
        ys, xs = np.nonzero(region)
        extent = float(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
        out.append((top, cx, cy, extent))
        m[region] = -1.0
        m[i0:i1, j0:j1] = -1.0
    return out


def square_box(cx: float, cy: float, side: float, width: int, height: int) -> Box:
    """A square of ``side`` pixels centred on (cx, cy), shifted (not cut) to lie inside the frame.

    Shifting keeps the crop square, so the network sees the object unsquashed; a side longer
    than the frame's short side is cut to it.

    Returns:
        (x0, y0, x1, y1) integer pixels inside the frame.
    """
    s = int(round(min(max(side, 1.0), width, height)))
    x0 = int(round(min(max(cx - s / 2, 0), width - s)))
    y0 = int(round(min(max(cy - s / 2, 0), height - s)))
    return (x0, y0, x0 + s, y0 + s)
