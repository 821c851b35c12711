"""Probe for an NVIDIA GPU and TensorRT before anything creates a TensorRT Runtime.

A lean TensorRT runtime segfaults in ``deserialize_cuda_engine`` where there is no GPU, so the
order is fixed: cuda-python imports -> ``cudaGetDeviceCount`` answers with at least one
device -> ``tensorrt`` imports. Only then may engines/trt.py create a Runtime.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache

from livemod.core.errors import ConfigError, GpuError
from livemod.engines import cuda

ENGINES = ("auto", "tensorrt", "onnxruntime")


@dataclass(frozen=True)
class GpuProbe:
    """What the probe found.

    Attributes:
        available: a CUDA device answered and TensorRT imports.
        reason: one sentence for logs and the backend metric (why TensorRT is or is not usable).
        device_name: device 0's name (e.g. "NVIDIA H100 80GB HBM3"), when a device answered.
        compute_capability: device 0's "major.minor" (e.g. "9.0"), when a device answered.
        tensorrt_version: ``tensorrt.__version__``, when TensorRT imports.
    """

    available: bool
    reason: str
    device_name: str | None = None
    compute_capability: str | None = None
    tensorrt_version: str | None = None


def _probe() -> GpuProbe:
    try:
        cuda.runtime()
    except ConfigError as exc:
        return GpuProbe(False, str(exc))
    try:
        count = cuda.device_count()
    except GpuError as exc:
        return GpuProbe(False, f"no usable CUDA device: {exc}")
    if count < 1:
        return GpuProbe(False, "cudaGetDeviceCount reports no CUDA device")
    try:
        name, cc = cuda.device_properties(0)
    except GpuError as exc:
        return GpuProbe(False, f"CUDA device 0 does not answer: {exc}")
    if importlib.util.find_spec("tensorrt") is None:
        return GpuProbe(False, f"GPU {name} (sm {cc}) present but the tensorrt package is not installed", name, cc)
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - a broken TensorRT install raises ImportError, OSError, RuntimeError...
        return GpuProbe(False, f"GPU {name} (sm {cc}) present but tensorrt does not import: {exc}", name, cc)
    version = str(getattr(tensorrt, "__version__", "unknown"))
    major = version.split(".", 1)[0]
    if major.isdigit() and int(major) < 11:
        return GpuProbe(False, f"TensorRT {version} is older than 11 (livemod uses the 11.x API)", name, cc, version)
    return GpuProbe(True, f"GPU {name} (sm {cc}), TensorRT {version}", name, cc, version)


@lru_cache(maxsize=1)
def probe_gpu() -> GpuProbe:
    """Probe once per process (``probe_gpu.cache_clear()`` to probe again); never creates a Runtime."""
    return _probe()


def choose_backend(requested: str) -> tuple[str, str]:
    """Resolve the ``engine`` setting to a backend.

    Args:
        requested: "auto", "tensorrt" or "onnxruntime".

    Returns:
        (backend, reason): backend is "tensorrt" or "onnxruntime"; reason is one sentence for
        the start-up log and a metric label. "tensorrt" that cannot run here comes back as
        ("onnxruntime", "TensorRT not usable: ...") and the caller decides whether to refuse.

    Raises:
        ConfigError: ``requested`` is not one of the three names.
    """
    if requested not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {requested!r}")
    if requested == "onnxruntime":
        return "onnxruntime", "requested in settings"
    probe = probe_gpu()
    if probe.available:
        return "tensorrt", probe.reason
    return "onnxruntime", f"TensorRT not usable: {probe.reason}"
