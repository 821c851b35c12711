"""Evidence a reviewer can trust: the frame, a heatmap overlay with the re-check box; audit sampling."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from livemod.engines.cam import gradcam
from livemod.engines.types import Box

MAX_SIDE = 1920  # evidence images are capped at this size (the box is scaled with the frame)


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int = 90) -> None:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"cannot encode {path}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)


def heatmap_overlay(
    frame_rgb: np.ndarray, cam: np.ndarray | None, box: Box | None, caption: str, alpha: float = 0.4
) -> np.ndarray:
    """The frame with the class map as a JET overlay, the re-check box and a caption.

    Args:
        frame_rgb: uint8 (H, W, 3).
        cam: (h, w) class map of the watched label on the whole frame (ReLU'd and normalised
            here), or None.
        box: (x0, y0, x1, y1) in the frame's pixels, or None.
        caption: one line of text drawn on a dark band.

    Returns:
        uint8 (H, W, 3) RGB.
    """
    out = frame_rgb.copy()
    h, w = out.shape[:2]
    if cam is not None and cam.size:
        g = cv2.resize(gradcam(cam), (w, h), interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap((g * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        out = (out.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)
    thick = max(2, round(min(h, w) / 240))
    if box is not None:
        x0, y0, x1, y1 = box
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), (0, 255, 0), thick)
        cv2.putText(out, "re-check", (int(x0) + 4, max(int(y0) - 6, 14)), cv2.FONT_HERSHEY_SIMPLEX,
                    max(0.5, h / 1400), (0, 255, 0), thick, cv2.LINE_AA)
    band = max(24, h // 18)
    out[:band] = (out[:band] * 0.35).astype(np.uint8)
    cv2.putText(out, caption[:120], (8, int(band * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, band / 40, (255, 255, 255),
                max(1, thick - 1), cv2.LINE_AA)
    return out


def write_evidence(
    directory: Path,
    alert_id: str,
    frame_rgb: np.ndarray,
    cam: np.ndarray | None,
    box: Box | None,
    caption: str,
) -> dict[str, str]:
    """Write ``<alert_id>.jpg`` (the frame) and ``<alert_id>-heatmap.jpg``; same id, same files.

    Frames larger than MAX_SIDE are scaled down (and the box with them).

    Returns:
        {"frame": path, "heatmap": path}
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    h, w = frame_rgb.shape[:2]
    s = min(1.0, MAX_SIDE / max(h, w))
    if s < 1.0:
        frame_rgb = cv2.resize(frame_rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        if box is not None:
            box = tuple(round(v * s) for v in box)  # type: ignore[assignment]
    frame_path = directory / f"{alert_id}.jpg"
    heat_path = directory / f"{alert_id}-heatmap.jpg"
    _write_jpeg(frame_path, frame_rgb)
    _write_jpeg(heat_path, heatmap_overlay(frame_rgb, cam, box, caption))
    return {"frame": str(frame_path), "heatmap": str(heat_path)}


def audit_pick(frame_id: str, fraction: float) -> bool:
    """Deterministic sampling of frames for the audit queue: a replay picks the same frames."""
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    h = int.from_bytes(hashlib.blake2b(frame_id.encode(), digest_size=8).digest(), "big")
    return h < fraction * 2**64
