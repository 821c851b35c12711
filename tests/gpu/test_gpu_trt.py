"""GPU lane: real CUDA and TensorRT against ONNX Runtime. Skips, saying why, without an NVIDIA GPU/TensorRT.

Two levels: the cuda-python helpers need only a CUDA device; the TensorRT comparisons need
TensorRT 11 too (engines/gpu.py's probe decides, and never creates a Runtime without a GPU).
"""

from __future__ import annotations

import importlib.util
import threading
import time

import numpy as np
import pytest

from livemod.core.errors import GpuError
from livemod.engines import cuda
from livemod.engines.gpu import probe_gpu

PROBE = probe_gpu()
HAVE_GPU = PROBE.device_name is not None
pytestmark = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not HAVE_GPU, reason=f"no NVIDIA GPU/TensorRT: {PROBE.reason}")
needs_trt = pytest.mark.skipif(not PROBE.available, reason=f"no NVIDIA GPU/TensorRT: {PROBE.reason}")
FP32_TOL, FP16_TOL = 1e-3, 1e-2


def _photos(card, n: int) -> np.ndarray:
    from livemod.engines.fp16 import sample_images
    from livemod.engines.preprocess import prepare_batch

    imgs = sample_images()
    return prepare_batch(card, [imgs[i % len(imgs)] for i in range(n)])


def _compare(trt_clf, ort_clf, batch: np.ndarray, tol: float) -> float:
    a, b = trt_clf.infer(batch), ort_clf.infer(batch)
    assert a.logits.shape == b.logits.shape and a.cams.shape == b.cams.shape
    assert a.probs.dtype == a.cams.dtype == np.float32
    np.testing.assert_allclose(a.probs, b.probs, atol=tol)
    scale = max(1.0, float(np.abs(b.cams).max()))
    np.testing.assert_allclose(a.cams, b.cams, atol=tol * scale)
    np.testing.assert_array_equal(a.probs.argmax(1), b.probs.argmax(1))
    return float(np.abs(a.probs - b.probs).max())


# ---- cuda-python on a real device (no TensorRT needed) -----------------------------------


@needs_gpu
def test_pinned_buffer_round_trip_on_a_stream():
    buf = cuda.Buffer.allocate((4, 8), np.float32)
    back = cuda.Buffer.allocate((4, 8), np.float32)
    stream = cuda.stream_create()
    try:
        buf.host[...] = np.arange(32, dtype=np.float32).reshape(4, 8)
        cuda.copy_htod_async(buf.device, buf.host, buf.nbytes, stream)
        cuda.check(cuda.runtime().cudaMemcpyAsync(back.device, buf.device, buf.nbytes,
                                                  cuda.runtime().cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream),
                   "cudaMemcpyAsync(DtoD)")
        cuda.copy_dtoh_async(back.host, back.device, back.nbytes, stream)
        cuda.stream_sync(stream)
        np.testing.assert_array_equal(back.host, buf.host)
    finally:
        buf.free()
        back.free()
        cuda.stream_destroy(stream)


@needs_gpu
def test_real_cuda_error_is_named():
    with pytest.raises(GpuError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation") as info:
        cuda.Buffer.allocate((1 << 50,), np.uint8)
    assert info.value.reason == "cuda_cudaErrorMemoryAllocation"


# ---- TensorRT against ONNX Runtime -------------------------------------------------------


@needs_trt
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_tiny_model_fp32_and_caches(tmp_path, layout):
    from livemod.engines.ort import OrtClassifier
    from livemod.engines.trt import TIMING_CACHE_NAME, TrtClassifier
    from tests.tinymodels import tiny_cam_model, tiny_card

    path, _ = tiny_cam_model(tmp_path / "tiny.onnx", layout=layout)
    card = tiny_card(path, layout=layout)
    engines = tmp_path / "engines"
    t0 = time.perf_counter()
    clf = TrtClassifier(card, path, cache_dir=engines, max_batch=8, opt_batch=4)
    built_s = time.perf_counter() - t0
    ort_clf = OrtClassifier(card, path, max_batch=8)
    rng = np.random.default_rng(0)
    for n in (1, 3, 8, 11):  # 1, odd, max, and over max (split over both streams)
        _compare(clf, ort_clf, rng.random((n, *clf.dims), dtype=np.float32), FP32_TOL)
    # engine cache: a second classifier deserializes the same plan without building
    plan, mtime = clf.engine_path, clf.engine_path.stat().st_mtime_ns
    timing = engines / TIMING_CACHE_NAME
    assert plan.is_file() and timing.stat().st_size > 0
    clf.close()
    t0 = time.perf_counter()
    again = TrtClassifier(card, path, cache_dir=engines, max_batch=8, opt_batch=4)
    loaded_s = time.perf_counter() - t0
    assert again.engine_path == plan and plan.stat().st_mtime_ns == mtime
    _compare(again, ort_clf, rng.random((5, *clf.dims), dtype=np.float32), FP32_TOL)
    print(f"tiny {layout}: build+load {built_s:.2f} s, load from cache {loaded_s:.3f} s")
    # timing cache: a build with another profile reads it and writes it back
    other = TrtClassifier(card, path, cache_dir=engines, max_batch=4, opt_batch=2)
    assert other.engine_path != plan and timing.stat().st_size > 0
    again.close()
    other.close()


@needs_trt
def test_tiny_model_fp16(tmp_path):
    from livemod.engines.ort import OrtClassifier
    from livemod.engines.trt import TrtClassifier
    from tests.fp16models import fp16_by_hand
    from tests.tinymodels import tiny_cam_model, tiny_card

    p32, _ = tiny_cam_model(tmp_path / "tiny.onnx")
    p16 = fp16_by_hand(p32, tmp_path / "tiny-fp16.onnx")
    card = tiny_card(p32)
    with TrtClassifier(card, p16, cache_dir=tmp_path / "engines", max_batch=8, opt_batch=4) as clf:
        ort32 = OrtClassifier(card, p32)
        rng = np.random.default_rng(1)
        for n in (1, 5, 8):
            _compare(clf, ort32, rng.random((n, *clf.dims), dtype=np.float32), FP16_TOL)


@needs_trt
def test_open_nsfw_fp32(models_dir, tmp_path):
    from livemod.engines.card import load_cards
    from livemod.engines.ort import OrtClassifier
    from livemod.engines.trt import TrtClassifier

    card = load_cards()["open-nsfw"]
    path = card.verify_file(models_dir)
    with TrtClassifier(card, path, cache_dir=tmp_path, max_batch=16, opt_batch=8) as clf:
        ort_clf = OrtClassifier(card, path, max_batch=16)
        diffs = [_compare(clf, ort_clf, _photos(card, n), FP32_TOL) for n in (1, 5, 16)]
        print(f"open-nsfw FP32: max |p_trt - p_ort| = {max(diffs):.2e}")


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is None,
                    reason="ModelOpt (livemod[fp16]) is not installed: no AutoCast FP16 model to build")
@needs_trt
def test_open_nsfw_fp16_autocast(models_dir, tmp_path):
    from livemod.engines.card import load_cards
    from livemod.engines.fp16 import convert_fp16
    from livemod.engines.ort import OrtClassifier
    from livemod.engines.trt import TrtClassifier

    card = load_cards()["open-nsfw"]
    work = tmp_path / "models"
    work.mkdir()
    src = card.verify_file(models_dir)
    (work / src.name).symlink_to(src)
    for sidecar in src.parent.glob(src.name + ".sha256"):
        (work / sidecar.name).symlink_to(sidecar)
    p16 = convert_fp16(card, work)
    with TrtClassifier(card, p16, cache_dir=tmp_path / "engines", max_batch=16, opt_batch=8) as clf:
        ort32 = OrtClassifier(card, src, max_batch=16)
        diffs = [_compare(clf, ort32, _photos(card, n), FP16_TOL) for n in (1, 5, 16)]
        print(f"open-nsfw FP16 (AutoCast): max |p_trt16 - p_ort32| = {max(diffs):.2e}")


@needs_trt
def test_concurrent_callers_match_sequential(tmp_path):
    from livemod.engines.trt import TrtClassifier
    from tests.tinymodels import tiny_cam_model, tiny_card

    path, _ = tiny_cam_model(tmp_path / "tiny.onnx")
    with TrtClassifier(tiny_card(path), path, cache_dir=tmp_path, max_batch=8, opt_batch=4) as clf:
        rng = np.random.default_rng(2)
        batches = [rng.random((n, *clf.dims), dtype=np.float32) for n in (1, 2, 3, 5, 7, 8, 13, 16)]
        expected = [clf.infer(b).logits for b in batches]
        got: dict[int, list[np.ndarray]] = {i: [] for i in range(len(batches))}

        def work(i: int) -> None:
            for _ in range(20):
                got[i].append(clf.infer(batches[i]).logits)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, exp in enumerate(expected):
            assert len(got[i]) == 20
            for g in got[i]:
                np.testing.assert_array_equal(g, exp)


@needs_gpu
def test_cam_maths_on_the_gpu():
    """CAM = W . A per cell and logits = mean(CAM) + b (Grad-CAM = CAM / Z), CuPy against NumPy."""
    cp = pytest.importorskip("cupy", reason="CuPy is not installed")
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 1024, 7, 7), dtype=np.float32)
    w = rng.standard_normal((2, 1024), dtype=np.float32)
    b = rng.standard_normal(2, dtype=np.float32)
    cams = cp.einsum("ck,nkij->ncij", cp.asarray(w), cp.asarray(a))
    logits = cp.einsum("ck,nk->nc", cp.asarray(w), cp.asarray(a).mean(axis=(2, 3))) + cp.asarray(b)
    cp.testing.assert_allclose(cams.mean(axis=(2, 3)) + cp.asarray(b), logits, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(cp.asnumpy(cams), np.einsum("ck,nkij->ncij", w, a), rtol=1e-4, atol=1e-3)

