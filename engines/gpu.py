"""Probe for an NVIDIA GPU and TensorRT before anything creates a TensorRT Runtime.

A lean TensorRT runtime segfaults in ``deserialize_cuda_engine`` where there is no GPU, so
the order is: CUDA driver answers with at least one device -> ``tensorrt`` imports -> only
then may a Runtime be created.
"""

from __future__ import annotations

import ctypes
import importlib.util
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class GpuProbe:
    """What the probe found.

    Attributes:
        available: a CUDA device answered and TensorRT imports.
        reason: a sentence for logs and the `backend` metric's reason.
        device_name, compute_capability: of device 0, when a device answered.
        tensorrt_version: when TensorRT imports.
    """

    available: bool
    reason: str
    device_name: str | None = None
    compute_capability: str | None = None
    tensorrt_version: str | None = None


def _cuda_devices() -> tuple[int, str | None, str | None, str]:
    """(count, name, compute capability, note) from the CUDA driver API, through ctypes."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, None, None, "no CUDA driver (libcuda.so.1 not found)"
    rc = lib.cuInit(0)
    if rc != 0:
        return 0, None, None, f"cuInit returned CUDA error {rc}"
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value < 1:
        return 0, None, None, "the CUDA driver reports no device"
    dev = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(dev), 0)
    buf = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(buf, 256, dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
    return count.value, buf.value.decode(errors="replace"), f"{major.value}.{minor.value}", "ok"


@lru_cache(maxsize=1)
def probe_gpu() -> GpuProbe:
    """Probe once per process: GPU first, then TensorRT; never creates a TensorRT Runtime."""
    count, name, cc, note = _cuda_devices()
    if count < 1:
        return GpuProbe(False, note)
    if importlib.util.find_spec("tensorrt") is None:
        return GpuProbe(False, f"GPU {name} (sm {cc}) present but the tensorrt package is not installed", name, cc)
    try:
        import tensorrt
    except Exception as exc:  # a broken TensorRT install raises all sorts of errors
        return GpuProbe(False, f"tensorrt does not import: {exc}", name, cc)
    version = getattr(tensorrt, "__version__", "?")
    return GpuProbe(True, f"GPU {name} (sm {cc}), TensorRT {version}", name, cc, version)


def choose_backend(requested: str) -> tuple[str, str]:
    """(backend, reason) for ``engine = auto | tensorrt | onnxruntime``."""
    if requested == "onnxruntime":
        return "onnxruntime", "requested in settings"
    probe = probe_gpu()
    if probe.available:
        return "tensorrt", probe.reason
    return "onnxruntime", f"TensorRT not usable: {probe.reason}"
