"""GPU lane: TensorRT against ONNX Runtime on real engines. Skips, saying why, without a GPU + TensorRT."""

from __future__ import annotations

import numpy as np
import pytest

from livemod.engines.gpu import probe_gpu

PROBE = probe_gpu()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not PROBE.available, reason=f"gpu lane: no NVIDIA GPU with TensorRT here ({PROBE.reason})"),
]


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def _compare(card, onnx_path, tmp_path, batch_sizes, tol, rng):
    from livemod.engines.ort import OrtClassifier
    from livemod.engines.trt import TrtClassifier

    trt_clf = TrtClassifier(card, onnx_path, cache_dir=tmp_path, max_batch=max(batch_sizes), opt_batch=4)
    ort_clf = OrtClassifier(card, onnx_path)
    shape = (card.size[1], card.size[0], 3) if card.layout == "NHWC" else (3, card.size[1], card.size[0])
    for n in batch_sizes:
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        a, b = trt_clf.infer(x), ort_clf.infer(x)
        np.testing.assert_allclose(a.probs, b.probs, atol=tol)
        np.testing.assert_allclose(a.cams, b.cams, atol=tol * max(1.0, float(np.abs(b.cams).max())))
    return trt_clf


def test_tiny_model_fp32(tmp_path, rng):
    from tests.tinymodels import tiny_card, tiny_cam_model

    path, _ = tiny_cam_model(tmp_path / "tiny.onnx")
    clf = _compare(tiny_card(path), path, tmp_path / "engines", [1, 3, 8], 1e-3, rng)
    # the engine and timing caches round-trip: a second classifier loads without building
    assert clf.engine_path.is_file() and (tmp_path / "engines" / "timing.cache").is_file()


def test_open_nsfw_fp32(models_dir, tmp_path, rng):
    from livemod.engines.card import load_cards

    card = load_cards()["open-nsfw"]
    _compare(card, card.path(models_dir), tmp_path, [1, 5, 16], 1e-3, rng)


def test_cam_maths_on_the_gpu(models_dir):
    """Grad-CAM = CAM / Z for a linear head, recomputed with CuPy from the features."""
    cp = pytest.importorskip("cupy", reason="gpu lane: CuPy is not installed")
    a = cp.random.standard_normal((2, 1024, 7, 7), dtype=cp.float32)
    w = cp.random.standard_normal((2, 1024), dtype=cp.float32)
    cams = cp.einsum("ck,nkij->ncij", w, a)
    logits = cp.einsum("ck,nk->nc", w, a.mean(axis=(2, 3)))
    cp.testing.assert_allclose(cams.mean(axis=(2, 3)), logits, rtol=1e-4, atol=1e-4)
