"""ONNX Runtime backend and the batched re-check on tiny real ONNX models (onnx.helper)."""

from __future__ import annotations

import numpy as np
import pytest

from livemod.core.errors import ModelError
from livemod.core.types import Resize, SampledFrame
from livemod.engines.ort import OrtClassifier
from livemod.engines.preprocess import prepare_batch
from livemod.engines.recheck import RecheckSpec, Scorer, ScoreRequest, Watch
from tests.tinymodels import tiny_card, tiny_cam_model


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("n", [1, 3, 7])
def test_ort_batches_and_cam_identity(tmp_path, layout, n):
    path, bias = tiny_cam_model(tmp_path / "m.onnx", layout=layout)
    card = tiny_card(path, layout=layout)
    clf = OrtClassifier(card, path, threads=1, max_batch=4)  # 7 is split into 4 + 3
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(n)]
    out = clf.infer(prepare_batch(card, imgs))
    assert out.logits.shape == (n, 3) and out.cams.shape == (n, 3, 4, 4)
    np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, rtol=1e-5)
    # the CAM contract: mean over cells + bias reproduces the logits
    np.testing.assert_allclose(out.cams.mean(axis=(2, 3)) + bias, out.logits, rtol=1e-4, atol=1e-5)
    # batching does not change results
    single = clf.infer(prepare_batch(card, imgs[:1]))
    np.testing.assert_allclose(single.logits[0], out.logits[0], rtol=1e-5, atol=1e-6)


def test_ort_refuses_model_without_cams(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "nocam",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    path = tmp_path / "nocam.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    with pytest.raises(ModelError, match="cams"):
        OrtClassifier(tiny_card(path), path)


def test_ort_bad_file_is_model_error(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelError):
        OrtClassifier(tiny_card(path), path)


def _frame(full: np.ndarray, size: Resize, calls: list[int]) -> SampledFrame:
    import cv2

    def full_rgb() -> np.ndarray:
        calls.append(1)
        return full

    small = cv2.resize(full, (size.width, size.height), interpolation=cv2.INTER_AREA)
    return SampledFrame("s", 0, 0.0, 0.0, True, "keyframe", full.shape[1], full.shape[0], {size: small}, full_rgb)


def test_scorer_rechecks_only_in_band_and_batches(tmp_path):
    path, _ = tiny_cam_model(tmp_path / "m.onnx")
    card = tiny_card(path)
    clf = OrtClassifier(card, path, threads=1)
    batches: list[tuple[str, int, str]] = []
    scorer = Scorer({"tiny": clf}, on_batch=lambda m, n, s: batches.append((m, n, s)))
    rng = np.random.default_rng(2)
    calls: list[int] = []
    frames = [_frame(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), card.working_size, calls) for _ in range(3)]
    everything = RecheckSpec(band=(0.0, 1.01), max_boxes=2, tiles=2)
    nothing = RecheckSpec(band=(2.0, 3.0))
    reqs = [
        ScoreRequest(frames[0], {"tiny": [Watch("c0", everything)]}),
        ScoreRequest(frames[1], {"tiny": [Watch("c1", nothing)]}),
        ScoreRequest(frames[2], {"tiny": [Watch("c2", None), Watch("c0", everything)]}),
    ]
    out = scorer.score(reqs)
    assert [set(o["tiny"].rechecks) for o in out] == [{"c0"}, set(), {"c0"}]
    rc = out[0]["tiny"].rechecks["c0"]
    assert rc.crops >= 4 and 0 <= rc.box[0] < rc.box[2] <= 96 and 0 <= rc.box[1] < rc.box[3] <= 64
    assert out[0]["tiny"].score("c0") == pytest.approx(max(rc.before, rc.after))
    # one whole-frame batch of 3, then one batch of boxes, then one of tiles: three engine calls
    assert [b[2] for b in batches] == ["frame", "recheck", "recheck"] and batches[0][1] == 3
    # only the two re-checked frames were converted to full resolution
    assert len(calls) == 2
