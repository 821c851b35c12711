"""CONTRACT TESTS for the TensorRT backend: they do not run TensorRT.

A stand-in module exposing only the TensorRT 11.4 names from shared/reference (tests/reference
holds a copy) checks our build and run call sequence. They prove names and call order, not
numerics; the `gpu` lane (tests/gpu) compares real TensorRT with ONNX Runtime where a GPU
with TensorRT exists. The CUDA error mapping is also checked against the real cuda-python,
which imports without a driver and answers cudaErrorInsufficientDriver.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from livemod.core.errors import ConfigError, GpuError, InferenceError, ModelError
from livemod.engines import cuda, gpu, trt
from livemod.engines.card import ModelCard
from livemod.engines.gpu import GpuProbe
from tests import trt_standin
from tests.trt_standin import API, FakeCudart, Recorder, make_tensorrt

pytestmark = pytest.mark.contract
TRT_SRC = Path(trt.__file__).read_text()
SRC = TRT_SRC + Path(cuda.__file__).read_text() + Path(gpu.__file__).read_text()
PROBE = GpuProbe(True, "stand-in", "NVIDIA H100 80GB HBM3", "9.0", "11.4.0-standin")
IO = {"input": ("in", (-1, 8, 8, 3)), "logits": ("out", (-1, 2)), "cams": ("out", (-1, 2, 2, 2))}


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
    """Install the stand-ins as `tensorrt` and as cuda-python's runtime; returns the recorder."""

    def install(fail: dict[str, tuple[int, str]] | None = None, **kw) -> Recorder:
        rec = Recorder()
        monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(rec, **kw))
        fake = FakeCudart(rec, fail)  # one instance: it owns the memory it hands out
        monkeypatch.setattr(cuda, "runtime", lambda: fake)
        return rec

    return install


def classifier(tmp_path: Path, onnx_file: Path, **kw) -> trt.TrtClassifier:
    kw = {"max_batch": 4, "opt_batch": 2, "probe": PROBE, **kw}
    return trt.TrtClassifier(card(), onnx_file, cache_dir=tmp_path / "engines", **kw)


# ---- names: nothing removed since TensorRT 8/10, nothing 11.4 lacks ------------------------


@pytest.mark.parametrize(
    "removed",
    [r"get_binding", r"binding_is_input", r"num_bindings", r"execute_async_v2",
     r"\bexecute\(", r"BuilderFlag\.FP16", r"BuilderFlag\.INT8", r"int8_calibrator", r"\.build_engine\(",
     r"max_workspace_size", r"max_batch_size", r"EXPLICIT_BATCH", r"device_memory_size\b(?!_v2)",
     r"set_binding_shape", r"pycuda"],
)
def test_no_removed_api(removed):
    # `\.build_engine\(` is Builder.build_engine (removed); our module-level build_engine() is not a method call.
    assert not re.search(removed, SRC), f"uses removed TensorRT API {removed}"


def test_reference_copy_matches_shared():
    if not trt_standin.SHARED.is_file():
        pytest.skip("shared/reference is not beside this checkout")
    assert trt_standin.REFERENCE.read_text() == trt_standin.SHARED.read_text()


def test_every_trt_name_we_touch_exists_in_11_4():
    top = set(API["top-level"])
    used_top = set(re.findall(r"\btrt\.(\w+)", TRT_SRC))
    assert used_top and used_top <= top, used_top - top
    methods = set(re.findall(r"\.(\w+)\(", TRT_SRC)) | set(re.findall(r"\.(num_\w+)\b", TRT_SRC))
    trt_methods = {
        "create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network",
        "parse_from_file", "num_errors", "get_error", "num_inputs", "get_input", "set_memory_pool_limit",
        "create_timing_cache", "set_timing_cache", "get_timing_cache", "add_optimization_profile", "set_shape",
        "serialize", "deserialize_cuda_engine", "num_io_tensors", "get_tensor_name", "get_tensor_mode",
        "get_tensor_dtype", "get_tensor_shape", "get_tensor_profile_shape", "create_execution_context",
        "set_input_shape", "set_tensor_address", "execute_async_v3",
    }
    known = {n for names in API.values() if names for n in names}
    assert trt_methods <= known, trt_methods - known
    assert trt_methods <= methods, f"expected calls not found: {trt_methods - methods}"


def test_standin_exposes_only_11_4_names():
    """The stand-in cannot let a name through that TensorRT 11.4 lacks."""
    for cls in vars(trt_standin).values():
        if isinstance(cls, type) and issubclass(cls, trt_standin.Strict) and cls is not trt_standin.Strict:
            public = {n for n in vars(cls) if not n.startswith("_")}
            assert public <= set(API[cls._section] or []), (cls.__name__, public - set(API[cls._section] or []))
    with pytest.raises(AttributeError, match="no attribute 'get_binding_shape'"):
        trt_standin.FakeContext(Recorder(), IO, True, None).get_binding_shape  # noqa: B018


# ---- build ------------------------------------------------------------------------------


def test_build_sequence_profile_workspace_and_timing_cache(env, onnx_file, tmp_path):
    rec = env()
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = trt.build_engine(onnx_file, input_name="input", dims=(8, 8, 3), min_batch=1, opt_batch=4, max_batch=16,
                            workspace_bytes=1 << 28, timing_cache_path=cache)
    assert plan.startswith(b"PLAN:")
    names = rec.names()
    assert names[:3] == ["Builder", "create_network", "parse_from_file"]
    assert rec.args("create_network") == [(0,)]  # TensorRT 11: explicit batch always, no EXPLICIT_BATCH flag
    assert rec.args("set_memory_pool_limit") == [("MemoryPoolType.WORKSPACE", 1 << 28)]
    assert rec.args("set_shape") == [("input", (1, 8, 8, 3), (4, 8, 8, 3), (16, 8, 8, 3))]
    assert rec.args("create_timing_cache") == [(b"old",)] and rec.args("set_timing_cache") == [(b"old", False)]
    assert names.index("set_timing_cache") < names.index("build_serialized_network")
    assert names.index("add_optimization_profile") < names.index("build_serialized_network")
    assert cache.read_bytes() == b"old+timing"  # saved after the build: the round trip to disk


def test_build_reads_input_name_and_dims_from_the_network(env, onnx_file):
    rec = env(net_inputs={"images": (-1, 3, 32, 32)})
    trt.build_engine(onnx_file, opt_batch=2, max_batch=4)
    assert rec.args("set_shape") == [("images", (1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))]


@pytest.mark.parametrize(
    ("net_inputs", "kw", "error", "match"),
    [
        ({"a": (-1, 3, 8, 8), "b": (-1, 4)}, {}, ModelError, "name the one"),
        ({"input": (-1, 3, 8, 8)}, {"input_name": "x"}, ModelError, "no input 'x'"),
        ({"input": (-1, 3, -1, -1)}, {}, ConfigError, "pass dims"),
        ({"input": (-1, 3, 8, 8)}, {"dims": (8, 8, 3)}, ModelError, "does not fit"),
    ],
)
def test_build_input_problems(env, onnx_file, net_inputs, kw, error, match):
    env(net_inputs=net_inputs)
    with pytest.raises(error, match=match):
        trt.build_engine(onnx_file, **kw)


def test_stale_timing_cache_is_replaced(env, onnx_file, tmp_path):
    rec = env(timing_ok=False)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from-another-gpu")
    trt.build_engine(onnx_file, timing_cache_path=cache)
    assert rec.args("set_timing_cache") == [(b"from-another-gpu", False), (b"", False)]
    assert cache.read_bytes() == b"+timing"


def test_every_parser_error_is_surfaced(env, onnx_file):
    env(parser_errors=["Conv: unsupported attribute auto_pad", "Pad: bad pads", "Resize: mode cubic"])
    with pytest.raises(ModelError) as info:
        trt.build_engine(onnx_file, input_name="input", dims=(8, 8, 3))
    msg = str(info.value)
    assert "3 errors" in msg and info.value.reason == "trt_parse"
    for part in ("auto_pad", "bad pads", "mode cubic", "In node 3", "In node 5"):
        assert part in msg


def test_failed_build_raises(env, onnx_file):
    env(fail_build=True)
    with pytest.raises(ModelError, match="failed to build") as info:
        trt.build_engine(onnx_file, input_name="input", dims=(8, 8, 3))
    assert info.value.reason == "trt_build"


@pytest.mark.parametrize("bad", [(4, 2, 8), (1, 9, 8), (0, 1, 8), (2, 2, 1)])
def test_profile_order_checked(env, onnx_file, bad):
    rec = env()
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        trt.build_engine(onnx_file, min_batch=bad[0], opt_batch=bad[1], max_batch=bad[2])
    assert rec.calls == []  # refused before any TensorRT object exists


# ---- engine cache key -------------------------------------------------------------------

BASE = ("sha", "11.4.0", "NVIDIA H100 80GB HBM3", "9.0", (1, 8, 16), (224, 224, 3))


@pytest.mark.parametrize(
    ("part", "alt"),
    [(0, "sha-of-fp16"), (1, "11.5.0"), (2, "NVIDIA A10G"), (3, "8.6"), (4, (1, 4, 16)), (4, (1, 8, 32)),
     (5, (3, 224, 224))],
)
def test_engine_cache_key_changes_with_each_part(part, alt):
    parts = list(BASE)
    parts[part] = alt
    assert trt.engine_cache_key(*parts) != trt.engine_cache_key(*BASE)
    assert trt.engine_cache_key(*BASE) == trt.engine_cache_key(*BASE)  # and is stable


def test_engine_cache_path_follows_the_onnx_bytes(tmp_path, onnx_file):
    kw = {"tensorrt_version": "11.4.0", "gpu_name": "H100", "compute_capability": "9.0", "profile": (1, 2, 4)}
    a = trt.engine_cache_path(tmp_path, card(), onnx_file, **kw)
    onnx_file.write_bytes(b"another model")
    b = trt.engine_cache_path(tmp_path, card(), onnx_file, **kw)
    assert a != b and a.parent == tmp_path and a.name.startswith("m-") and a.suffix == ".plan"


# ---- run --------------------------------------------------------------------------------


def test_run_sequence_sets_every_address_and_syncs(env, onnx_file, tmp_path):
    rec = env(io=IO)
    clf = classifier(tmp_path, onnx_file)
    assert clf.engine_path.is_file() and clf.max_batch == 4  # built once, cached, max batch from the profile
    assert (clf.engine_path.parent / "timing.cache").is_file()
    contexts = {c[1][1] for c in rec.calls if c[0] == "set_tensor_address"}
    assert len(contexts) == 2, "one execution context per stream"
    for ctx in contexts:  # every I/O tensor's address is set on every context
        assert sorted(c[1][0] for c in rec.calls if c[0] == "set_tensor_address" and c[1][1] == ctx) == sorted(IO)
    # buffers are sized from the profile's max shape: 4 x 8x8x3, 4 x 2, 4 x 2x2x2 float32, pinned and device
    assert sorted(rec.args("cudaMallocHost")) == sorted(rec.args("cudaMalloc")) == sorted([(3072,), (32,), (128,)] * 2)
    assert rec.args("cudaStreamCreateWithFlags") == [(1,), (1,)]  # non-blocking streams
    rec.calls.clear()

    batch = np.random.default_rng(0).random((7, 8, 8, 3), dtype=np.float32)  # 7 = 4 + 3 on the two streams
    out = clf.infer(batch)
    assert out.logits.shape == (7, 2) and out.probs.shape == (7, 2) and out.cams.shape == (7, 2, 2, 2)
    assert out.logits.dtype == out.probs.dtype == out.cams.dtype == np.float32
    np.testing.assert_allclose(out.logits[:, 0], batch.reshape(7, -1).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(out.cams[:, 1, 1, 0], batch.reshape(7, -1).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(out.probs, 0.5, rtol=1e-6)  # softmax on the host, as ONNX Runtime's backend
    names = rec.names()
    assert rec.args("set_input_shape") == [("input", (4, 8, 8, 3)), ("input", (3, 8, 8, 3))]
    assert names.count("execute_async_v3") == 2
    streams = [a[0] for a in rec.args("execute_async_v3")]
    assert len(set(streams)) == 2 and all(isinstance(s, int) for s in streams)
    # per launch: H2D, execute, D2H on the same stream; both launched before the first synchronize
    first_sync = names.index("cudaStreamSynchronize")
    assert names[:first_sync].count("execute_async_v3") == 2
    copies = rec.args("cudaMemcpyAsync")
    assert [(k, n) for k, n, _s in copies] == [(1, 3072), (2, 32), (2, 128), (1, 2304), (2, 24), (2, 96)]
    assert sorted(a[0] for a in rec.args("cudaStreamSynchronize")) == sorted(streams)
    clf.close()
    assert len(rec.args("cudaFree")) == len(rec.args("cudaFreeHost")) == 6 and len(rec.args("cudaStreamDestroy")) == 2
    with pytest.raises(InferenceError, match="closed"):
        clf.infer(batch[:1])


def test_engine_cache_round_trip(env, onnx_file, tmp_path):
    rec = env(io=IO)
    first = classifier(tmp_path, onnx_file)
    rec.calls.clear()
    second = classifier(tmp_path, onnx_file)
    assert second.engine_path == first.engine_path
    assert "build_serialized_network" not in rec.names() and rec.names().count("deserialize_cuda_engine") == 1
    rec.calls.clear()
    third = classifier(tmp_path, onnx_file, max_batch=8)  # another profile: another plan
    assert third.engine_path != first.engine_path and "build_serialized_network" in rec.names()


def test_a_plan_that_does_not_load_is_rebuilt(env, onnx_file, tmp_path):
    rec = env(io=IO)
    path = classifier(tmp_path, onnx_file).engine_path
    path.write_bytes(b"corrupt or from another TensorRT")
    rec.calls.clear()
    clf = classifier(tmp_path, onnx_file)
    assert rec.names().count("deserialize_cuda_engine") == 2 and "build_serialized_network" in rec.names()
    assert clf.engine_path.read_bytes().startswith(b"PLAN:")


def test_concurrent_callers_use_separate_contexts(env, onnx_file, tmp_path):
    rec = env(io=IO)
    clf = classifier(tmp_path, onnx_file)
    rng = np.random.default_rng(1)
    batches = [rng.random((n, 8, 8, 3), dtype=np.float32) for n in (1, 2, 3, 4, 5, 6, 7, 8)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = clf.infer(batches[i]).logits[:, 0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, b in enumerate(batches):
        np.testing.assert_allclose(results[i], b.reshape(len(b), -1).mean(axis=1), rtol=1e-5)
    assert len({a[1] for a in rec.args("execute_async_v3")}) == 2


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_data_path_matches_onnx_runtime(env, tmp_path, layout):
    """The stand-in engine computes with ONNX Runtime on what reached its 'device' buffers: our
    pinned buffers, chunking, strides and output slicing must give exactly ONNX Runtime's outputs."""
    import onnxruntime as ort

    from livemod.engines.ort import OrtClassifier
    from tests.tinymodels import tiny_cam_model, tiny_card

    path, _ = tiny_cam_model(tmp_path / "tiny.onnx", layout=layout)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    io = {"input": ("in", (-1, *trt.input_dims(tiny_card(path, layout=layout)))),
          "logits": ("out", (-1, 3)), "cams": ("out", (-1, 3, 4, 4))}
    env(io=io, compute=lambda inputs: dict(zip(["logits", "cams"], sess.run(["logits", "cams"], inputs))))
    card = tiny_card(path, layout=layout)
    clf = trt.TrtClassifier(card, path, cache_dir=tmp_path / "engines", max_batch=4, opt_batch=2, probe=PROBE)
    ref = OrtClassifier(card, path)
    rng = np.random.default_rng(5)
    for n in (1, 3, 4, 9):
        batch = rng.random((n, *clf.dims), dtype=np.float32)
        a, b = clf.infer(batch), ref.infer(batch)
        for got, want in ((a.logits, b.logits), (a.probs, b.probs), (a.cams, b.cams)):
            assert got.shape == want.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_fp16_io_engine_still_returns_float32(env, onnx_file, tmp_path):
    """An engine whose I/O is HALF (an FP16 ONNX without --keep_io_types): converted at the boundary."""
    env(io={"input": ("in", (-1, 8, 8, 3), "DataType.HALF"), "logits": ("out", (-1, 2), "DataType.HALF"),
            "cams": ("out", (-1, 2, 2, 2), "DataType.HALF")})
    clf = classifier(tmp_path, onnx_file)
    batch = np.random.default_rng(2).random((3, 8, 8, 3), dtype=np.float32)
    out = clf.infer(batch)
    assert out.logits.dtype == out.cams.dtype == np.float32
    np.testing.assert_allclose(out.logits[:, 0], batch.reshape(3, -1).mean(axis=1), atol=1e-3)


def test_execute_false_raises_gpu_error(env, onnx_file, tmp_path):
    rec = env(io=IO, execute_ok=False)
    clf = classifier(tmp_path, onnx_file)
    with pytest.raises(GpuError, match="execute_async_v3 returned False") as info:
        clf.infer(np.zeros((1, 8, 8, 3), np.float32))
    assert info.value.reason == "trt_execute" and info.value.retriable
    assert "cudaStreamSynchronize" in rec.names()  # the failed slot is drained before it is reused
    with pytest.raises(GpuError):  # and the slots went back to the pool: the next call does not hang
        clf.infer(np.zeros((5, 8, 8, 3), np.float32))


@pytest.mark.parametrize(
    ("fail", "call", "when"),
    [
        ({"cudaMalloc": (2, "cudaErrorMemoryAllocation")}, "cudaMalloc", "init"),
        ({"cudaMallocHost": (2, "cudaErrorMemoryAllocation")}, "cudaMallocHost", "init"),
        ({"cudaMemcpyAsync": (700, "cudaErrorIllegalAddress")}, r"cudaMemcpyAsync\(HtoD\)", "infer"),
        ({"cudaStreamSynchronize": (700, "cudaErrorIllegalAddress")}, "cudaStreamSynchronize", "infer"),
    ],
)
def test_cuda_status_becomes_named_gpu_error(env, onnx_file, tmp_path, fail, call, when):
    env(io=IO, fail=fail)
    name = next(iter(fail.values()))[1]
    with pytest.raises(GpuError, match=rf"{call} failed: {name}") as info:
        classifier(tmp_path, onnx_file).infer(np.zeros((2, 8, 8, 3), np.float32))
    assert info.value.reason == f"cuda_{name}"


@pytest.mark.parametrize(
    "batch",
    [np.zeros((1, 3, 8, 8), np.float32), np.zeros((0, 8, 8, 3), np.float32), np.zeros((1, 8, 8, 3), np.float64),
     np.zeros((8, 8, 3), np.float32)],
)
def test_wrong_batch_refused(env, onnx_file, tmp_path, batch):
    rec = env(io=IO)
    clf = classifier(tmp_path, onnx_file)
    rec.calls.clear()
    with pytest.raises(InferenceError):
        clf.infer(batch)
    assert rec.calls == []


@pytest.mark.parametrize(
    ("io", "match"),
    [
        ({"input": ("in", (-1, 8, 8, 3)), "logits": ("out", (-1, 2))}, "cams"),
        ({**IO, "extra": ("in", (-1, 4))}, "expects"),
        ({**IO, "cams": ("out", (-1, 2, -1, -1))}, "static shape"),
        ({**IO, "logits": ("out", (-1, 2), "DataType.BF16")}, "numpy cannot hold"),
    ],
)
def test_engine_that_does_not_fit_the_card(env, onnx_file, tmp_path, io, match):
    env(io=io, net_inputs={"input": (-1, 8, 8, 3)})
    with pytest.raises(ModelError, match=match):
        classifier(tmp_path, onnx_file)


def test_no_runtime_without_a_gpu(env, onnx_file, tmp_path):
    rec = env(io=IO)
    with pytest.raises(GpuError, match="no TensorRT here: no CUDA driver") as info:
        classifier(tmp_path, onnx_file, probe=GpuProbe(False, "no CUDA driver"))
    assert rec.calls == [] and info.value.reason == "no_gpu"


# ---- the probe and the backend choice ---------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "backend"),
    [("onnxruntime", "onnxruntime"), ("auto", "onnxruntime"), ("tensorrt", "onnxruntime")],
)
def test_choose_backend_without_a_gpu(requested, backend):
    if gpu.probe_gpu().available:
        pytest.skip("a GPU with TensorRT is present")
    got, reason = gpu.choose_backend(requested)
    assert got == backend and reason


def test_choose_backend_refuses_unknown_names():
    with pytest.raises(ConfigError, match="auto, tensorrt, onnxruntime"):
        gpu.choose_backend("cuda")


def test_probe_never_creates_a_runtime_without_a_gpu(monkeypatch):
    """With cuda-python answering 'no driver', the probe stops before even importing tensorrt."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    rec = Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(rec, io=IO))
    probe = gpu._probe()
    if probe.available:
        pytest.skip("a GPU is present: this checks the no-driver path")
    assert not probe.available and "cudaGetDeviceCount failed" in probe.reason
    assert "Runtime" not in rec.names() and probe.tensorrt_version is None


def test_real_cuda_python_errors_name_the_cuda_error():
    """Real cuda-python without a driver: the status becomes a GpuError naming the CUDA error and the call."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    if gpu.probe_gpu().available:
        pytest.skip("a GPU is present: this checks the no-driver path")
    with pytest.raises(GpuError) as info:
        cuda.device_count()
    assert re.search(r"cudaGetDeviceCount failed: cudaError(InsufficientDriver|NoDevice) \(.+\)", str(info.value))
    assert info.value.reason in ("cuda_cudaErrorInsufficientDriver", "cuda_cudaErrorNoDevice")
    with pytest.raises(GpuError, match=r"cudaMallocHost failed: cudaError(InsufficientDriver|NoDevice)"):
        cuda.Buffer.allocate((4, 8), np.float32)
    with pytest.raises(GpuError, match=r"cudaStreamCreateWithFlags failed: cudaError"):
        cuda.stream_create()
