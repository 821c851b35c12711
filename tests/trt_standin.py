"""A recording stand-in for `tensorrt` and `cuda.bindings.runtime`, for CONTRACT TESTS ONLY.

It exposes only names that TensorRT 11.4 has (read from tests/reference/tensorrt-11.4-python-api.txt,
a copy of shared/reference): touching any other public attribute raises AttributeError, as the
real module would, and a test checks that every public name these classes define is in the
reference. It runs no network and builds nothing; it records the calls so tests can check our
build and run sequence. Its "engine" computes a canned function of the input (logits = the
per-sample mean, cams = that value broadcast) so the data path through the buffers can be
checked. Nothing it returns is presented as TensorRT's numerics.
"""

from __future__ import annotations

import ast
import ctypes
import json
import re
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

# A copy of shared/reference/tensorrt-11.4-python-api.txt (the names TensorRT 11.4 exposes),
# kept in the repo so a clone without shared/ still runs the contract tests.
REFERENCE = Path(__file__).resolve().parent / "reference" / "tensorrt-11.4-python-api.txt"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tensorrt-11.4-python-api.txt"


def load_reference(path: Path = REFERENCE) -> dict[str, list[str] | None]:
    """{section: names} from the reference file; None for sections marked MISSING."""
    out: dict[str, list[str] | None] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"== (?:enum )?([\w-]+): (.*)$", line)
        if not m:
            continue
        name, rest = m.groups()
        out[name] = None if rest.strip() == "MISSING" else ast.literal_eval(rest.strip())
    return out


API = load_reference()

# TensorIO / DataType values the stand-in hands out (strings named after the real enum members)
_NPTYPES = {"DataType.FLOAT": np.float32, "DataType.HALF": np.float16, "DataType.INT32": np.int32}


class Recorder:
    """The calls made on the stand-ins, in order: (name, args, kwargs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def add(self, name: str, *args: Any, **kw: Any) -> None:
        self.calls.append((name, args, kw))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def args(self, name: str) -> list[tuple]:
        return [c[1] for c in self.calls if c[0] == name]


class Strict:
    """Allows only the public attributes the reference lists for ``_section``."""

    _section = ""

    def __getattribute__(self, item: str) -> Any:
        if not item.startswith("_"):
            section = object.__getattribute__(self, "_section")
            if item not in (API.get(section) or []):
                raise AttributeError(f"TensorRT 11.4 {section} has no attribute {item!r}")
        return object.__getattribute__(self, item)


def _enum(section: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{n: f"{section}.{n}" for n in API.get(section) or []})


def _nptype(dt: str) -> type:
    if dt not in _NPTYPES:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return _NPTYPES[dt]


class FakeParserError:
    """Like tensorrt's ParserError: ``str()`` carries node, code and description."""

    def __init__(self, node: int, desc: str) -> None:
        self._node, self._desc = node, desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return f"In node {self._node} with name: n{self._node}: UNSUPPORTED_NODE: {self._desc}"


class FakeTimingCache(Strict):
    _section = "ITimingCache"

    def __init__(self, data: bytes) -> None:
        self._data = data

    def serialize(self) -> bytes:
        return self._data


class FakeConfig(Strict):
    _section = "IBuilderConfig"

    def __init__(self, rec: Recorder, timing_ok: bool) -> None:
        self._rec, self._timing_ok = rec, timing_ok
        self._cache = b""

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self._rec.add("set_memory_pool_limit", pool, size)

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        self._rec.add("create_timing_cache", bytes(data))
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self._rec.add("set_timing_cache", cache._data, ignore_mismatch)
        ok = self._timing_ok or not cache._data  # a stale cache is refused, an empty one always fits
        if ok:
            self._cache = cache._data + b"+timing"
        return ok

    def get_timing_cache(self) -> FakeTimingCache:
        return FakeTimingCache(self._cache)

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self._rec.add("add_optimization_profile", profile._shapes)
        return 0


class FakeProfile(Strict):
    _section = "IOptimizationProfile"

    def __init__(self, rec: Recorder) -> None:
        self._rec = rec
        self._shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, mn: tuple, opt: tuple, mx: tuple) -> None:
        self._rec.add("set_shape", name, tuple(mn), tuple(opt), tuple(mx))
        self._shapes[name] = (tuple(mn), tuple(opt), tuple(mx))


class FakeTensor(Strict):
    _section = "ITensor"

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self._name, self._shape = name, shape

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape


class FakeNetwork(Strict):
    _section = "INetworkDefinition"

    def __init__(self, inputs: dict[str, tuple[int, ...]]) -> None:
        self._inputs = [FakeTensor(n, s) for n, s in inputs.items()]

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, i: int) -> FakeTensor:
        return self._inputs[i]


class FakeBuilder(Strict):
    """Its plan is ``PLAN:`` + the profile as JSON, so a deserialized engine knows its profile."""

    _section = "Builder"

    def __init__(self, rec: Recorder, opts: dict[str, Any]) -> None:
        self._rec, self._opts = rec, opts
        rec.add("Builder")

    def create_network(self, flags: int = 0) -> FakeNetwork:
        self._rec.add("create_network", flags)
        return FakeNetwork(self._opts["net_inputs"])

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig(self._rec, self._opts["timing_ok"])

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile(self._rec)

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> memoryview | None:
        self._rec.add("build_serialized_network")
        if self._opts["fail_build"]:
            return None
        profiles = [c[1][0] for c in self._rec.calls if c[0] == "add_optimization_profile"]
        return memoryview(b"PLAN:" + json.dumps(profiles[-1]).encode())


class FakeParser(Strict):
    _section = "OnnxParser"

    def __init__(self, rec: Recorder, errors: list[str]) -> None:
        self._rec, self._errors = rec, [FakeParserError(i + 3, e) for i, e in enumerate(errors)]

    def parse_from_file(self, path: str) -> bool:
        self._rec.add("parse_from_file", path)
        return not self._errors

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, i: int) -> FakeParserError:
        return self._errors[i]


IoSpec = dict[str, tuple[str, tuple[int, ...]] | tuple[str, tuple[int, ...], str]]
"""{name: ("in" | "out", engine shape with -1 batch[, "DataType.HALF"])}."""

Compute = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
"""What the stand-in engine computes: {input name: array} -> {output name: array}."""


def canned_mean(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The default 'network': every output element is the per-sample mean of the input."""
    (x,) = inputs.values()
    return {"__mean__": x.astype(np.float32).reshape(x.shape[0], -1).mean(axis=1)}


class FakeEngine(Strict):
    _section = "ICudaEngine"

    def __init__(self, rec: Recorder, io: IoSpec, profile: dict[str, list], execute_ok: bool,
                 compute: Compute) -> None:
        self._rec, self._io, self._profile, self._ok, self._compute = rec, io, profile, execute_ok, compute

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, i: int) -> str:
        return list(self._io)[i]

    def get_tensor_mode(self, name: str) -> str:
        return "TensorIOMode.INPUT" if self._io[name][0] == "in" else "TensorIOMode.OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        spec = self._io[name]
        return spec[2] if len(spec) > 2 else "DataType.FLOAT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._io[name][1]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if name not in self._profile:  # not profiled: its static shape, as TensorRT reports it
            return [self._io[name][1]] * 3
        return [tuple(s) for s in self._profile[name]]

    def create_execution_context(self) -> FakeContext:
        self._rec.add("create_execution_context")
        return FakeContext(self._rec, self._io, self._ok, self)


class FakeContext(Strict):
    _section = "IExecutionContext"

    def __init__(self, rec: Recorder, io: IoSpec, ok: bool, engine: FakeEngine) -> None:
        self._rec, self._io, self._ok, self._engine = rec, io, ok, engine
        self._addr: dict[str, int] = {}
        self._n = -1

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self._rec.add("set_input_shape", name, tuple(shape))
        mx = self._engine._profile[name][2]
        if not 1 <= shape[0] <= mx[0] or tuple(shape[1:]) != tuple(mx[1:]):
            return False
        self._n = shape[0]
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self._rec.add("set_tensor_address", name, id(self))
        if name not in self._io:
            return False
        self._addr[name] = int(ptr)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self._n, *self._io[name][1][1:])

    def _view(self, name: str) -> np.ndarray:
        shape = self.get_tensor_shape(name)
        dtype = np.dtype(_nptype(self._engine.get_tensor_dtype(name)))
        raw = (ctypes.c_byte * (int(np.prod(shape)) * dtype.itemsize)).from_address(self._addr[name])
        return np.ctypeslib.as_array(raw).view(dtype).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3(): incompatible function arguments (stream_handle: int)")
        self._rec.add("execute_async_v3", stream_handle, id(self))
        missing = set(self._io) - set(self._addr)
        if not self._ok or missing or self._n < 1:
            return False
        inputs = {n: self._view(n).copy() for n in self._io if self._io[n][0] == "in"}
        results = self._engine._compute(inputs)
        for name in self._io:
            if self._io[name][0] == "out":
                out = self._view(name)
                if "__mean__" in results:
                    out[...] = results["__mean__"].reshape((self._n,) + (1,) * (out.ndim - 1))
                else:
                    out[...] = results[name]
        return True


class FakeRuntime(Strict):
    _section = "Runtime"

    def __init__(self, rec: Recorder, io: IoSpec | None, execute_ok: bool, compute: Compute) -> None:
        self._rec, self._io, self._ok, self._compute = rec, io, execute_ok, compute
        rec.add("Runtime")

    def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
        plan = bytes(plan)
        self._rec.add("deserialize_cuda_engine", plan)
        if self._io is None or not plan.startswith(b"PLAN:"):
            return None  # what TensorRT does with a plan from another version or a corrupt file
        return FakeEngine(self._rec, self._io, json.loads(plan[5:]), self._ok, self._compute)


def make_tensorrt(
    rec: Recorder,
    *,
    parser_errors: list[str] | None = None,
    fail_build: bool = False,
    io: IoSpec | None = None,
    net_inputs: dict[str, tuple[int, ...]] | None = None,
    execute_ok: bool = True,
    timing_ok: bool = True,
    compute: Compute = canned_mean,
) -> types.ModuleType:
    """A module object exposing only TensorRT 11.4 top-level names (the ones livemod touches).

    Args:
        rec: records every call.
        parser_errors: descriptions the parser reports (parse fails when any).
        fail_build: build_serialized_network returns None.
        io: the engine's I/O tensors; None makes every plan fail to deserialize.
        net_inputs: the parsed network's inputs (from ``io`` by default).
        execute_ok: execute_async_v3's result.
        timing_ok: whether a non-empty timing cache is accepted.
        compute: what the engine computes (the canned mean by default).
    """
    if net_inputs is None:
        net_inputs = {n: spec[1] for n, spec in (io or {}).items() if spec[0] == "in"} or {"input": (-1, 8, 8, 3)}
    opts = {"net_inputs": net_inputs, "fail_build": fail_build, "timing_ok": timing_ok}

    class Logger:
        WARNING = "Logger.WARNING"

        def __init__(self, min_severity: Any = None) -> None:
            pass

    members = {
        "Logger": Logger,
        "Builder": lambda logger: FakeBuilder(rec, opts),
        "OnnxParser": lambda network, logger: FakeParser(rec, list(parser_errors or [])),
        "Runtime": lambda logger: FakeRuntime(rec, io, execute_ok, compute),
        "MemoryPoolType": _enum("MemoryPoolType"),
        "TensorIOMode": _enum("TensorIOMode"),
        "DataType": _enum("DataType"),
        "nptype": _nptype,
    }
    top = set(API["top-level"] or [])
    mod = types.ModuleType("tensorrt")
    mod.__version__ = "11.4.0-standin"
    for name, value in members.items():
        if name not in top:
            raise AttributeError(f"{name} is not a TensorRT 11.4 top-level name")
        setattr(mod, name, value)
    return mod


class FakeStatus(int):
    """A non-zero CUDA status as the stand-in returns it (cuda-python returns a cudaError_t enum)."""

    def __new__(cls, value: int, name: str) -> FakeStatus:
        obj = super().__new__(cls, value)
        obj.name = name
        return obj


class FakeCudart:
    """cuda.bindings.runtime stand-in: 'device' memory is host memory; every call is recorded.

    Args:
        rec: the recorder.
        fail: {call name: (code, cudaError name)} calls that return that error status.
    """

    class cudaError_t:  # noqa: N801 - mirrors cuda-python's names
        cudaSuccess = 0

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    cudaStreamNonBlocking = 1  # noqa: N815

    def __init__(self, rec: Recorder, fail: dict[str, tuple[int, str]] | None = None) -> None:
        self._rec, self._fail = rec, dict(fail or {})
        self._keep: dict[int, Any] = {}
        self._streams = 0

    def _status(self, call: str) -> int:
        if call in self._fail:
            return FakeStatus(*self._fail[call])
        return 0

    def _alloc(self, n: int) -> int:
        buf = (ctypes.c_byte * n)()
        self._keep[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def cudaGetErrorName(self, err: int) -> tuple[int, bytes]:  # noqa: N802
        return 0, getattr(err, "name", "cudaErrorUnknown").encode()

    def cudaGetErrorString(self, err: int) -> tuple[int, bytes]:  # noqa: N802
        return 0, b"stand-in error"

    def cudaMallocHost(self, n: int) -> tuple[int, int]:  # noqa: N802
        self._rec.add("cudaMallocHost", n)
        st = self._status("cudaMallocHost")
        return (st, None) if st else (0, self._alloc(n))

    def cudaMalloc(self, n: int) -> tuple[int, int]:  # noqa: N802
        self._rec.add("cudaMalloc", n)
        st = self._status("cudaMalloc")
        return (st, None) if st else (0, self._alloc(n))

    def cudaFree(self, p: int) -> tuple[int]:  # noqa: N802
        self._rec.add("cudaFree", p)
        return (0,) if self._keep.pop(p, None) is not None else (FakeStatus(1, "cudaErrorInvalidValue"),)

    def cudaFreeHost(self, p: int) -> tuple[int]:  # noqa: N802
        self._rec.add("cudaFreeHost", p)
        return (0,) if self._keep.pop(p, None) is not None else (FakeStatus(1, "cudaErrorInvalidValue"),)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: int) -> tuple[int]:  # noqa: N802
        self._rec.add("cudaMemcpyAsync", kind, n, stream)
        st = self._status("cudaMemcpyAsync")
        if not st:
            ctypes.memmove(dst, src, n)
        return (st,)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[int, int]:  # noqa: N802
        self._rec.add("cudaStreamCreateWithFlags", flags)
        self._streams += 1
        return 0, 0x5000 + self._streams

    def cudaStreamSynchronize(self, s: int) -> tuple[int]:  # noqa: N802
        self._rec.add("cudaStreamSynchronize", s)
        return (self._status("cudaStreamSynchronize"),)

    def cudaStreamDestroy(self, s: int) -> tuple[int]:  # noqa: N802
        self._rec.add("cudaStreamDestroy", s)
        return (0,)
