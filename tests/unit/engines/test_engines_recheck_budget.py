"""The Scorer's per-stream budget for speculative work (hot spots, the sweep), on a tiny real ONNX model."""

from __future__ import annotations

import numpy as np
import pytest

from livemod.core.types import Resize, SampledFrame
from livemod.engines.ort import OrtClassifier
from livemod.engines.recheck import RecheckSpec, Scorer, ScoreRequest, Watch
from tests.tinymodels import tiny_card, tiny_cam_model

# 96x64 frames, sweep_share 0.038 -> 28 px square tiles, 4 x 3 = 12 per sweep; sweep_peak above 1 means
# no crops after the tiles, so a sweep costs exactly 12 images.
SWEEP = RecheckSpec(band=(2.0, 3.0), sweep_share=0.038, sweep_peak=1.01)
TILES = 12


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    path, _ = tiny_cam_model(tmp_path_factory.mktemp("m") / "m.onnx")
    return OrtClassifier(tiny_card(path), path, threads=1)


def _frame(stream: str, index: int, reason: str = "keyframe", seed: int = 0) -> SampledFrame:
    full = np.random.default_rng(seed + index).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    small = full[::4, ::6][:16, :16].copy()
    return SampledFrame(stream, index, float(index), float(index), True, reason, 96, 64, {Resize(16, 16): small},
                        lambda: full)


def _swept(clf, reasons: list[str], budget: float = 0.3, spec: RecheckSpec = SWEEP) -> tuple[list[int], int]:
    """Score one stream frame by frame; return the indices of swept frames and the extra images."""
    stages: list[tuple[str, int]] = []
    scorer = Scorer({"tiny": clf}, on_batch=lambda _m, n, s: stages.append((s, n)), budget=budget)
    swept = []
    for i, reason in enumerate(reasons):
        before = len(stages)
        scorer.score([ScoreRequest(_frame("s", i, reason), {"tiny": [Watch("c0", spec)]})])
        if any(s == "sweep" for s, _n in stages[before:]):
            swept.append(i)
    return swept, sum(n for s, n in stages if s != "frame")


@pytest.mark.parametrize(
    "reasons, budget, swept",
    [
        # the first frame borrows one sweep (credit 0.25 - 12); the next waits until the credit covers 12 tiles
        (["keyframe"] * 95, 0.25, [0]),
        (["keyframe"] * 100, 0.25, [0, 95]),
        # a scene change borrows a sweep, but only once the stream's credit is back to zero or more
        (["keyframe"] * 10 + ["scene"] + ["keyframe"] * 36 + ["scene"], 0.25, [0, 47]),
        # one image per frame: credit 1 - 12 after the first sweep, 12 again 23 frames later
        (["keyframe"] * 40, 1.0, [0, 23, 35]),
        # no budget: only the first frame
        (["keyframe"] * 20, 0.0, [0]),
    ],
)
def test_sweep_runs_when_the_stream_can_afford_it(clf, reasons, budget, swept):
    got, extra = _swept(clf, reasons, budget)
    assert got == swept
    assert extra == TILES * len(swept)
    assert extra <= budget * len(reasons) + TILES  # the bound the Scorer promises


def test_streams_have_separate_budgets_and_a_batch_of_several(clf):
    stages: list[tuple[str, int]] = []
    scorer = Scorer({"tiny": clf}, on_batch=lambda _m, n, s: stages.append((s, n)))
    reqs = [ScoreRequest(_frame(f"s{k}", 0), {"tiny": [Watch("c0", SWEEP)]}) for k in range(3)]
    out = scorer.score(reqs)
    # three new streams, one frame each: all swept, in one batch of 36 tiles
    assert stages == [("frame", 3), ("sweep", 3 * TILES)]
    assert all(o["tiny"].rechecks["c0"].method == "sweep" and o["tiny"].rechecks["c0"].crops == TILES for o in out)
    assert [scorer.credit(f"s{k}", "tiny") for k in range(3)] == pytest.approx([0.3 - TILES] * 3)
    assert scorer.credit("unseen", "tiny") == 0.0


def test_no_sweep_without_sweep_share_or_when_the_band_decided(clf):
    got, extra = _swept(clf, ["keyframe"] * 3, spec=RecheckSpec(band=(2.0, 3.0)))
    assert got == [] and extra == 0
    # band [0, 1.01): every frame is re-checked; a sweep still runs where the boxes stayed below 1.01
    got, _extra = _swept(clf, ["keyframe"] * 3, spec=RecheckSpec(band=(0.0, 1.01), sweep_share=0.038, sweep_peak=1.01))
    assert got == [0]


def test_band_rechecks_are_paid_and_delay_the_sweep(clf):
    spec = RecheckSpec(band=(0.0, 1.01), max_boxes=2, sweep_share=0.038, sweep_peak=1.01)
    scorer = Scorer({"tiny": clf})
    res = scorer.score([ScoreRequest(_frame("s", 0), {"tiny": [Watch("c0", spec)]})])[0]
    boxes = res["tiny"].rechecks["c0"].crops - TILES
    assert boxes >= 1
    assert scorer.credit("s", "tiny") == pytest.approx(0.3 - boxes - TILES)


def test_forgets_the_least_recent_stream(clf):
    scorer = Scorer({"tiny": clf}, max_streams=2)
    for k in range(3):
        scorer.score([ScoreRequest(_frame(f"s{k}", 0), {"tiny": [Watch("c0", SWEEP)]})])
    assert scorer.credit("s0", "tiny") == 0.0 and scorer.credit("s2", "tiny") != 0.0


@pytest.mark.parametrize("confirm_above, confirmed", [(0.0, True), (1.01, False)])
def test_a_high_crop_is_confirmed_in_a_wider_crop_and_counts_the_lower_score(clf, confirm_above, confirmed):
    """recheck.confirm: every crop at or over confirm_above costs one more image, paid from the stream's
    credit, and the case keeps min(crop, wider crop); below it nothing changes."""
    plain = RecheckSpec(band=(0.0, 1.01), max_boxes=2)
    spec = RecheckSpec(band=(0.0, 1.01), max_boxes=2, confirm=1.5, confirm_above=confirm_above)
    got = {}
    for name, sp in (("plain", plain), ("confirm", spec)):
        stages: list[tuple[str, int]] = []
        scorer = Scorer({"tiny": clf}, on_batch=lambda _m, n, s, st=stages: st.append((s, n)))
        fs = scorer.score([ScoreRequest(_frame("s", 0), {"tiny": [Watch("c0", sp)]})])[0]["tiny"]
        got[name] = (fs.rechecks["c0"], stages, scorer.credit("s", "tiny"))
    (rc0, st0, cr0), (rc1, st1, cr1) = got["plain"], got["confirm"]
    boxes = rc0.crops
    assert boxes >= 1
    if confirmed:
        assert rc1.crops == 2 * boxes and st1 == [("frame", 1), ("recheck", boxes), ("recheck", boxes)]
        assert rc1.after <= rc0.after + 1e-6 and cr1 == pytest.approx(cr0 - boxes)
    else:
        assert (rc1.crops, rc1.after, st1, cr1) == (rc0.crops, rc0.after, st0, cr0)
