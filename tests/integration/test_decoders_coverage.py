"""The coverage guarantee on clips made at test time: no stretch over max_gap_s without a sampled frame."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from livemod.core.types import Resize
from livemod.decoders.config import DecoderConfig, SamplerConfig
from livemod.decoders.pyav import decode
from livemod.decoders.sampling import SamplerState
from livemod.demo.synth import COVERAGE_CASES, last_pts, pattern_frames, write_coverage_clip, write_video

SECONDS = 16.0
MAX_GAP = 3.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("coverage")


def _clip(clips: Path, case: str) -> Path:
    path = clips / COVERAGE_CASES[case][0]
    return path if path.exists() else write_coverage_clip(clips, case, seconds=SECONDS)


@pytest.mark.parametrize("case", list(COVERAGE_CASES))
def test_max_gap_on_every_clip(clips, case, caplog):
    path = _clip(clips, case)
    state = SamplerState()
    cfg = DecoderConfig(file_roots=(clips,), hwaccel="none", sampling=SamplerConfig(max_gap_s=MAX_GAP, scene_threshold=0))
    with caplog.at_level(logging.INFO, logger="livemod.decoders.pyav"):
        frames = list(decode(str(path), stream_id=case, sizes=[Resize(32, 32)], config=cfg, state=state))
    pts = [f.pts for f in frames]
    gaps = [pts[0], *np.diff(pts), last_pts(path) - pts[-1]]  # from the start, between samples, to the end
    assert max(gaps) <= MAX_GAP + 1e-6, f"{case}: samples at {pts}"
    assert [f.gap_s for f in frames[1:]] == pytest.approx(list(np.diff(pts)), abs=1e-3)
    assert frames[0].gap_s is None and state.max_gap_s == pytest.approx(max(np.diff(pts)), abs=1e-3)
    fallback_logs = [r for r in caplog.records if "keyframes cannot keep a sample" in r.getMessage()]
    assert len(fallback_logs) == state.fallbacks <= 1  # said once
    # a replay decodes from a real keyframe: every sampled picture is the picture a full decode gives
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        start, tb = vs.start_time or 0, float(vs.time_base)
        full = {round((f.pts - start) * tb, 3): f.to_ndarray(format="rgb24") for f in c.decode(vs)}
    for f in frames:
        assert np.abs(f.full_rgb().astype(int) - full[round(f.pts, 3)]).mean() < 1.0, f"{case}: frame at {f.pts} differs"


def test_keyframes_mode_comes_back_after_keyframes_return(clips):
    path = _clip(clips, "x264-keyframes-stop-and-return")
    state = SamplerState()
    cfg = DecoderConfig(file_roots=(clips,), hwaccel="none", sampling=SamplerConfig(scene_threshold=0, dup_max_distance=-1))
    frames = list(decode(str(path), stream_id="s", sizes=[Resize(32, 32)], config=cfg, state=state))
    assert state.mode == "keyframes" and state.fallbacks == 1
    assert [f.reason for f in frames if f.pts >= 14.0] == ["keyframe", "keyframe"]  # keyframes only again
    assert {f.reason for f in frames if 5.0 <= f.pts <= 12.0} == {"interval"}
    assert state.decoded < 400 * 0.75  # the first and last seconds were not decoded in full


def test_a_stream_that_keeps_its_keyframes_decodes_only_keyframes(clips):
    path = clips / "gop2.mp4"
    write_video(path, pattern_frames(200, 320, 180), fps=25, gop=50)
    state = SamplerState()
    frames = list(decode(str(path), stream_id="s", sizes=[Resize(32, 32)],
                         config=DecoderConfig(file_roots=(clips,), hwaccel="none"), state=state))
    assert [f.reason for f in frames] == ["keyframe"] * 4 and state.decoded == 4 and state.fallbacks == 0
    assert state.max_gap_s == pytest.approx(2.0)
