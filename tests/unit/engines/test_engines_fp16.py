"""FP16 preparation: the FP32-vs-FP16 check on ONNX Runtime, the written card, the missing-extra error, AutoCast."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest

from livemod.core.errors import ConfigError, ModelError
from livemod.engines.card import load_card, sha256_file
from livemod.engines.fp16 import Fp16Report, autocast_command, check_fp16, convert_fp16, fp16_card, write_card
from tests.fp16models import fp16_by_hand
from tests.tinymodels import tiny_cam_model, tiny_card

HAVE_MODELOPT = importlib.util.find_spec("modelopt") is not None


def _images(n: int = 6) -> list[np.ndarray]:
    return [np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_check_fp16_on_a_real_fp16_graph(tmp_path, layout):
    p32, _ = tiny_cam_model(tmp_path / "m.onnx", layout=layout)
    p16 = fp16_by_hand(p32, tmp_path / "m-fp16.onnx")
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(p16)).graph.initializer)
    report = check_fp16(tiny_card(p32, layout=layout), p32, p16, _images())
    assert report.n == 6 and 0 < report.max_prob_diff < 1e-2 and report.ok()
    assert report.same_top_class_fraction == 1.0 and 0 < report.max_cam_diff < 1e-2


@pytest.mark.parametrize(
    ("report", "ok"),
    [
        (Fp16Report(4, 5e-3, 1.0, 1e-3), True),
        (Fp16Report(4, 2e-2, 1.0, 1e-3), False),
        (Fp16Report(4, 5e-3, 0.75, 1e-3), False),
    ],
)
def test_report_verdict(report, ok):
    assert report.ok() is ok


def test_fp16_card_round_trips(tmp_path):
    p32, _ = tiny_cam_model(tmp_path / "m.onnx")
    p16 = fp16_by_hand(p32, tmp_path / "m-fp16.onnx")
    card = fp16_card(tiny_card(p32), p16)
    loaded = load_card(write_card(card, tmp_path / "cards" / "tiny.yaml"))
    assert loaded == card and loaded.name == "tiny" and loaded.file == "m-fp16.onnx"
    assert loaded.sha256 == sha256_file(p16) and loaded.version.endswith("+fp16")
    assert loaded.verify_file(tmp_path) == p16


def test_autocast_command_line(tmp_path):
    cmd = autocast_command(tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert cmd[1:3] == ["-m", "modelopt.onnx.autocast"]
    assert cmd[3:] == ["--onnx_path", str(tmp_path / "a.onnx"), "--output_path", str(tmp_path / "b.onnx"),
                       "--low_precision_type", "fp16", "--keep_io_types"]


def test_check_needs_images(tmp_path):
    p32, _ = tiny_cam_model(tmp_path / "m.onnx")
    with pytest.raises(ConfigError):
        check_fp16(tiny_card(p32), p32, p32, [])


@pytest.mark.skipif(HAVE_MODELOPT, reason="ModelOpt is installed here")
def test_convert_without_modelopt_says_how_to_install(tmp_path):
    p, _ = tiny_cam_model(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=r"pip install 'livemod\[fp16\]'"):
        convert_fp16(tiny_card(p), tmp_path)


@pytest.mark.skipif(not HAVE_MODELOPT, reason="ModelOpt is not installed: nvidia-modelopt[onnx] pulls torch and "
                    "CUDA wheels, so it is an optional extra (livemod[fp16]) kept out of the dev environment")
def test_convert_with_autocast(tmp_path):
    p32, _ = tiny_cam_model(tmp_path / "m.onnx")
    card = tiny_card(p32)
    p16 = convert_fp16(card, tmp_path, out_name="m16.onnx")
    assert p16 == tmp_path / "m16.onnx"
    graph = onnx.load(str(p16)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # --keep_io_types
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert check_fp16(card, p32, p16, _images()).ok()


@pytest.mark.skipif(not HAVE_MODELOPT, reason="ModelOpt is not installed")
def test_autocast_failure_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    card = tiny_card(bad)
    with pytest.raises(ModelError, match="AutoCast failed"):
        convert_fp16(card, tmp_path)
