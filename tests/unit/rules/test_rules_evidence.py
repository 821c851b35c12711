"""Evidence images (rules/evidence.py: write_evidence, heatmap_overlay) and deterministic audit sampling."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from livemod.rules.evidence import MAX_SIDE, audit_pick, heatmap_overlay, write_evidence


def _read(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)  # BGR
    assert img is not None, f"{path} does not decode"
    return img


def _two_tone(h: int, w: int) -> np.ndarray:
    """RGB: red left half, blue right half."""
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, : w // 2, 0] = 200
    frame[:, w // 2 :, 2] = 200
    return frame


# ---- write_evidence --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h, w, out_hw",
    [
        (360, 640, (360, 640)),
        (1080, 1920, (1080, 1920)),      # exactly at the cap: untouched
        (1080, 1921, (1079, 1920)),      # one pixel over: scaled (1080 * 1920/1921 rounds to 1079)
        (2160, 3840, (1080, 1920)),      # 4K
        (4000, 1000, (1920, 480)),       # tall: the long side is the height
        (50, 80, (50, 80)),              # tiny
    ],
)
def test_two_jpegs_that_decode_with_the_expected_size(tmp_path, h, w, out_hw):
    refs = write_evidence(tmp_path, "abc", _two_tone(h, w), None, None, "rule: m:x 0.91")
    assert set(refs) == {"frame", "heatmap"}
    assert refs == {"frame": str(tmp_path / "abc.jpg"), "heatmap": str(tmp_path / "abc-heatmap.jpg")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc-heatmap.jpg", "abc.jpg"]
    for path in refs.values():
        assert Path(path).read_bytes()[:2] == b"\xff\xd8"
        img = _read(path)
        assert img.shape == (*out_hw, 3) and max(img.shape[:2]) <= MAX_SIDE
    # the frame file keeps the colours in the right order (RGB in, BGR on disk)
    frame = _read(refs["frame"])
    oh, ow = out_hw
    left = frame[oh * 3 // 4, ow // 4].astype(int)
    right = frame[oh * 3 // 4, ow * 3 // 4].astype(int)
    assert left[2] > 150 and left[0] < 60  # red
    assert right[0] > 150 and right[2] < 60  # blue


def test_same_id_same_files(tmp_path):
    frame = _two_tone(360, 640)
    cam = np.zeros((7, 7), np.float32)
    cam[2, 4] = 1.0
    refs = write_evidence(tmp_path, "abc", frame, cam, (400, 200, 600, 350), "cap")
    first = {k: Path(v).read_bytes() for k, v in refs.items()}
    again = write_evidence(tmp_path, "abc", frame, cam, (400, 200, 600, 350), "cap")
    assert again == refs
    assert {k: Path(v).read_bytes() for k, v in again.items()} == first  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc-heatmap.jpg", "abc.jpg"]  # no leftovers


def test_same_id_replaces_and_other_ids_add(tmp_path):
    refs = write_evidence(tmp_path, "abc", np.zeros((100, 100, 3), np.uint8), None, None, "x")
    write_evidence(tmp_path, "abc", np.full((100, 100, 3), 255, np.uint8), None, None, "x")
    assert _read(refs["frame"])[60, 50].min() > 240  # the second write won
    write_evidence(tmp_path, "def", np.zeros((100, 100, 3), np.uint8), None, None, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc-heatmap.jpg", "abc.jpg", "def-heatmap.jpg", "def.jpg"]


def test_folder_is_created(tmp_path):
    target = tmp_path / "a" / "b"
    refs = write_evidence(target, "id1", np.zeros((64, 64, 3), np.uint8), None, None, "x")
    assert Path(refs["frame"]).parent == target and Path(refs["heatmap"]).is_file()


def _green(img_bgr: np.ndarray, y: int, x: int, r: int = 3) -> bool:
    patch = img_bgr[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].astype(int)
    return bool(((patch[..., 1] > 150) & (patch[..., 2] < 100) & (patch[..., 0] < 100)).any())


@pytest.mark.parametrize(
    "h, w",
    [(360, 640), (2160, 3840), (4000, 1000)],
)
def test_box_is_scaled_with_the_frame(tmp_path, h, w):
    box = (round(w * 0.5), round(h * 0.5), round(w * 0.8), round(h * 0.9))
    refs = write_evidence(tmp_path, "b", np.zeros((h, w, 3), np.uint8), None, box, "x")
    heat = _read(refs["heatmap"])
    s = min(1.0, MAX_SIDE / max(h, w))
    x0, y0, x1, y1 = (round(v * s) for v in box)
    ymid, xmid = (y0 + y1) // 2, (x0 + x1) // 2
    assert _green(heat, ymid, x0) and _green(heat, ymid, x1 - 1)  # left and right edges
    assert _green(heat, y1 - 1, xmid)  # bottom edge
    assert not _green(heat, ymid, xmid, r=1)  # inside the box
    assert not _green(heat, ymid, x0 // 2, r=1)  # left of it
    # the plain frame carries no box
    assert not _green(_read(refs["frame"]), ymid, x0)


def test_box_partly_outside_the_frame_is_clipped(tmp_path):
    refs = write_evidence(tmp_path, "c", np.zeros((200, 300, 3), np.uint8), None, (250, 150, 400, 260), "x")
    heat = _read(refs["heatmap"])
    assert heat.shape == (200, 300, 3) and _green(heat, 175, 250)


def test_non_contiguous_frames_are_accepted(tmp_path):
    bgr = _two_tone(1000, 2000)[..., ::-1]  # a channel-flipped view, as a BGR -> RGB conversion gives
    assert not bgr.flags["C_CONTIGUOUS"]
    refs = write_evidence(tmp_path, "nc", bgr, None, None, "x")
    assert _read(refs["frame"]).shape == (960, 1920, 3)


def test_heatmap_is_hot_where_the_cam_is(tmp_path):
    frame = np.full((360, 640, 3), 90, np.uint8)
    cam = np.zeros((7, 7), np.float32)
    cam[5, 5] = 3.0
    refs = write_evidence(tmp_path, "h", frame, cam, None, "x")
    heat = _read(refs["heatmap"])
    cy, cx = int((5.5 / 7) * 360), int((5.5 / 7) * 640)  # the hot cell's centre
    assert int(heat[cy, cx, 2]) > int(heat[200, 60, 2]) + 40  # red there, not far away
    assert np.abs(_read(refs["frame"]).astype(int) - 90).max() <= 3  # the frame file has no overlay


# ---- heatmap_overlay -------------------------------------------------------------------------

CAMS = {
    "none": None,
    "empty": np.zeros((0, 0), np.float32),
    "zeros": np.zeros((7, 7), np.float32),
    "negative": -np.ones((7, 7), np.float32),
    "random": np.random.default_rng(0).normal(size=(7, 7)).astype(np.float32),
    "float64-14x14": np.random.default_rng(1).random((14, 14)),
}


OVERLAY_CASES = [
    (hw, box, cam)
    for hw in [(100, 200), (37, 53), (10, 10)]
    for box in [None, (5, 5, 40, 30), (-10, -10, 500, 500)]
    for cam in CAMS
] + [((720, 1280), (100, 100, 400, 300), cam) for cam in CAMS]


@pytest.mark.parametrize("hw, box, cam_name", OVERLAY_CASES)
def test_overlay_shape_and_dtype(hw, box, cam_name):
    frame = np.random.default_rng(2).integers(0, 256, (*hw, 3), np.uint8)
    before = frame.copy()
    out = heatmap_overlay(frame, CAMS[cam_name], box, "a caption")
    assert out.shape == (*hw, 3) and out.dtype == np.uint8
    assert np.array_equal(frame, before)  # the input is not drawn on
    again = heatmap_overlay(frame, CAMS[cam_name], box, "a caption")
    assert np.array_equal(out, again)  # deterministic


def test_overlay_without_cam_or_box_only_darkens_the_caption_band():
    frame = np.full((360, 640, 3), 200, np.uint8)
    out = heatmap_overlay(frame, None, None, "")
    band = max(24, 360 // 18)
    assert (out[band:] == 200).all()
    assert (out[:band] < 100).all()


def test_zero_cam_tints_uniformly():
    frame = np.full((100, 100, 3), 128, np.uint8)
    out = heatmap_overlay(frame, np.zeros((7, 7), np.float32), None, "")
    body = out[30:].reshape(-1, 3)
    assert (body == body[0]).all()  # no hot spot anywhere


def test_long_captions_do_not_fail():
    out = heatmap_overlay(np.zeros((50, 60, 3), np.uint8), None, None, "x" * 1000)
    assert out.shape == (50, 60, 3)


# ---- audit_pick --------------------------------------------------------------------------------

IDS = [f"stream-{i % 7}/seg{i // 7}.ts@{i * 40}" for i in range(20_000)]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9])
def test_audit_pick_rate(fraction):
    picked = sum(audit_pick(i, fraction) for i in IDS)
    assert picked / len(IDS) == pytest.approx(fraction, rel=0.2)


@pytest.mark.parametrize("fraction", [0.01, 0.3])
def test_audit_pick_is_deterministic(fraction):
    first = [audit_pick(i, fraction) for i in IDS[:5000]]
    assert first == [audit_pick(i, fraction) for i in IDS[:5000]]
    assert any(first) and not all(first)


def test_audit_picks_are_nested():
    """A frame picked at a fraction is also picked at every larger one."""
    small = {i for i in IDS if audit_pick(i, 0.05)}
    large = {i for i in IDS if audit_pick(i, 0.2)}
    assert small and small < large


@pytest.mark.parametrize(
    "fraction, expected",
    [(0.0, False), (-0.5, False), (1.0, True), (1.5, True)],
)
def test_audit_pick_edges(fraction, expected):
    assert {audit_pick(i, fraction) for i in IDS[:500]} == {expected}


def test_audit_pick_depends_on_the_id():
    assert audit_pick("ref/1@0", 0.5) is audit_pick("ref/1@0", 0.5)
    assert len({audit_pick(f"ref/{i}@0", 0.5) for i in range(64)}) == 2
