"""Thin cuda-python (``cuda.bindings.runtime``) helpers: every CUDA status becomes a named GpuError."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livemod.core.errors import ConfigError, GpuError


def runtime() -> Any:
    """The ``cuda.bindings.runtime`` module of cuda-python, imported lazily.

    Raises:
        ConfigError: cuda-python is not installed (the ``gpu`` extra).
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise ConfigError("cuda-python is not installed: pip install 'livemod[gpu]'") from exc
    return cudart


def error_name(err: Any) -> str:
    """The CUDA error's enum name (``cudaErrorNoDevice``...) from ``cudaGetErrorName``."""
    cudart = runtime()
    status, name = cudart.cudaGetErrorName(err)
    if status != cudart.cudaError_t.cudaSuccess or not name:
        return str(getattr(err, "name", err))
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def _error_text(err: Any) -> str:
    cudart = runtime()
    status, text = cudart.cudaGetErrorString(err)
    if status != cudart.cudaError_t.cudaSuccess or not text:
        return ""
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result ``(status, *values)``; raise unless the status is cudaSuccess.

    Args:
        result: what a ``cuda.bindings.runtime`` call returned: a tuple whose first item is a
            ``cudaError_t``.
        call: the call's name, for the message (e.g. ``"cudaMemcpyAsync(HtoD)"``).

    Returns:
        None, the single value, or a tuple of values.

    Raises:
        GpuError: ``"<call> failed: <cudaErrorName> (<description>)"``, reason ``cuda_<cudaErrorName>``.
    """
    status, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if status != runtime().cudaError_t.cudaSuccess:
        name, text = error_name(status), _error_text(status)
        raise GpuError(f"{call} failed: {name}" + (f" ({text})" if text else ""), reason=f"cuda_{name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_count() -> int:
    """``cudaGetDeviceCount``; raises GpuError (cudaErrorInsufficientDriver, cudaErrorNoDevice...)."""
    return int(check(runtime().cudaGetDeviceCount(), "cudaGetDeviceCount"))


def device_properties(device: int = 0) -> tuple[str, str]:
    """(name, compute capability "major.minor") of one device, from ``cudaGetDeviceProperties``."""
    prop = check(runtime().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)
    return name, f"{prop.major}.{prop.minor}"


@dataclass
class Buffer:
    """A pinned (page-locked) host buffer and a device buffer of the same size, for one I/O tensor.

    Attributes:
        host: numpy view of the pinned host memory, with the shape and dtype asked for
            (the optimization profile's max shape).
        device: device pointer.
        nbytes: size of each, in bytes.
    """

    host: np.ndarray
    device: int
    nbytes: int
    _host_ptr: int = field(repr=False)

    @classmethod
    def allocate(cls, shape: tuple[int, ...], dtype: np.dtype) -> Buffer:
        """``cudaMallocHost`` + ``cudaMalloc`` of ``prod(shape) * itemsize`` bytes each."""
        cudart = runtime()
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        host_ptr = int(check(cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
        try:
            device = int(check(cudart.cudaMalloc(nbytes), "cudaMalloc"))
        except GpuError:
            cudart.cudaFreeHost(host_ptr)
            raise
        raw = np.ctypeslib.as_array((ctypes.c_byte * nbytes).from_address(host_ptr))
        return cls(raw.view(dtype).reshape(shape), device, nbytes, host_ptr)

    def free(self) -> None:
        """Free both buffers (idempotent); raises GpuError if CUDA refuses."""
        cudart = runtime()
        device, host_ptr = self.device, self._host_ptr
        self.device = self._host_ptr = 0
        if device:
            check(cudart.cudaFree(device), "cudaFree")
        if host_ptr:
            check(cudart.cudaFreeHost(host_ptr), "cudaFreeHost")


def copy_htod_async(dst: int, src: np.ndarray, nbytes: int, stream: Any) -> None:
    """Enqueue a host-to-device copy of the first ``nbytes`` of ``src`` (pinned, contiguous)."""
    cudart = runtime()
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    check(cudart.cudaMemcpyAsync(dst, src.ctypes.data, nbytes, kind, stream), "cudaMemcpyAsync(HtoD)")


def copy_dtoh_async(dst: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
    """Enqueue a device-to-host copy into the first ``nbytes`` of ``dst`` (pinned, contiguous)."""
    cudart = runtime()
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(cudart.cudaMemcpyAsync(dst.ctypes.data, src, nbytes, kind, stream), "cudaMemcpyAsync(DtoH)")


def stream_create() -> Any:
    """A non-blocking stream: no implicit synchronisation with the legacy default stream."""
    cudart = runtime()
    return check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")


def stream_sync(stream: Any) -> None:
    """Wait until everything enqueued on ``stream`` has finished."""
    check(runtime().cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def stream_destroy(stream: Any) -> None:
    check(runtime().cudaStreamDestroy(stream), "cudaStreamDestroy")
