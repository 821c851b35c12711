"""Tiny real ONNX models with a CAM head, built with onnx.helper for engine tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from livemod.engines.card import ModelCard


def tiny_cam_model(
    path: Path, *, layout: str = "NHWC", size: int = 16, classes: int = 3, features: int = 6, seed: int = 0
) -> tuple[Path, np.ndarray]:
    """Write a model: 1x1 conv features + ReLU (A, stride 4 pooling to size/4), cams = W*A, logits = mean(cams) + b.

    Returns:
        (path, bias) where bias is float32 (classes,).
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(features, 3, 1, 1)).astype(np.float32)
    w2 = rng.normal(size=(classes, features, 1, 1)).astype(np.float32)
    bias = rng.normal(size=(classes,)).astype(np.float32)
    nodes = []
    x = "input"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes += [
        helper.make_node("AveragePool", [x], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["pooled", "w1"], ["feat"]),
        helper.make_node("Relu", ["feat"], ["A"]),
        helper.make_node("Conv", ["A", "w2"], ["cams"]),
        helper.make_node("ReduceMean", ["cams", "axes"], ["gap"], keepdims=0),
        helper.make_node("Add", ["gap", "bias"], ["logits"]),
    ]
    shape = ["N", size, size, 3] if layout == "NHWC" else ["N", 3, size, size]
    graph = helper.make_graph(
        nodes,
        "tiny_cam",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info("cams", TensorProto.FLOAT, ["N", classes, size // 4, size // 4]),
        ],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path, bias


def tiny_card(path: Path, *, layout: str = "NHWC", size: int = 16, classes: int = 3, **kw) -> ModelCard:
    return ModelCard(
        name=kw.pop("name", "tiny"),
        version="1",
        file=path.name,
        layout=layout,
        size=(size, size),
        channel_order=kw.pop("channel_order", "RGB"),
        scale=1 / 255,
        resize=kw.pop("resize", "squash"),
        labels=tuple(f"c{i}" for i in range(classes)),
        **kw,
    )
