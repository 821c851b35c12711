"""Evidence images and deterministic audit sampling."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from livemod.rules.evidence import audit_pick, heatmap_overlay, write_evidence


def test_evidence_files_written_and_idempotent(tmp_path):
    frame = np.full((360, 640, 3), 90, np.uint8)
    cam = np.zeros((7, 7), np.float32)
    cam[5, 5] = 3.0
    refs = write_evidence(tmp_path, "abc", frame, cam, (400, 200, 600, 350), "rule: m:x 0.91")
    again = write_evidence(tmp_path, "abc", frame, cam, (400, 200, 600, 350), "rule: m:x 0.91")
    assert refs == again and sorted(p.name for p in tmp_path.iterdir()) == ["abc-heatmap.jpg", "abc.jpg"]
    heat = cv2.imread(refs["heatmap"])
    assert heat.shape == (360, 640, 3)
    assert int(heat[283, 503, 2]) > int(heat[60, 60, 2]) + 40  # hot (red) at the hot cell's centre


def test_big_frames_are_scaled_with_their_box(tmp_path):
    frame = np.zeros((2160, 3840, 3), np.uint8)
    refs = write_evidence(tmp_path, "big", frame, None, (3000, 1500, 3600, 2000), "x")
    img = cv2.imread(refs["heatmap"])
    assert img.shape == (1080, 1920, 3)
    assert img[750:1000, 1500].max() > 100  # the box's left edge, scaled by one half


def test_overlay_without_cam_or_box():
    out = heatmap_overlay(np.zeros((100, 200, 3), np.uint8), None, None, "caption")
    assert out.shape == (100, 200, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_audit_pick_rate_and_determinism(fraction):
    ids = [f"stream/{i}@{i * 40}" for i in range(20000)]
    picks = [audit_pick(i, fraction) for i in ids]
    assert picks == [audit_pick(i, fraction) for i in ids]
    assert sum(picks) / len(ids) == pytest.approx(fraction, abs=max(0.2 * fraction, 0.002))
