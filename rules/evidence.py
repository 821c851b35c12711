"""Evidence a reviewer can trust: the frame, a heatmap overlay with the re-check box; audit sampling."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from livemod.engines.cam import gradcam
from livemod.engines.types import Box

MAX_SIDE = 1920  # evidence images are capped at this size (the box is scaled with the frame)

Region = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in frame pixels, floats; may reach outside the frame (letterbox padding)."""


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int = 90) -> None:
    """Encode and write atomically: a reader sees the old file or the whole new one, never a part."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"cannot encode {path}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cam_to_frame(
    cam: np.ndarray, width: int, height: int, region: Region | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The ReLU'd, normalised class map upsampled (bilinear) onto the frame.

    Args:
        cam: (h, w) class map.
        width, height: the frame's size.
        region: where the network input lies in the frame, in frame pixels; None: the whole frame.

    Returns:
        float32 (height, width) in [0, 1], and a bool (height, width) mask of the pixels the
        model saw (None when it saw them all).
    """
    g = gradcam(cam)
    if region is None:
        return cv2.resize(g, (width, height), interpolation=cv2.INTER_LINEAR), None
    x0, y0, x1, y1 = region
    ch, cw = g.shape
    sx, sy = (x1 - x0) / cw, (y1 - y0) / ch
    # pixel centres: cell i's centre x0 + (i + 0.5) * sx is frame pixel index (that - 0.5)
    m = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]], np.float64)
    up = cv2.warpAffine(g, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    seen = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    return up, seen


def heatmap_overlay(
    frame_rgb: np.ndarray,
    cam: np.ndarray | None,
    box: Box | None,
    caption: str,
    alpha: float = 0.4,
    *,
    cam_region: Region | None = None,
) -> np.ndarray:
    """The frame with the class map as a JET overlay, the re-check box and a caption.

    Args:
        frame_rgb: uint8 (H, W, 3).
        cam: (h, w) class map of the watched label (ReLU'd and normalised here), or None.
        box: (x0, y0, x1, y1) in the frame's pixels, or None.
        caption: one line of text drawn on a dark band.
        alpha: weight of the colour map.
        cam_region: where the map lies in the frame, in frame pixels (a centre-cropping model
            sees only the middle; ``engines.cam.input_to_frame(card, (0, 0, 1, 1), W, H)``
            gives it); pixels outside it stay untinted. None: the whole frame (a squashing
            model).

    Returns:
        uint8 (H, W, 3) RGB.
    """
    out = frame_rgb.copy()
    h, w = out.shape[:2]
    if cam is not None and cam.size:
        g, seen = _cam_to_frame(cam, w, h, cam_region)
        heat = cv2.applyColorMap((g * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        blend = (out.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)
        out = blend if seen is None else np.where(seen[..., None], blend, out)
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
    *,
    cam_region: Region | None = None,
) -> dict[str, str]:
    """Write ``<alert_id>.jpg`` (the frame) and ``<alert_id>-heatmap.jpg``; same id, same files.

    Each file is written to a temporary name and renamed, so a crash never leaves half a JPEG
    under the final name. Frames larger than MAX_SIDE are scaled down (the box and region with
    them).

    Args:
        directory: created if missing.
        alert_id: the alert's id; also the file names' stem.
        frame_rgb: the full-resolution frame, uint8 (H, W, 3).
        cam: (h, w) class map of the rule's label, float32, or None.
        box: the re-check box in frame pixels, or None.
        caption: drawn on the heatmap.
        cam_region: see ``heatmap_overlay``.

    Returns:
        {"frame": path, "heatmap": path}

    Raises:
        ValueError: ``frame_rgb`` is not (H, W, 3) uint8, or the id could escape the folder.
        OSError: the folder or a file cannot be written.
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 (H, W, 3), got {frame_rgb.dtype} {frame_rgb.shape}")
    if not alert_id or "/" in alert_id or "\\" in alert_id or alert_id.startswith("."):
        raise ValueError(f"alert id {alert_id!r} cannot be a file name")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    h, w = frame_rgb.shape[:2]
    s = min(1.0, MAX_SIDE / max(h, w))
    if s < 1.0:
        frame_rgb = cv2.resize(frame_rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        if box is not None:
            box = (round(box[0] * s), round(box[1] * s), round(box[2] * s), round(box[3] * s))
        if cam_region is not None:
            cam_region = (cam_region[0] * s, cam_region[1] * s, cam_region[2] * s, cam_region[3] * s)
    frame_path = directory / f"{alert_id}.jpg"
    heat_path = directory / f"{alert_id}-heatmap.jpg"
    _write_jpeg(frame_path, frame_rgb)
    _write_jpeg(heat_path, heatmap_overlay(frame_rgb, cam, box, caption, cam_region=cam_region))
    return {"frame": str(frame_path), "heatmap": str(heat_path)}


def audit_pick(frame_id: str, fraction: float) -> bool:
    """Deterministic sampling of frames for the audit queue: a replay picks the same frames.

    The first 8 bytes of BLAKE2b(frame_id), read as an integer, below ``fraction`` x 2**64.

    Args:
        frame_id: the frame's deterministic id.
        fraction: share of frames to pick, 0..1.
    """
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    h = int.from_bytes(hashlib.blake2b(frame_id.encode(), digest_size=8).digest(), "big")
    return h < fraction * 2**64
