"""A recording stand-in for the `tensorrt` module, for CONTRACT TESTS ONLY.

It exposes only the names that TensorRT 11.4 has (read from shared/reference/
tensorrt-11.4-python-api.txt): touching any other attribute raises AttributeError, as the
real module would. It runs no network and builds nothing; it records the calls so tests can
check our build and run sequence. Results are canned, never presented as TensorRT's.
"""

from __future__ import annotations

import ast
import ctypes
import re
import types
from pathlib import Path
from typing import Any

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


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def add(self, name: str, *args: Any, **kw: Any) -> None:
        self.calls.append((name, args, kw))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class Strict:
    """Allows only the attributes the reference lists for ``section`` (plus private helpers)."""

    _section = ""

    def __getattribute__(self, item: str) -> Any:
        if not item.startswith("_"):
            allowed = API.get(object.__getattribute__(self, "_section")) or []
            if item not in allowed:
                raise AttributeError(f"TensorRT 11.4 {object.__getattribute__(self, '_section')} has no attribute {item!r}")
        return object.__getattribute__(self, item)


def _enum(section: str) -> types.SimpleNamespace:
    names = API.get(section) or []
    return types.SimpleNamespace(**{n: f"{section}.{n}" for n in names})


class FakeConfig(Strict):
    _section = "IBuilderConfig"

    def __init__(self, rec: Recorder) -> None:
        self._rec = rec
        self._cache = b""

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self._rec.add("set_memory_pool_limit", pool, size)

    def create_timing_cache(self, data: bytes) -> Any:
        self._rec.add("create_timing_cache", bytes(data))
        self._cache = bytes(data) + b"+timing"
        return FakeTimingCache(self._cache)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        self._rec.add("set_timing_cache", ignore_mismatch)
        return True

    def get_timing_cache(self) -> Any:
        return FakeTimingCache(self._cache)

    def add_optimization_profile(self, profile: Any) -> int:
        self._rec.add("add_optimization_profile", profile)
        return 0


class FakeTimingCache(Strict):
    _section = "ITimingCache"

    def __init__(self, data: bytes) -> None:
        self._data = data

    def serialize(self) -> bytes:
        return self._data


class FakeProfile(Strict):
    _section = "IOptimizationProfile"

    def __init__(self, rec: Recorder) -> None:
        self._rec = rec

    def set_shape(self, name: str, mn: tuple, opt: tuple, mx: tuple) -> None:
        self._rec.add("set_shape", name, tuple(mn), tuple(opt), tuple(mx))


class FakeNetwork(Strict):
    _section = "INetworkDefinition"


class FakeBuilder(Strict):
    _section = "Builder"

    def __init__(self, logger: Any, *, rec: Recorder, fail_build: bool = False) -> None:
        self._rec, self._fail = rec, fail_build
        rec.add("Builder")

    def create_network(self, flags: int = 0) -> FakeNetwork:
        self._rec.add("create_network", flags)
        return FakeNetwork()

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig(self._rec)

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile(self._rec)

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        self._rec.add("build_serialized_network")
        return None if self._fail else memoryview(b"PLAN")


class FakeParser(Strict):
    _section = "OnnxParser"

    def __init__(self, network: Any, logger: Any, *, rec: Recorder, errors: list[str]) -> None:
        self._rec, self._errors = rec, errors

    def parse_from_file(self, path: str) -> bool:
        self._rec.add("parse_from_file", path)
        return not self._errors

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, i: int) -> str:
        return self._errors[i]


class FakeEngine(Strict):
    """An engine whose 'outputs' are canned functions of the input, so data paths can be checked."""

    _section = "ICudaEngine"

    def __init__(self, rec: Recorder, io: dict[str, tuple[str, tuple[int, ...]]], execute_ok: bool) -> None:
        self._rec, self._io, self._ok = rec, io, execute_ok

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, i: int) -> str:
        return list(self._io)[i]

    def get_tensor_mode(self, name: str) -> str:
        return "TensorIOMode.INPUT" if self._io[name][0] == "in" else "TensorIOMode.OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "DataType.FLOAT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._io[name][1]

    def create_execution_context(self) -> "FakeContext":
        return FakeContext(self._rec, self._io, self._ok)


class FakeContext(Strict):
    _section = "IExecutionContext"

    def __init__(self, rec: Recorder, io: dict[str, tuple[str, tuple[int, ...]]], ok: bool) -> None:
        self._rec, self._io, self._ok = rec, io, ok
        self._addr: dict[str, int] = {}
        self._n = 0

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self._rec.add("set_input_shape", name, tuple(shape))
        self._n = shape[0]
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self._rec.add("set_tensor_address", name)
        self._addr[name] = ptr
        return True

    def execute_async_v3(self, stream: Any) -> bool:
        self._rec.add("execute_async_v3")
        if not self._ok:
            return False
        # canned computation on the "device" buffers (host memory in FakeCudart):
        # logits = per-sample mean of the input, cams = that value broadcast
        names = list(self._io)
        inp = next(n for n in names if self._io[n][0] == "in")
        in_shape = (self._n, *self._io[inp][1][1:])
        x = np.ctypeslib.as_array((ctypes.c_float * int(np.prod(in_shape))).from_address(self._addr[inp])).reshape(in_shape)
        for name in names:
            if self._io[name][0] == "out":
                shape = (self._n, *self._io[name][1][1:])
                out = np.ctypeslib.as_array((ctypes.c_float * int(np.prod(shape))).from_address(self._addr[name])).reshape(shape)
                out[...] = x.reshape(self._n, -1).mean(axis=1).reshape((self._n,) + (1,) * (len(shape) - 1))
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self._n, *self._io[name][1][1:])


class FakeRuntime(Strict):
    _section = "Runtime"

    def __init__(self, logger: Any, *, rec: Recorder, engine: FakeEngine | None) -> None:
        self._rec, self._engine = rec, engine

    def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
        self._rec.add("deserialize_cuda_engine", bytes(plan))
        return self._engine


def make_tensorrt(
    rec: Recorder,
    *,
    parser_errors: list[str] | None = None,
    fail_build: bool = False,
    io: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    execute_ok: bool = True,
) -> types.ModuleType:
    """A module object exposing only TensorRT 11.4's top-level names that livemod touches."""
    top = set(API["top-level"] or [])
    mod = types.ModuleType("tensorrt")
    mod.__version__ = "11.4.0-standin"

    class Logger:
        WARNING = "Logger.WARNING"

        def __init__(self, level: Any = None) -> None:
            pass

    engine = FakeEngine(rec, io or {}, execute_ok) if io is not None else None
    members = {
        "Logger": Logger,
        "Builder": lambda logger: FakeBuilder(logger, rec=rec, fail_build=fail_build),
        "OnnxParser": lambda net, logger: FakeParser(net, logger, rec=rec, errors=list(parser_errors or [])),
        "Runtime": lambda logger: FakeRuntime(logger, rec=rec, engine=engine),
        "MemoryPoolType": _enum("MemoryPoolType"),
        "TensorIOMode": _enum("TensorIOMode"),
        "DataType": _enum("DataType"),
        "nptype": lambda dt: np.float32,
    }
    for name, value in members.items():
        assert name in top, f"{name} is not a TensorRT 11.4 top-level name"
        setattr(mod, name, value)
    return mod


class FakeCudart:
    """cuda.bindings.runtime stand-in: 'device' memory is host memory; every call is recorded."""

    class cudaError_t:  # noqa: N801 - mirrors cuda-python's names
        cudaSuccess = 0

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self, rec: Recorder) -> None:
        self._rec = rec
        self._keep: list[Any] = []

    def _alloc(self, n: int) -> int:
        buf = (ctypes.c_byte * n)()
        self._keep.append(buf)
        return ctypes.addressof(buf)

    def cudaMallocHost(self, n: int) -> tuple[int, int]:  # noqa: N802
        self._rec.add("cudaMallocHost", n)
        return 0, self._alloc(n)

    def cudaMalloc(self, n: int) -> tuple[int, int]:  # noqa: N802
        self._rec.add("cudaMalloc", n)
        return 0, self._alloc(n)

    def cudaFree(self, p: int) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaFreeHost(self, p: int) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: Any) -> tuple[int]:  # noqa: N802
        self._rec.add("cudaMemcpyAsync", kind, n)
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamCreate(self) -> tuple[int, str]:  # noqa: N802
        self._rec.add("cudaStreamCreate")
        return 0, f"stream{len(self._keep)}"

    def cudaStreamSynchronize(self, s: Any) -> tuple[int]:  # noqa: N802
        self._rec.add("cudaStreamSynchronize", s)
        return (0,)

    def cudaStreamDestroy(self, s: Any) -> tuple[int]:  # noqa: N802
        return (0,)
