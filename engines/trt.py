"""TensorRT 11 backend on the same CAM-augmented ONNX as ONNX Runtime, run with cuda-python.

Build: Builder -> create_network(0) (TensorRT 11 networks are explicit-batch and strongly
typed; precision comes from the ONNX, see engines/fp16.py) -> OnnxParser.parse_from_file ->
workspace pool limit -> timing cache -> one optimization profile (min/opt/max batch) ->
build_serialized_network. Engines are cached by ONNX sha256 + TensorRT version + GPU name
and compute capability + profile, because a plan runs only on the TensorRT version and GPU
model it was built for.

Run: Runtime.deserialize_cuda_engine -> one execution context per CUDA stream -> pinned host
buffers sized from the profile's max shape -> set_input_shape -> set_tensor_address for every
I/O tensor -> async H2D -> execute_async_v3 -> async D2H -> synchronize. Batches larger than
the profile are split and the chunks alternate between streams, so one chunk's copies
overlap the other's compute.

Nothing here imports tensorrt at module import time, and nothing creates a Runtime before
engines/gpu.py has seen a GPU (a lean runtime segfaults without one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from livemod.decoders.errors import ConfigError, GpuError, InferenceError, ModelError
from livemod.engines import cuda
from livemod.engines.card import ModelCard, sha256_file
from livemod.engines.gpu import GpuProbe, probe_gpu
from livemod.engines.ort import softmax
from livemod.engines.types import Outputs

log = logging.getLogger(__name__)


def _trt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise ConfigError("TensorRT is not installed (see deploy/README.md)") from exc
    return tensorrt


def trt_version(trt: Any) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def input_dims(card: ModelCard) -> tuple[int, int, int]:
    """Per-sample input dims for the card's layout: (H, W, 3) or (3, H, W)."""
    w, h = card.size
    return (h, w, 3) if card.layout == "NHWC" else (3, h, w)


def engine_cache_key(onnx_sha256: str, trt_ver: str, gpu_name: str, compute_capability: str,
                     profile: tuple[int, int, int], dims: tuple[int, ...]) -> str:
    """The identity of a plan: change any part and the engine must be rebuilt."""
    blob = json.dumps([onnx_sha256, trt_ver, gpu_name, compute_capability, list(profile), list(dims)])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    tmp.replace(path)


def build_plan(
    onnx_path: Path,
    *,
    input_name: str,
    dims: tuple[int, ...],
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 16,
    workspace_bytes: int = 1 << 30,
    timing_cache_path: Path | None = None,
) -> bytes:
    """Build a serialized engine from an ONNX file with a dynamic-batch optimization profile.

    Raises:
        ModelError: the parser's errors (each described), or a failed build.
    """
    trt = _trt()
    if not min_batch <= opt_batch <= max_batch:
        raise ConfigError(f"profile must satisfy min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"TensorRT cannot parse {onnx_path}: " + "; ".join(errors or ["unknown parser error"]),
                         reason="trt_parse")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    cache_bytes = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, False)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (min_batch, *dims), (opt_batch, *dims), (max_batch, *dims))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine from {onnx_path}", reason="trt_build")
    if timing_cache_path is not None:
        _atomic_write(timing_cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


class _Slot:
    """An execution context, its CUDA stream and its I/O buffers."""

    def __init__(self, engine: Any, io: dict[str, tuple[str, np.dtype, tuple[int, ...]]]) -> None:
        self.context = engine.create_execution_context()
        if self.context is None:
            raise GpuError("TensorRT could not create an execution context", reason="trt_context")
        self.stream = cuda.stream_create()
        self.buffers = {name: cuda.Buffer.allocate(shape, dtype) for name, (_mode, dtype, shape) in io.items()}

    def close(self) -> None:
        for buf in self.buffers.values():
            buf.free()
        cuda.stream_destroy(self.stream)


class TrtClassifier:
    """Runs one model card with TensorRT; outputs match the ONNX Runtime backend's.

    Args:
        card: the model card.
        onnx_path: the CAM-augmented ONNX (FP32 or an FP16 copy with float32 I/O).
        cache_dir: engine and timing-cache folder.
        max_batch, opt_batch: the optimization profile (min is 1).
        workspace_bytes: builder workspace pool limit.
        streams: CUDA streams (and execution contexts); 2 overlaps copies with compute.
        probe: the GPU probe (probed when None).
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
        trt = _trt()
        self.card, self.max_batch = card, max_batch
        dims = input_dims(card)
        profile = (1, min(opt_batch, max_batch), max_batch)
        key = engine_cache_key(sha256_file(onnx_path), trt_version(trt), probe.device_name or "?",
                               probe.compute_capability or "?", profile, dims)
        cache_dir = Path(cache_dir)
        self.engine_path = cache_dir / f"{card.name}-{key}.plan"
        if self.engine_path.is_file():
            plan = self.engine_path.read_bytes()
            log.info("%s: engine from cache %s", card.name, self.engine_path)
        else:
            log.warning("%s: building a TensorRT engine (profile %s); this takes a while once", card.name, profile)
            plan = build_plan(onnx_path, input_name=card.input, dims=dims, min_batch=profile[0],
                                opt_batch=profile[1], max_batch=profile[2], workspace_bytes=workspace_bytes,
                                timing_cache_path=cache_dir / "timing.cache")
            _atomic_write(self.engine_path, plan)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ModelError(f"TensorRT could not deserialize {self.engine_path}", reason="trt_deserialize")
        io: dict[str, tuple[str, np.dtype, tuple[int, ...]]] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            if is_input:
                shape = (max_batch, *dims)
            else:
                shape = (max_batch, *[d for d in shape[1:]])
                if any(d < 0 for d in shape):
                    raise ModelError(f"{card.name}: output {name} has a dynamic non-batch dimension {shape}")
            io[name] = ("input" if is_input else "output", dtype, shape)
        missing = {card.input, card.logits, card.cams} - set(io)
        if missing:
            raise ModelError(f"{self.engine_path} lacks tensors {sorted(missing)} (has {sorted(io)})")
        self.io = io
        self._slots = [_Slot(self.engine, io) for _ in range(max(1, streams))]
        self._lock = threading.Lock()

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots = []

    def _enqueue(self, slot: _Slot, chunk: np.ndarray) -> int:
        n = chunk.shape[0]
        ctx = slot.context
        inp = slot.buffers[self.card.input]
        np.copyto(inp.host[:n], chunk.astype(inp.host.dtype, copy=False))
        if not ctx.set_input_shape(self.card.input, tuple(chunk.shape)):
            raise InferenceError(f"{self.card.name}: TensorRT refused input shape {chunk.shape}", reason="trt_shape")
        cuda.copy_htod_async(inp.device, inp.host, n * inp.host[0].nbytes, slot.stream)
        for name, buf in slot.buffers.items():
            ctx.set_tensor_address(name, buf.device)
        if not ctx.execute_async_v3(slot.stream):
            raise GpuError(f"{self.card.name}: execute_async_v3 returned False", reason="trt_execute")
        for name in (self.card.logits, self.card.cams):
            buf = slot.buffers[name]
            cuda.copy_dtoh_async(buf.host, buf.device, n * buf.host[0].nbytes, slot.stream)
        return n

    def infer(self, batch: np.ndarray) -> Outputs:
        """Run a preprocessed float32 batch (any N >= 1); same contract as OrtClassifier.infer."""
        if batch.ndim != 4 or batch.shape[1:] != input_dims(self.card):
            raise InferenceError(f"{self.card.name}: expected (N, {input_dims(self.card)}), got {batch.shape}")
        logits, cams = [], []
        with self._lock:
            chunks = [batch[i : i + self.max_batch] for i in range(0, batch.shape[0], self.max_batch)]
            for start in range(0, len(chunks), len(self._slots)):
                group = list(zip(self._slots, chunks[start : start + len(self._slots)]))
                sizes = [self._enqueue(slot, chunk) for slot, chunk in group]
                for (slot, _chunk), n in zip(group, sizes):
                    cuda.stream_sync(slot.stream)
                    logits.append(slot.buffers[self.card.logits].host[:n].astype(np.float32, copy=True))
                    cams.append(slot.buffers[self.card.cams].host[:n].astype(np.float32, copy=True))
        lg = np.concatenate(logits)
        return Outputs(logits=lg, probs=softmax(lg), cams=np.concatenate(cams))
