"""TensorRT 11 backend on the same CAM-augmented ONNX as ONNX Runtime, run with cuda-python.

Build: Builder -> create_network(0) (TensorRT 11 networks are explicit-batch and strongly
typed; precision comes from the ONNX, see engines/fp16.py) -> OnnxParser.parse_from_file ->
workspace pool limit -> timing cache -> one optimization profile (min/opt/max batch) ->
build_serialized_network. Plans are cached by ONNX sha256 + TensorRT version + GPU name +
compute capability + profile + input dims, because a plan runs only on the TensorRT version
and GPU model that built it.

Run: Runtime.deserialize_cuda_engine -> per CUDA stream one execution context with its own
pinned host and device buffers sized from the profile's max shape, every I/O tensor's
address set -> set_input_shape -> async H2D -> execute_async_v3 -> async D2H -> synchronize.
The (context, stream) slots sit in a pool: concurrent callers each take one, and a batch
larger than the profile is split into chunks launched on all free slots before the first
synchronize, so one chunk's copies overlap another's compute.

Nothing here imports tensorrt at module import time, and TrtClassifier creates no Runtime
before engines/gpu.py has seen a GPU (a lean runtime segfaults without one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from livemod.core.errors import ConfigError, GpuError, InferenceError, ModelError
from livemod.engines import cuda
from livemod.engines.card import ModelCard, sha256_file
from livemod.engines.gpu import GpuProbe, probe_gpu
from livemod.engines.ort import softmax
from livemod.engines.types import Outputs

log = logging.getLogger(__name__)

TIMING_CACHE_NAME = "timing.cache"


def _trt() -> Any:
    """The ``tensorrt`` module, imported lazily so livemod imports where TensorRT is absent."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ConfigError("TensorRT is not installed (see deploy/README.md)") from exc
    return tensorrt


def input_dims(card: ModelCard) -> tuple[int, int, int]:
    """Per-sample input dims for the card's layout: (H, W, 3) for NHWC, (3, H, W) for NCHW."""
    w, h = card.size
    return (h, w, 3) if card.layout == "NHWC" else (3, h, w)


def check_profile(min_batch: int, opt_batch: int, max_batch: int) -> tuple[int, int, int]:
    """Validate an optimization profile's batch sizes; returns (min, opt, max).

    Raises:
        ConfigError: unless 1 <= min <= opt <= max.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(f"profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
    return min_batch, opt_batch, max_batch


def engine_cache_key(
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    profile: tuple[int, int, int],
    dims: tuple[int, ...],
) -> str:
    """The identity of a plan (24 hex digits): change any part and the engine must be rebuilt."""
    blob = json.dumps([onnx_sha256, tensorrt_version, gpu_name, compute_capability, list(profile), list(dims)])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def engine_cache_path(
    cache_dir: Path,
    card: ModelCard,
    onnx_path: Path,
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    profile: tuple[int, int, int],
) -> Path:
    """Where the plan for this ONNX file, TensorRT version, GPU and profile lives: ``<card>-<key>.plan``."""
    key = engine_cache_key(sha256_file(onnx_path), tensorrt_version, gpu_name, compute_capability, profile,
                           input_dims(card))
    return Path(cache_dir) / f"{card.name}-{key}.plan"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so readers never see half a plan."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _network_input(network: Any, input_name: str | None, dims: tuple[int, ...] | None) -> tuple[str, tuple[int, ...]]:
    """The input to profile: the named one (or the only one) and its per-sample dims."""
    tensors = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if input_name is None:
        if len(tensors) != 1:
            raise ModelError(f"the network has inputs {sorted(tensors)}: name the one to profile", reason="trt_input")
        input_name = next(iter(tensors))
    if input_name not in tensors:
        raise ModelError(f"the network has no input {input_name!r} (has {sorted(tensors)})", reason="trt_input")
    shape = tuple(int(d) for d in tensors[input_name].shape)
    if dims is None:
        dims = shape[1:]
        if any(d < 0 for d in dims):
            raise ConfigError(f"input {input_name!r} has dynamic non-batch dims {shape}: pass dims")
    if len(shape) != len(dims) + 1 or any(s >= 0 and s != d for s, d in zip(shape[1:], dims)):
        raise ModelError(f"input {input_name!r} has shape {shape}, which does not fit (N, {dims})", reason="trt_input")
    return input_name, tuple(dims)


def _set_timing_cache(config: Any, path: Path | None) -> None:
    """Load the timing cache from ``path`` (if any) into the config; a stale one is replaced."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(data), False):
        return
    log.warning("timing cache %s does not fit this GPU/TensorRT; starting a new one", path)
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise ModelError("TensorRT refused an empty timing cache", reason="trt_timing_cache")


def build_engine(
    onnx_path: Path,
    *,
    input_name: str | None = None,
    dims: tuple[int, ...] | None = None,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 16,
    workspace_bytes: int = 1 << 30,
    timing_cache_path: Path | None = None,
) -> bytes:
    """Build a serialized engine (a plan) from an ONNX file with one dynamic-batch profile.

    Args:
        onnx_path: the ONNX file (FP32, or FP16 from engines/fp16.py: precision is in the graph).
        input_name: the input to profile; the network's only input when None.
        dims: per-sample input dims, e.g. (224, 224, 3); read from the network when None.
        min_batch, opt_batch, max_batch: the profile's batch sizes (min <= opt <= max).
        workspace_bytes: the builder's WORKSPACE memory pool limit.
        timing_cache_path: a timing cache loaded before and saved (atomically) after the build.

    Returns:
        The serialized engine.

    Raises:
        ConfigError: TensorRT is not installed, or the profile is not ordered.
        ModelError: the parser's errors (every one, with its description), or a failed build.
    """
    check_profile(min_batch, opt_batch, max_batch)
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 11: always explicit batch; no flags needed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["no error recorded"]
        raise ModelError(f"TensorRT cannot parse {onnx_path} ({len(errors)} errors): " + "; ".join(errors),
                         reason="trt_parse")
    name, dims = _network_input(network, input_name, dims)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    _set_timing_cache(config, timing_cache_path)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (min_batch, *dims), (opt_batch, *dims), (max_batch, *dims))
    if config.add_optimization_profile(profile) < 0:
        raise ModelError(f"TensorRT refused the profile {min_batch}/{opt_batch}/{max_batch} for {name}",
                         reason="trt_profile")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)",
                         reason="trt_build")
    if timing_cache_path is not None:
        _atomic_write(timing_cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


class _Slot:
    """One execution context, its CUDA stream and its I/O buffers (addresses set once)."""

    def __init__(self, context: Any, buffers: dict[str, cuda.Buffer]) -> None:
        self.context = context
        self.buffers = buffers
        self.stream = cuda.stream_create()
        for name, buf in buffers.items():
            if not context.set_tensor_address(name, buf.device):
                raise GpuError(f"TensorRT refused the address of tensor {name!r}", reason="trt_address")

    def close(self) -> None:
        for buf in self.buffers.values():
            buf.free()
        cuda.stream_destroy(self.stream)
        self.context = None


class TrtClassifier:
    """Runs one model card with TensorRT; outputs match the ONNX Runtime backend's.

    Args:
        card: the model card (input/output names, layout, size).
        onnx_path: the CAM-augmented ONNX (FP32, or an FP16 copy with float32 I/O).
        cache_dir: folder for plans and the timing cache.
        max_batch: the profile's max batch; ``infer`` splits larger batches.
        opt_batch: the batch size TensorRT tunes for (clamped to max_batch).
        workspace_bytes: builder WORKSPACE pool limit.
        streams: CUDA streams, each with its own execution context and buffers; 2 lets
            copies of one chunk overlap compute of another, and two callers run at once.
        probe: the GPU probe (``probe_gpu()`` when None).

    Raises:
        GpuError: no GPU with TensorRT here (no Runtime is created), or a CUDA call failed.
        ModelError: the ONNX does not parse or build, or lacks the card's tensors.
    """

    backend: Literal["tensorrt"] = "tensorrt"

    def __init__(
        self,
        card: ModelCard,
        onnx_path: Path,
        *,
        cache_dir: Path,
        max_batch: int = 16,
        opt_batch: int = 8,
        workspace_bytes: int = 1 << 30,
        streams: int = 2,
        probe: GpuProbe | None = None,
    ) -> None:
        probe = probe or probe_gpu()
        if not probe.available:
            raise GpuError(f"no TensorRT here: {probe.reason}", reason="no_gpu")
        if streams < 1:
            raise ConfigError(f"streams must be >= 1, got {streams}")
        profile = check_profile(1, min(opt_batch, max_batch), max_batch)
        trt = _trt()
        self.card = card
        self.dims = input_dims(card)
        self.tensorrt_version = str(getattr(trt, "__version__", "unknown"))
        self.engine_path = engine_cache_path(
            cache_dir, card, onnx_path, tensorrt_version=self.tensorrt_version,
            gpu_name=probe.device_name or "unknown", compute_capability=probe.compute_capability or "unknown",
            profile=profile,
        )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._load_engine(onnx_path, profile, workspace_bytes)
        self.io = self._io_tensors(trt)
        self.max_batch = self.io[card.input][2][0]
        contexts = [self.engine.create_execution_context() for _ in range(streams)]
        if any(c is None for c in contexts):
            raise GpuError("TensorRT could not create an execution context", reason="trt_context")
        shapes = self._max_shapes(contexts[0])
        self._slots: list[_Slot] = []
        buffers: dict[str, cuda.Buffer] = {}
        try:
            for context in contexts:
                buffers = {}
                for name, (_mode, dtype, _shape) in self.io.items():
                    buffers[name] = cuda.Buffer.allocate(shapes[name], dtype)
                self._slots.append(_Slot(context, buffers))
        except GpuError:
            self._release_partial(buffers)
            raise
        self._free: queue.Queue[_Slot] = queue.Queue()
        for slot in self._slots:
            self._free.put(slot)

    def _release_partial(self, buffers: dict[str, cuda.Buffer]) -> None:
        """Free what a failed __init__ had allocated (best effort: the first error is the one raised)."""
        loose = [b for b in buffers.values() if all(b is not x for s in self._slots for x in s.buffers.values())]
        for buf in loose:
            try:
                buf.free()
            except GpuError as exc:
                log.error("%s: %s while cleaning up", self.card.name, exc)
        for slot in self._slots:
            try:
                slot.close()
            except GpuError as exc:
                log.error("%s: %s while cleaning up", self.card.name, exc)
        self._slots = []

    def _load_engine(self, onnx_path: Path, profile: tuple[int, int, int], workspace_bytes: int) -> Any:
        """Deserialize the cached plan, or build (and cache) one; a plan that does not load is rebuilt once."""
        if self.engine_path.is_file():
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is not None:
                log.info("%s: TensorRT engine from cache %s", self.card.name, self.engine_path)
                return engine
            log.warning("%s: cached plan %s does not load; rebuilding", self.card.name, self.engine_path)
        log.warning("%s: building a TensorRT engine (profile %s); this takes a while, once per GPU model",
                    self.card.name, profile)
        plan = build_engine(onnx_path, input_name=self.card.input, dims=self.dims, min_batch=profile[0],
                            opt_batch=profile[1], max_batch=profile[2], workspace_bytes=workspace_bytes,
                            timing_cache_path=self.engine_path.parent / TIMING_CACHE_NAME)
        _atomic_write(self.engine_path, plan)
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ModelError(f"TensorRT could not deserialize the plan it just built ({self.engine_path})",
                             reason="trt_deserialize")
        return engine

    def _io_tensors(self, trt: Any) -> dict[str, tuple[str, np.dtype, tuple[int, ...]]]:
        """{name: (mode, numpy dtype, engine shape)} for every I/O tensor; the input's shape is the profile's max."""
        io: dict[str, tuple[str, np.dtype, tuple[int, ...]]] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            mode = "input" if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
            try:
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            except TypeError as exc:
                raise ModelError(f"{self.card.name}: tensor {name} has a type numpy cannot hold") from exc
            if mode == "input":
                _mn, _opt, mx = self.engine.get_tensor_profile_shape(name, 0)
                shape = tuple(int(d) for d in mx)
            else:
                shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            io[name] = (mode, dtype, shape)
        inputs = [n for n, v in io.items() if v[0] == "input"]
        if inputs != [self.card.input]:
            raise ModelError(f"{self.engine_path}: inputs {inputs}, card {self.card.name} expects [{self.card.input!r}]")
        missing = {self.card.logits, self.card.cams} - set(io)
        if missing:
            raise ModelError(f"{self.engine_path} lacks tensors {sorted(missing)} (has {sorted(io)})")
        if io[self.card.input][2][1:] != self.dims:
            raise ModelError(f"{self.engine_path}: input shape {io[self.card.input][2]} is not (N, {self.dims})")
        return io

    def _max_shapes(self, context: Any) -> dict[str, tuple[int, ...]]:
        """Every I/O tensor's shape at the profile's max batch (outputs resolved by the context)."""
        max_in = self.io[self.card.input][2]
        if not context.set_input_shape(self.card.input, max_in):
            raise ModelError(f"{self.card.name}: TensorRT refused the profile's max shape {max_in}")
        shapes = {name: tuple(int(d) for d in context.get_tensor_shape(name)) for name in self.io}
        bad = {n: s for n, s in shapes.items() if any(d < 0 for d in s) or s[0] != max_in[0]}
        if bad:
            raise ModelError(f"{self.card.name}: tensors without a batch-major static shape at max batch: {bad}")
        return shapes

    def close(self) -> None:
        """Free buffers and streams (waits for calls in flight); the classifier is unusable after."""
        slots, self._slots = self._slots, []
        for _ in slots:
            self._free.get().close()
        self.engine = None
        self._runtime = None

    def __enter__(self) -> TrtClassifier:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _enqueue(self, slot: _Slot, chunk: np.ndarray) -> None:
        """Copy in, launch and copy out one chunk on the slot's stream (nothing waits here)."""
        n = chunk.shape[0]
        ctx, inp = slot.context, slot.buffers[self.card.input]
        np.copyto(inp.host[:n], chunk, casting="same_kind")
        if not ctx.set_input_shape(self.card.input, (n, *self.dims)):
            raise InferenceError(f"{self.card.name}: TensorRT refused input shape {(n, *self.dims)}",
                                 reason="trt_shape")
        cuda.copy_htod_async(inp.device, inp.host, n * inp.host[0].nbytes, slot.stream)
        if not ctx.execute_async_v3(int(slot.stream)):
            raise GpuError(f"{self.card.name}: execute_async_v3 returned False (see the TensorRT log)",
                           reason="trt_execute")
        for name in (self.card.logits, self.card.cams):
            out = slot.buffers[name]
            cuda.copy_dtoh_async(out.host, out.device, n * out.host[0].nbytes, slot.stream)

    def _drain(self, slot: _Slot) -> None:
        """After a failure: wait for the slot's queued work so the next caller finds idle buffers."""
        try:
            cuda.stream_sync(slot.stream)
        except GpuError as exc:
            log.error("%s: %s while recovering from an earlier failure", self.card.name, exc)

    def _take_slots(self, wanted: int) -> list[_Slot]:
        """One slot (waiting for it), then up to ``wanted - 1`` more that are free right now."""
        slots = [self._free.get()]
        while len(slots) < wanted:
            try:
                slots.append(self._free.get_nowait())
            except queue.Empty:
                break
        return slots

    def infer(self, batch: np.ndarray) -> Outputs:
        """Run a preprocessed batch; same contract as ``OrtClassifier.infer``.

        Args:
            batch: float32 (N, H, W, 3) or (N, 3, H, W) as the card says, any N >= 1.

        Returns:
            Outputs: logits float32 (N, C), probs float32 (N, C) (softmax on the host, as the
            ONNX Runtime backend computes it), cams float32 (N, C, h, w).

        Raises:
            InferenceError: a batch of the wrong shape or dtype, or a refused shape.
            GpuError: a CUDA call or execute_async_v3 failed (the message names the call).
        """
        if batch.ndim != 4 or batch.shape[0] < 1 or batch.shape[1:] != self.dims or batch.dtype != np.float32:
            raise InferenceError(f"{self.card.name}: expected float32 (N>=1, {self.dims}), "
                                 f"got {batch.dtype} {batch.shape}", reason="bad_batch")
        if not self._slots:
            raise InferenceError(f"{self.card.name}: the TensorRT classifier is closed", reason="closed")
        chunks = [batch[i : i + self.max_batch] for i in range(0, batch.shape[0], self.max_batch)]
        logits: list[np.ndarray] = []
        cams: list[np.ndarray] = []
        done = 0
        while done < len(chunks):
            slots = self._take_slots(len(chunks) - done)
            try:
                group = list(zip(slots, chunks[done : done + len(slots)]))
                for slot, chunk in group:
                    self._enqueue(slot, chunk)
                for slot, chunk in group:
                    cuda.stream_sync(slot.stream)
                    n = chunk.shape[0]
                    logits.append(slot.buffers[self.card.logits].host[:n].astype(np.float32, copy=True))
                    cams.append(slot.buffers[self.card.cams].host[:n].astype(np.float32, copy=True))
            except BaseException:
                for slot in slots:
                    self._drain(slot)
                raise
            finally:
                for slot in slots:
                    self._free.put(slot)
            done += len(group)
        lg = np.concatenate(logits)
        return Outputs(logits=lg, probs=softmax(lg), cams=np.concatenate(cams))
