"""CONTRACT TESTS for the TensorRT backend.

A stand-in module exposing only the TensorRT 11.4 names from shared/reference checks our
build and run call sequence. These tests do not run TensorRT and prove nothing about
numerics; the `gpu` lane (tests/gpu) does that where a GPU with TensorRT exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from livemod.decoders.errors import GpuError, InferenceError, ModelError
from livemod.engines import cuda, trt
from livemod.engines.card import ModelCard
from livemod.engines.gpu import GpuProbe
from tests.trt_standin import API, FakeCudart, Recorder, make_tensorrt

pytestmark = pytest.mark.contract
SRC = Path(trt.__file__).read_text() + Path(cuda.__file__).read_text()
PROBE = GpuProbe(True, "stand-in", "NVIDIA H100 80GB HBM3", "9.0", "11.4.0-standin")


def card(layout: str = "NHWC") -> ModelCard:
    return ModelCard(name="m", version="1", file="m.onnx", layout=layout, size=(8, 8), channel_order="RGB",
                     resize="squash", labels=("a", "b"))


@pytest.fixture()
def onnx_file(tmp_path) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(b"not parsed by the stand-in")
    return p


@pytest.fixture()
def env(monkeypatch):
    def install(**kw):
        rec = Recorder()
        monkeypatch.setitem(__import__("sys").modules, "tensorrt", make_tensorrt(rec, **kw))
        fake = FakeCudart(rec)  # one instance: it owns the memory it hands out
        monkeypatch.setattr(cuda, "runtime", lambda: fake)
        return rec

    return install


@pytest.mark.parametrize(
    "removed",
    [r"get_binding", r"execute_async_v2", r"BuilderFlag\.FP16", r"BuilderFlag\.INT8", r"\.build_engine\(",
     r"max_workspace_size", r"EXPLICIT_BATCH", r"device_memory_size\b(?!_v2)", r"\bexecute\(", r"num_bindings"],
)
def test_no_removed_api(removed):
    assert not re.search(removed, SRC), f"uses removed TensorRT API {removed}"


def test_reference_copy_matches_shared():
    from tests.trt_standin import REFERENCE, SHARED

    if not SHARED.is_file():
        pytest.skip("shared/reference is not beside this checkout")
    assert REFERENCE.read_text() == SHARED.read_text()


def test_every_trt_attribute_we_touch_exists_in_11_4():
    used = set(re.findall(r"\btrt\.(\w+)", SRC))
    top = set(API["top-level"])
    assert used <= top | {"Logger"}, used - top
    methods = {"create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network",
               "parse_from_file", "num_errors", "get_error", "set_memory_pool_limit", "create_timing_cache",
               "set_timing_cache", "get_timing_cache", "add_optimization_profile", "set_shape",
               "deserialize_cuda_engine", "num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype",
               "get_tensor_shape", "create_execution_context", "set_input_shape", "set_tensor_address",
               "execute_async_v3", "serialize"}
    known = {n for names in API.values() if names for n in names}
    assert methods <= known
    for m in methods:
        assert re.search(rf"\.{m}\b", SRC), f"expected call {m} not found"


def test_build_sequence_profile_workspace_and_timing_cache(env, onnx_file, tmp_path):
    rec = env()
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = trt.build_plan(onnx_file, input_name="input", dims=(8, 8, 3), min_batch=1, opt_batch=4, max_batch=16,
                            workspace_bytes=1 << 28, timing_cache_path=cache)
    assert plan == b"PLAN"
    names = rec.names()
    assert names[:3] == ["Builder", "create_network", "parse_from_file"]
    assert ("create_network", (0,), {}) in rec.calls  # TensorRT 11: no EXPLICIT_BATCH flag
    assert ("set_memory_pool_limit", ("MemoryPoolType.WORKSPACE", 1 << 28), {}) in rec.calls
    assert ("set_shape", ("input", (1, 8, 8, 3), (4, 8, 8, 3), (16, 8, 8, 3)), {}) in rec.calls
    assert ("create_timing_cache", (b"old",), {}) in rec.calls
    assert names.index("add_optimization_profile") < names.index("build_serialized_network")
    assert cache.read_bytes() == b"old+timing"  # the cache round-trips to disk


def test_parser_errors_are_surfaced(env, onnx_file):
    env(parser_errors=["node Conv_3: unsupported attribute", "node Pad_7: bad pads"])
    with pytest.raises(ModelError) as info:
        trt.build_plan(onnx_file, input_name="input", dims=(8, 8, 3))
    assert "Conv_3" in str(info.value) and "Pad_7" in str(info.value) and info.value.reason == "trt_parse"


def test_failed_build_raises(env, onnx_file):
    env(fail_build=True)
    with pytest.raises(ModelError, match="failed to build"):
        trt.build_plan(onnx_file, input_name="input", dims=(8, 8, 3))


@pytest.mark.parametrize("bad", [(4, 2, 8), (1, 9, 8)])
def test_profile_order_checked(env, onnx_file, bad):
    env()
    with pytest.raises(Exception, match="min <= opt <= max"):
        trt.build_plan(onnx_file, input_name="input", dims=(8, 8, 3), min_batch=bad[0], opt_batch=bad[1], max_batch=bad[2])


def test_engine_cache_key_changes_with_each_part():
    base = ("sha", "11.4", "H100", "9.0", (1, 8, 16), (224, 224, 3))
    keys = {trt.engine_cache_key(*base)}
    for i, alt in enumerate(["sha2", "11.5", "A10G", "8.6", (1, 4, 16), (3, 224, 224)]):
        parts = list(base)
        parts[i] = alt
        keys.add(trt.engine_cache_key(*parts))
    assert len(keys) == 7


IO = {"input": ("in", (-1, 8, 8, 3)), "logits": ("out", (-1, 2)), "cams": ("out", (-1, 2, 2, 2))}


def test_run_sequence_sets_every_address_and_syncs(env, onnx_file, tmp_path):
    rec = env(io=IO)
    clf = trt.TrtClassifier(card(), onnx_file, cache_dir=tmp_path / "engines", max_batch=4, opt_batch=2, probe=PROBE)
    assert clf.engine_path.is_file()  # built once and cached
    batch = np.random.default_rng(0).random((7, 8, 8, 3), dtype=np.float32)  # 7 = 4 + 3 over two streams
    out = clf.infer(batch)
    assert out.logits.shape == (7, 2) and out.cams.shape == (7, 2, 2, 2)
    np.testing.assert_allclose(out.logits[:, 0], batch.reshape(7, -1).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, rtol=1e-6)
    names = rec.names()
    assert names.count("execute_async_v3") == 2 and names.count("set_input_shape") == 2
    assert ("set_input_shape", ("input", (4, 8, 8, 3)), {}) in rec.calls
    assert ("set_input_shape", ("input", (3, 8, 8, 3)), {}) in rec.calls
    addressed = [c[1][0] for c in rec.calls if c[0] == "set_tensor_address"]
    assert sorted(addressed) == sorted(list(IO) * 2), "every I/O tensor's address is set for every launch"
    assert names.count("cudaStreamCreate") == 2 and names.count("cudaStreamSynchronize") >= 2
    # both launches are enqueued before the first synchronize: copies of one overlap compute of the other
    first_sync = names.index("cudaStreamSynchronize")
    assert names[:first_sync].count("execute_async_v3") == 2
    # a second classifier finds the engine in the cache: no build
    rec.calls.clear()
    trt.TrtClassifier(card(), onnx_file, cache_dir=tmp_path / "engines", max_batch=4, opt_batch=2, probe=PROBE)
    assert "build_serialized_network" not in rec.names() and "deserialize_cuda_engine" in rec.names()


def test_execute_false_raises_gpu_error(env, onnx_file, tmp_path):
    env(io=IO, execute_ok=False)
    clf = trt.TrtClassifier(card(), onnx_file, cache_dir=tmp_path, max_batch=4, probe=PROBE)
    with pytest.raises(GpuError, match="execute_async_v3"):
        clf.infer(np.zeros((1, 8, 8, 3), np.float32))


def test_wrong_batch_shape_refused(env, onnx_file, tmp_path):
    env(io=IO)
    clf = trt.TrtClassifier(card(), onnx_file, cache_dir=tmp_path, max_batch=4, probe=PROBE)
    with pytest.raises(InferenceError):
        clf.infer(np.zeros((1, 3, 8, 8), np.float32))


def test_missing_tensor_is_model_error(env, onnx_file, tmp_path):
    env(io={"input": ("in", (-1, 8, 8, 3)), "logits": ("out", (-1, 2))})
    with pytest.raises(ModelError, match="cams"):
        trt.TrtClassifier(card(), onnx_file, cache_dir=tmp_path, max_batch=4, probe=PROBE)


def test_no_runtime_without_a_gpu(env, onnx_file, tmp_path):
    rec = env(io=IO)
    with pytest.raises(GpuError, match="no TensorRT here"):
        trt.TrtClassifier(card(), onnx_file, cache_dir=tmp_path, probe=GpuProbe(False, "no CUDA driver"))
    assert "deserialize_cuda_engine" not in rec.names()


def test_real_cuda_python_errors_name_the_cuda_error():
    """Real cuda-python (where installed) without a driver: the status becomes a named GpuError."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    from livemod.engines.gpu import probe_gpu

    if probe_gpu().available:
        pytest.skip("a GPU is present: this checks the no-driver path")
    with pytest.raises(GpuError) as info:
        cuda.device_count()
    assert re.search(r"cudaGetDeviceCount failed: cudaError(InsufficientDriver|NoDevice)", str(info.value))
    assert info.value.reason.startswith("cuda_cudaError")
