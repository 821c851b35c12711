"""Turn working-size RGB images into the float32 batch a model card asks for."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from livemod.core.errors import InferenceError
from livemod.engines.card import ModelCard


def fit_size(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The largest (w, h) with the aspect of width x height that fits inside box_w x box_h."""
    scale = min(box_w / width, box_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_input_size(card: ModelCard, rgb: np.ndarray) -> np.ndarray:
    """Bring one RGB uint8 image (h, w, 3) to the card's input size (W, H) in pixels.

    The decoder normally hands over the card's working size already (FFmpeg scales it);
    anything else (a re-check crop) is resized here with INTER_AREA first.

    Returns:
        uint8 (H, W, 3) RGB.
    """
    in_w, in_h = card.size
    h, w = rgb.shape[:2]
    if card.resize == "resize_crop":
        assert card.resize_to is not None
        rw, rh = card.resize_to
        if (w, h) != (rw, rh):
            rgb = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_AREA)
        x0, y0 = (rw - in_w) // 2, (rh - in_h) // 2
        return rgb[y0 : y0 + in_h, x0 : x0 + in_w]
    if card.resize == "letterbox":
        fw, fh = fit_size(w, h, in_w, in_h)
        if (w, h) != (fw, fh):
            rgb = cv2.resize(rgb, (fw, fh), interpolation=cv2.INTER_AREA)
        out = np.zeros((in_h, in_w, 3), np.uint8)
        x0, y0 = (in_w - fw) // 2, (in_h - fh) // 2
        out[y0 : y0 + fh, x0 : x0 + fw] = rgb
        return out
    if (w, h) != (in_w, in_h):
        rgb = cv2.resize(rgb, (in_w, in_h), interpolation=cv2.INTER_AREA)
    return rgb


def normalise(card: ModelCard, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> float32 batch in the card's channel order, scale, mean, std and layout."""
    x = images.astype(np.float32)
    if card.channel_order == "BGR":
        x = x[..., ::-1]
    x = x * np.float32(card.scale)
    x -= np.asarray(card.mean, np.float32)
    x /= np.asarray(card.std, np.float32)
    if card.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def prepare_batch(card: ModelCard, images: Sequence[np.ndarray]) -> np.ndarray:
    """Preprocess RGB uint8 images of any size into one network batch.

    Args:
        card: the model card.
        images: each uint8 (h, w, 3) RGB, ideally already at ``card.working_size``.

    Returns:
        float32 (N, H, W, 3) for NHWC cards or (N, 3, H, W) for NCHW cards.
    """
    if not images:
        raise InferenceError("empty batch", reason="empty_batch")
    stacked = np.stack([to_input_size(card, im) for im in images])
    return normalise(card, stacked)
