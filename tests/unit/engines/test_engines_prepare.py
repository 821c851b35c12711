"""Graph-building pieces of `models prepare`: SAME padding, folded BN, CAM heads, Open-NSFW surgery."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from livemod.core.errors import ModelError
from livemod.engines.onnx_graph import GraphBuilder, add_cam_outputs, fold_bn, name_batch_dim, same_pads
from livemod.engines.prepare import prepare_models


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.mark.parametrize(
    "size, k, s, expected",
    [
        (224, 3, 2, (0, 1, 112)),  # lite0 stem: TF puts the odd pixel after
        (112, 3, 1, (1, 1, 112)),
        (112, 5, 2, (1, 2, 56)),
        (14, 5, 2, (1, 2, 7)),
        (7, 1, 1, (0, 0, 7)),
        (15, 3, 2, (1, 1, 8)),
        (5, 1, 2, (0, 0, 3)),  # 1x1 stride 2 on an odd size: no padding at all
        (1, 3, 1, (1, 1, 1)),
    ],
)
def test_tf_same_padding(size, k, s, expected):
    assert same_pads(size, k, s) == expected


def _conv_ref(x: np.ndarray, w: np.ndarray, stride: int, groups: int, pads: tuple[int, int]) -> np.ndarray:
    """Plain grouped convolution on an explicitly padded input: x (N, C, H, W), w (O, C/groups, k, k)."""
    xp = np.pad(x, ((0, 0), (0, 0), pads, pads)).astype(np.float64)
    n, _, hp, _ = xp.shape
    o, cg, k, _ = w.shape
    out_size = (hp - k) // stride + 1
    y = np.zeros((n, o, out_size, out_size))
    og = o // groups
    for g in range(groups):
        xs = xp[:, g * cg : (g + 1) * cg]
        for i in range(k):
            for j in range(k):
                patch = xs[:, :, i : i + stride * out_size : stride, j : j + stride * out_size : stride]
                y[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, w[g * og : (g + 1) * og, :, i, j])
    return y


@pytest.mark.parametrize(
    "size, channels, out, k, stride, groups",
    [(8, 3, 4, 3, 2, 1), (9, 3, 5, 3, 2, 1), (7, 6, 6, 5, 1, 6), (10, 4, 4, 5, 2, 4), (6, 5, 2, 1, 1, 1)],
)
def test_folded_conv_bn_matches_conv_then_bn(size, channels, out, k, stride, groups):
    rng = np.random.default_rng(size * 31 + k)
    x = rng.normal(size=(2, channels, size, size)).astype(np.float32)
    w = rng.normal(size=(out, channels // groups, k, k)).astype(np.float32)
    gamma, beta, mean = (rng.normal(size=out).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.1, 2.0, size=out).astype(np.float32)
    eps = 1e-3

    lo, hi, expected_size = same_pads(size, k, stride)
    assert lo == hi or hi == lo + 1
    ref = _conv_ref(x, w, stride, groups, (lo, hi))
    ref = (ref - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps) * gamma[:, None, None] + beta[:, None, None]

    g = GraphBuilder()
    wf, bf = fold_bn(w, gamma, beta, mean, var, eps)
    y, out_size = g.conv("x", wf, bf, size=size, stride=stride, groups=groups)
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    model = g.model("conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out, out_size, out_size])])
    got = _run(model, {"x": x})["y"]
    assert out_size == expected_size and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("features, classes, cells", [(8, 3, 7), (16, 5, 4), (4, 1, 1)])
def test_cam_head_mean_plus_bias_is_logits(features, classes, cells):
    rng = np.random.default_rng(features)
    a = np.maximum(rng.normal(size=(3, features, cells, cells)), 0).astype(np.float32)
    fc_w = rng.normal(size=(classes, features)).astype(np.float32)
    fc_b = rng.normal(size=classes).astype(np.float32)
    g = GraphBuilder()
    g.cam_head("A", fc_w, fc_b, logits="logits", cams="cams")
    model = g.model(
        "head", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["N", features, cells, cells])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info("cams", TensorProto.FLOAT, ["N", classes, cells, cells])],
    )
    out = _run(model, {"A": a})
    np.testing.assert_allclose(out["logits"], a.mean(axis=(2, 3)) @ fc_w.T + fc_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["cams"], np.einsum("ck,nkhw->nchw", fc_w, a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["cams"].mean(axis=(2, 3)) + fc_b, out["logits"], atol=1e-5)


def _tf2onnx_like(features: int = 6, classes: int = 2, cells: int = 3) -> tuple[onnx.ModelProto, np.ndarray]:
    """Open-NSFW's tail in miniature, as tf2onnx wrote it: opset 9, IR 4, an unnamed batch axis.

    input (N, cells, cells, features) NHWC -> Transpose -> Relu "feat:0" -> AveragePool -> Reshape
    -> MatMul "fc/w:0" -> Add "fc/logits:0" -> Softmax "outputs".
    """
    rng = np.random.default_rng(7)
    w = rng.normal(size=(features, classes)).astype(np.float32)
    b = rng.normal(size=classes).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["input:0"], ["nchw:0"], perm=[0, 3, 1, 2]),
        helper.make_node("Relu", ["nchw:0"], ["feat:0"]),
        helper.make_node("AveragePool", ["feat:0"], ["pool:0"], kernel_shape=[cells, cells], strides=[1, 1]),
        helper.make_node("Reshape", ["pool:0", "shape:0"], ["flat:0"]),
        helper.make_node("MatMul", ["flat:0", "fc/w:0"], ["fc/mm:0"]),
        helper.make_node("Add", ["fc/mm:0", "fc/b:0"], ["fc/logits:0"]),
        helper.make_node("Softmax", ["fc/logits:0"], ["outputs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_tf2onnx",
        [helper.make_tensor_value_info("input:0", TensorProto.FLOAT, ["unk__1", cells, cells, features])],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["unk__2", classes])],
        initializer=[numpy_helper.from_array(w, "fc/w:0"), numpy_helper.from_array(b, "fc/b:0"),
                     numpy_helper.from_array(np.array([-1, features], np.int64), "shape:0")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4), b


def test_add_cam_outputs_to_a_tf2onnx_graph():
    model, bias = _tf2onnx_like()
    x = np.random.default_rng(1).normal(size=(4, 3, 3, 6)).astype(np.float32)
    before = _run(model, {"input:0": x})["outputs"]

    add_cam_outputs(model, features="feat:0", weight="fc/w:0", logits_tensor="fc/logits:0", cells=(3, 3))
    name_batch_dim(model)
    onnx.checker.check_model(model)
    out = _run(model, {"input:0": x})

    assert [o.name for o in model.graph.output] == ["outputs", "logits", "cams"]
    assert {vi.type.tensor_type.shape.dim[0].dim_param for vi in [*model.graph.input, *model.graph.output]} == {"N"}
    assert out["cams"].shape == (4, 2, 3, 3)
    np.testing.assert_allclose(out["outputs"], before, atol=1e-7)
    np.testing.assert_allclose(out["cams"].mean(axis=(2, 3)) + bias, out["logits"], atol=1e-5)
    e = np.exp(out["logits"] - out["logits"].max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), before, atol=1e-6)


@pytest.mark.parametrize(
    "names, match",
    [({"features": "nope:0"}, "nope:0"), ({"weight": "fc/b:0"}, "shape"), ({"logits_tensor": "x"}, "lacks x")],
)
def test_add_cam_outputs_refuses_a_different_graph(names, match):
    model, _ = _tf2onnx_like()
    kw = {"features": "feat:0", "weight": "fc/w:0", "logits_tensor": "fc/logits:0", "cells": (3, 3)} | names
    with pytest.raises(ModelError, match=match):
        add_cam_outputs(model, **kw)


def test_prepare_refuses_unknown_models_before_building(tmp_path):
    with pytest.raises(ModelError, match="no builder") as err:
        prepare_models(tmp_path, ["open-nsfw", "yolo"], log=lambda _m: None)
    assert err.value.reason == "model_missing"
    assert not any(tmp_path.iterdir())
