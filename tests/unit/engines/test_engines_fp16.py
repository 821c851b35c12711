"""FP16 preparation: the FP32-vs-FP16 check (on ONNX Runtime) and the missing-extra error."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from livemod.decoders.errors import ConfigError
from livemod.engines.fp16 import check_fp16, convert_fp16
from tests.tinymodels import tiny_card, tiny_cam_model


def _halved_weights(src, dst):
    """The same graph with weights rounded through float16: what an FP16 conversion perturbs."""
    m = onnx.load(str(src))
    for init in m.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16).astype(np.float32), init.name))
    onnx.save(m, str(dst))
    return dst


def test_check_fp16_reports_small_differences(tmp_path):
    p32, _ = tiny_cam_model(tmp_path / "m.onnx")
    p16 = _halved_weights(p32, tmp_path / "m16.onnx")
    imgs = [np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8) for i in range(6)]
    report = check_fp16(tiny_card(p32), p32, p16, imgs)
    assert report.n == 6 and 0 < report.max_prob_diff < 1e-2 and report.ok()


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is not None, reason="ModelOpt is installed here")
def test_convert_without_modelopt_says_how_to_install(tmp_path):
    p, _ = tiny_cam_model(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=r"livemod\[fp16\]"):
        convert_fp16(tiny_card(p), tmp_path)
