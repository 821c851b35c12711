"""The built-in signals end to end on media made here: stream health through `livemod moderate`, QR codes
and on-screen text through Moderator.moderate, with the shipped health policy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from livemod.demo.synth import write_video
from livemod.engines.signals_text import ocr_unavailable
from livemod.rules.evaluate import StreamState
from livemod.rules.policy import POLICIES_DIR
from livemod.stream.pipeline import Moderator
from livemod.stream.records import FrameRef
from livemod.stream.settings import Settings

FPS = 5  # one keyframe a second (gop = FPS): the sampler takes one frame a second


def _picture(w: int, h: int) -> np.ndarray:
    """A sharp photo mosaic wider than the frame, to pan over (scikit-image's coffee, at its own scale)."""
    from skimage import data

    tile = data.coffee()  # 400 x 600
    big = np.concatenate([np.concatenate([tile, tile[:, ::-1]], axis=1)] * 2, axis=0)
    return np.ascontiguousarray(big[: max(h, 400), :])


def _pan(big: np.ndarray, i: int, w: int, h: int) -> np.ndarray:
    return np.roll(big, -6 * i, axis=1)[:h, :w].copy()


def _health_clip(path: Path, w: int = 640, h: int = 360) -> tuple[Path, dict[str, tuple[float, float]]]:
    """Moving 0-10 s, frozen 10-50, moving 50-56, black 56-64, moving 64-70, blurred 70-80, moving 80-88."""
    big = _picture(w, h)
    spans = {"frozen": (10.0, 50.0), "black": (56.0, 64.0), "blurred": (70.0, 80.0)}
    frames = []
    for i in range(88 * FPS):
        t = i / FPS
        if spans["frozen"][0] <= t < spans["frozen"][1]:
            frames.append(frames[-1])
        elif spans["black"][0] <= t < spans["black"][1]:
            frames.append(np.zeros((h, w, 3), np.uint8))
        elif spans["blurred"][0] <= t < spans["blurred"][1]:
            frames.append(cv2.GaussianBlur(_pan(big, i, w, h), (0, 0), 4))
        else:
            frames.append(_pan(big, i, w, h))
    return write_video(path, frames, fps=FPS, gop=FPS), spans


@pytest.fixture()
def health_dir(tmp_path: Path) -> Path:
    """A policies folder holding only the shipped health policy (so no classifier is loaded)."""
    d = tmp_path / "policies"
    d.mkdir()
    shutil.copy(POLICIES_DIR / "health.yaml", d / "health.yaml")
    return d


def _settings(tmp_path: Path, policies: Path, policy: str = "health") -> Settings:
    s = Settings()
    return s.model_copy(update={"rules": s.rules.model_copy(update={
        "policies_dir": policies, "default_policy": policy, "evidence_dir": tmp_path / "evidence"})})


def test_health_alerts_through_the_cli(tmp_path, health_dir):
    clip, spans = _health_clip(tmp_path / "health.mp4")
    r = subprocess.run([sys.executable, "-m", "livemod.stream.cli", "moderate", str(clip), "--policies-dir", str(health_dir),
                        "--policy", "health", "--out", str(tmp_path / "out")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    alerts = [json.loads(line) for line in r.stdout.splitlines()]
    by_rule = {a["rule"]: a for a in alerts}
    assert sorted(a["rule"] for a in alerts) == ["black-screen", "blurred", "frozen-30s"], alerts
    # frozen for 30 s of stream time: the first frame at 0.5 is 30 s after the last change
    assert by_rule["frozen-30s"]["start_pts"] == pytest.approx(spans["frozen"][0] + 30, abs=1.01)
    assert spans["black"][0] <= by_rule["black-screen"]["start_pts"] < spans["black"][0] + 2
    assert spans["blurred"][0] <= by_rule["blurred"]["start_pts"] < spans["blurred"][0] + 2
    for a in alerts:
        assert a["model"] == "quality" and a["model_versions"]["quality"] == "1"
        assert Path(a["evidence"]["frame"]).is_file()


def test_health_incidents_open_once_and_close_when_the_picture_returns(tmp_path, health_dir):
    clip, spans = _health_clip(tmp_path / "health.mp4")
    mod = Moderator(_settings(tmp_path, health_dir))
    assert mod.scorer.classifiers == {}  # nothing but built-in models
    opened, closed = {}, {}
    frozen_scores = []
    for frame, scores, decision, state in mod.moderate(FrameRef(stream_id="h", uri=str(clip), wall_start=0.0), StreamState()):
        frozen_scores.append((frame.pts, scores["quality"].scores["frozen"]))
        for a in decision.alerts:
            assert a.rule not in opened, f"{a.rule} alerted twice"
            opened[a.rule] = a.start_pts
        for rule, alert_id in [(r.rule, r.alert_id) for r in decision.reviews if r.kind == "incident_closed"]:
            closed[rule] = frame.pts
    assert set(opened) == {"black-screen", "blurred", "frozen-30s"}
    assert set(closed) == set(opened)
    # each closes when its stretch is over: motion returns, the picture comes back, it is sharp again
    assert spans["frozen"][1] <= closed["frozen-30s"] < spans["frozen"][1] + 1.5
    assert spans["black"][1] <= closed["black-screen"] < spans["black"][1] + 1.5
    assert spans["blurred"][1] <= closed["blurred"] < spans["blurred"][1] + 4.5
    # the frozen score counts stream seconds, duplicates included: 20 s into the freeze it reads 20/60
    at20 = dict(frozen_scores)[spans["frozen"][0] + 20]
    assert at20 == pytest.approx(20 / 60, abs=0.02)


# ---- QR codes --------------------------------------------------------------------------------

DENIED = "https://win.scam.example/prize?id=7"  # the health policy denies *.scam.example
PLAIN = "TICKET-0042"
ALLOWED = "https://shop.example.org/item/9"


def _qr(text: str, side: int) -> np.ndarray:
    code = cv2.resize(cv2.QRCodeEncoder.create().encode(text), (side, side), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(code, cv2.COLOR_GRAY2RGB)


def _qr_clip(path: Path) -> tuple[Path, dict[str, tuple[tuple[float, float], tuple[int, int, int, int]]]]:
    """1080p, 1 fps: a code of 100 px (denied URL) 4-14 s, 160 px (plain text) 30-40 s, 300 px (allowed URL) 56-66 s.

    The health policy scans every 5 s, closes after two scans without a code and waits 10 s before
    the next incident: each code opens its own."""
    w, h, fps = 1920, 1080, 1
    from skimage import data

    bg = cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_CUBIC)
    shows = {DENIED: ((4.0, 14.0), (1500, 200), 100), PLAIN: ((30.0, 40.0), (300, 700), 160),
             ALLOWED: ((56.0, 66.0), (900, 400), 300)}
    frames = []
    for i in range(78 * fps):
        f = np.roll(bg, 8 * i, axis=1)
        for text, ((t0, t1), (x, y), side) in shows.items():
            if t0 <= i / fps < t1:
                f = f.copy()
                f[y:y + side, x:x + side] = _qr(text, side)
        frames.append(f)
    where = {text: (span, (x, y, x + side, y + side)) for text, (span, (x, y), side) in shows.items()}
    return write_video(path, frames, fps=fps, gop=fps), where


def _inside(box, outer) -> bool:
    return box[0] >= outer[0] - 2 and box[1] >= outer[1] - 2 and box[2] <= outer[2] + 2 and box[3] <= outer[3] + 2


def test_qr_codes_alert_with_text_box_and_evidence(tmp_path, health_dir):
    clip, where = _qr_clip(tmp_path / "qr.mp4")
    mod = Moderator(_settings(tmp_path, health_dir))
    alerts, closed, scans, read = [], [], 0, {}
    for frame, scores, decision, _ in mod.moderate(FrameRef(stream_id="q", uri=str(clip), wall_start=0.0), StreamState()):
        if "qr" in scores:
            scans += 1
            for f in scores["qr"].found.get("any", ()):
                read.setdefault(f.text, (frame.pts, f.box))
        alerts += decision.alerts
        closed += [r.rule for r in decision.reviews if r.kind == "incident_closed"]
    assert 15 <= scans <= 17  # every 5 s of stream time, not every sampled frame
    assert set(read) == {DENIED, PLAIN, ALLOWED}  # all three sizes found and decoded
    for text, (pts, box) in read.items():
        (t0, t1), outer = where[text]
        assert t0 <= pts < t1 and _inside(box, outer)
    assert sorted(a.rule for a in alerts) == ["qr-code", "qr-code", "qr-code", "qr-refused-host"]
    assert sorted(a.start_pts for a in alerts if a.rule == "qr-code") == [5.0, 30.0, 60.0]
    refused = next(a for a in alerts if a.rule == "qr-refused-host")
    assert _inside(refused.box, where[DENIED][1]) and refused.action == "interrupt"
    assert refused.frames[0].recheck.method == "qr"
    heat = cv2.imread(refused.evidence["heatmap"])
    assert heat is not None and Path(refused.evidence["frame"]).is_file()
    assert sorted(closed) == sorted(a.rule for a in alerts)  # each closes two scans after its code is gone


# ---- on-screen text --------------------------------------------------------------------------

needs_ocr = pytest.mark.skipif(ocr_unavailable() is not None, reason=f"{ocr_unavailable()}")

TEXT_POLICY = """
name: onscreen
signals:
  text: {interval_s: 4, scene_min_s: 4, banned_words: [casino]}
  urls: {deny_hosts: ["*.scam.example", "scam.example"]}
rules:
"""
TEXT_RULES = ("any", "phone", "url_denied", "handle", "banned")


@needs_ocr
def test_rendered_text_alerts_and_closes(tmp_path):
    d = tmp_path / "policies"
    d.mkdir()
    (d / "onscreen.yaml").write_text(TEXT_POLICY + "".join(
        f"  - {{name: text-{lab}, model: text, label: {lab}, review: 0.5, alert: 0.5, window: {{k: 1, n: 1}},"
        f" close_after: 1, cooldown_s: 0, recheck: null}}\n" for lab in TEXT_RULES))
    w, h, fps = 640, 360, 1
    lines = ("Call +1 555 123 4567", "win at scam.example", "@freebies_now  CASINO")
    frames = []
    for i in range(8):
        f = np.full((h, w, 3), (40, 70 + 4 * i, 110), np.uint8)
        if i < 4:
            for k, line in enumerate(lines):
                cv2.putText(f, line, (20, 80 + 90 * k), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (255, 255, 255), 2, cv2.LINE_AA)
        frames.append(f)
    clip = write_video(tmp_path / "text.mp4", frames, fps=fps, gop=1)
    mod = Moderator(_settings(tmp_path, d, "onscreen"))
    alerts, closed, texts = [], [], []
    for frame, scores, decision, _ in mod.moderate(FrameRef(stream_id="t", uri=str(clip), wall_start=0.0), StreamState()):
        if "text" in scores:
            texts.append((frame.pts, [f.text for f in scores["text"].found.get("any", ())]))
        alerts += decision.alerts
        closed += [r.rule for r in decision.reviews if r.kind == "incident_closed"]
    assert [pts for pts, _ in texts] == [0.0, 4.0]  # read every 4 s of stream time: two OCR runs
    assert sorted(a.rule for a in alerts) == sorted(f"text-{lab}" for lab in TEXT_RULES), texts
    assert all(a.start_pts == 0.0 and a.box is not None for a in alerts)
    assert sorted(closed) == sorted(a.rule for a in alerts), texts  # the text is gone at 4 s
