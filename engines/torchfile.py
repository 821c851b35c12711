"""Read a PyTorch state dict (.pth) into numpy arrays without torch, through a restricted unpickler.

Both of torch's formats are handled: the zip format (torch >= 1.6: ``archive/data.pkl`` plus
``archive/data/<key>`` raw storages) and the legacy format (a magic-number pickle, a protocol
pickle, a system-info pickle, the object pickle, the list of storage keys, then each storage
as an int64 element count followed by its raw bytes). Only the globals a state dict needs are
allowed; anything else raises ModelError, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from livemod.core.errors import ModelError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,  # not supported: no numpy dtype
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        dtype = STORAGE_DTYPES.get(name)
        if dtype is None:
            raise ModelError(f"unsupported tensor storage type torch.{name}", reason="model_format")
        self.name, self.dtype = name, np.dtype(dtype)


class _Storage:
    """A flat storage; its bytes are filled in later for the legacy format."""

    def __init__(self, dtype: np.dtype, key: str) -> None:
        self.dtype, self.key = dtype, key
        self.array: np.ndarray | None = None


class _LazyTensor:
    """A tensor view over a storage, materialised once all storages are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise ModelError(f"storage {self.storage.key} was never read", reason="model_format")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, data.dtype)
        need = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
        if need > data.size or self.offset < 0 or any(st < 0 for st in self.stride):
            raise ModelError("tensor view runs past its storage", reason="model_format")
        strides = tuple(st * data.itemsize for st in self.stride)
        view = np.lib.stride_tricks.as_strided(data[self.offset :], shape=self.size, strides=strides, writeable=False)
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


class _Unpickler(pickle.Unpickler):
    """Allows only what a state dict is made of."""

    def __init__(self, fh: BinaryIO, load_storage: Callable[[tuple[Any, ...]], _Storage]) -> None:
        super().__init__(fh)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise ModelError(f"refusing to load global {module}.{name} from a model file", reason="model_unsafe")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise ModelError(f"unexpected persistent id {pid!r}", reason="model_format")
        return self._load_storage(pid)


def _finish(obj: Any) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"model file holds a {type(obj).__name__}, not a state dict", reason="model_format")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if isinstance(value, _LazyTensor):
            out[str(key)] = value.materialise()
    return out


def _storage_type(pid: tuple[Any, ...]) -> np.dtype:
    st = pid[1]
    if isinstance(st, _StorageType):
        return st.dtype
    raise ModelError(f"unknown storage type {st!r}", reason="model_format")


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise ModelError(f"{path}: zip without data.pkl", reason="model_format")
        prefix = pkl[: -len("data.pkl")]
        storages: dict[str, _Storage] = {}

        def load(pid: tuple[Any, ...]) -> _Storage:
            key = str(pid[2])
            if key not in storages:
                s = _Storage(_storage_type(pid), key)
                s.array = np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=s.dtype)
                storages[key] = s
            return storages[key]

        return _finish(_Unpickler(io.BytesIO(zf.read(pkl)), load).load())


def _load_legacy(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as fh:
        def no_storage(pid: tuple[Any, ...]) -> _Storage:
            raise ModelError(f"{path}: storage reference in a header pickle", reason="model_format")

        def plain() -> Any:
            return _Unpickler(fh, no_storage).load()

        if plain() != LEGACY_MAGIC:
            raise ModelError(f"{path}: not a PyTorch file (bad magic number)", reason="model_format")
        if plain() != 1001:
            raise ModelError(f"{path}: unsupported legacy protocol version", reason="model_format")
        sys_info = plain()
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise ModelError(f"{path}: big-endian PyTorch files are not supported", reason="model_format")
        storages: dict[str, _Storage] = {}

        def load(pid: tuple[Any, ...]) -> _Storage:
            key = str(pid[2])
            if key not in storages:
                storages[key] = _Storage(_storage_type(pid), key)
            return storages[key]

        obj = _Unpickler(fh, load).load()
        keys = plain()
        for key in keys:
            key = str(key)
            (count,) = struct.unpack("<q", fh.read(8))
            s = storages.get(key)
            if s is None:
                raise ModelError(f"{path}: storage {key} not referenced", reason="model_format")
            raw = fh.read(count * s.dtype.itemsize)
            if len(raw) != count * s.dtype.itemsize:
                raise ModelError(f"{path}: truncated storage {key}", reason="model_format")
            s.array = np.frombuffer(raw, dtype=s.dtype)
        return _finish(obj)


def load_state_dict(path: Path | str) -> dict[str, np.ndarray]:
    """Read a .pth state dict into {name: float32/int64 ndarray} without importing torch.

    Raises:
        ModelError: unknown format, a forbidden global, or a damaged file.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read PyTorch state dict: {exc}", reason="model_format") from exc
