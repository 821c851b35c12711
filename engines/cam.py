"""CAM / Grad-CAM maths and box geometry for the small-object re-check, in plain numpy.

For a linear head ``logits = W . GAP(A) + b`` the per-class maps ``M_c = sum_k W_ck A_k``
satisfy ``mean(M_c) + b_c = logits_c`` and Grad-CAM equals ReLU(M_c) / Z (arXiv 1610.02391,
"Grad-CAM generalizes CAM"). The models carry M as their ``cams`` output.
"""

from __future__ import annotations

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
