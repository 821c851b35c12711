"""Thin cuda-python (cuda.bindings.runtime) helpers: status codes become GpuError naming the CUDA error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from livemod.decoders.errors import ConfigError, GpuError


def runtime() -> Any:
    """The cuda.bindings runtime module (cuda-python), imported lazily."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 layout
        except ImportError as exc:
            raise ConfigError("cuda-python is not installed: pip install 'livemod[gpu]'") from exc
    return cudart


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result tuple ``(err, *values)``; raise GpuError unless cudaSuccess.

    Returns:
        None, the single value, or a tuple of values.
    """
    cudart = runtime()
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != cudart.cudaError_t.cudaSuccess:
        name = err.name if hasattr(err, "name") else str(err)
        try:
            _e, desc = cudart.cudaGetErrorString(err)
            desc = desc.decode() if isinstance(desc, bytes) else str(desc)
        except Exception:  # noqa: BLE001 - the name alone is still useful
            desc = ""
        raise GpuError(f"{call} failed: {name}" + (f" ({desc})" if desc else ""), reason=f"cuda_{name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_count() -> int:
    return int(check(runtime().cudaGetDeviceCount(), "cudaGetDeviceCount"))


@dataclass
class Buffer:
    """A pinned host buffer and a device buffer of the same size, for one I/O tensor.

    Attributes:
        host: numpy view of the pinned host memory, shape = the profile's max shape.
        device: device pointer (int).
        nbytes: size of each.
    """

    host: np.ndarray
    device: int
    nbytes: int
    _host_ptr: int

    @classmethod
    def allocate(cls, shape: tuple[int, ...], dtype: np.dtype) -> "Buffer":
        cudart = runtime()
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        host_ptr = check(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        try:
            device = check(cudart.cudaMalloc(nbytes), "cudaMalloc")
        except GpuError:
            cudart.cudaFreeHost(host_ptr)
            raise
        raw = (np.ctypeslib.as_array((np.ctypeslib.ctypes.c_byte * nbytes).from_address(int(host_ptr))))
        host = raw.view(dtype).reshape(shape)
        return cls(host, int(device), nbytes, int(host_ptr))

    def free(self) -> None:
        cudart = runtime()
        if self.device:
            cudart.cudaFree(self.device)
            self.device = 0
        if self._host_ptr:
            cudart.cudaFreeHost(self._host_ptr)
            self._host_ptr = 0


def copy_htod_async(dst: int, src: np.ndarray, nbytes: int, stream: Any) -> None:
    cudart = runtime()
    check(cudart.cudaMemcpyAsync(dst, src.ctypes.data, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync(HtoD)")


def copy_dtoh_async(dst: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
    cudart = runtime()
    check(cudart.cudaMemcpyAsync(dst.ctypes.data, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync(DtoH)")


def stream_create() -> Any:
    return check(runtime().cudaStreamCreate(), "cudaStreamCreate")


def stream_sync(stream: Any) -> None:
    check(runtime().cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def stream_destroy(stream: Any) -> None:
    runtime().cudaStreamDestroy(stream)
