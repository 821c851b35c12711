"""Pieces of `models prepare`: SAME padding, folded BN, CAM heads, Open-NSFW surgery, INT8 and the precision."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from livemod.core.errors import ConfigError, ModelError
from livemod.engines.backend import choose_precision
from livemod.engines.card import Int8Variant, ModelCard, sha256_file
from livemod.engines.onnx_graph import GraphBuilder, add_cam_outputs, fold_bn, name_batch_dim, same_pads
from livemod.engines.prepare import prepare_models
from livemod.engines.quantize import (
    Int8Report,
    check_int8,
    check_path,
    fold_constant_reshapes,
    quantize_int8,
    read_check,
    round_range,
    upgrade_opset,
)


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


# ---- INT8 (engines/quantize.py) and the precision choice (engines/backend.py) ----------------


def _opset9_cam_model(seed: int = 0) -> onnx.ModelProto:
    """A tf2onnx-era graph (opset 9, IR 4): Conv+Relu features, GAP -> MatMul + bias logits, 1x1 Conv cams."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.3
    fc = rng.normal(size=(8, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1], strides=[4, 4], name="conv"),
        helper.make_node("Relu", ["conv"], ["A"], name="relu"),
        helper.make_node("GlobalAveragePool", ["A"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flat"),
        helper.make_node("MatMul", ["flat", "fc"], ["mm"], name="fc/MatMul"),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"], name="fc/BiasAdd"),
        helper.make_node("Reshape", ["fc_t", "cam_shape"], ["cam_w"], name="cam_w"),
        helper.make_node("Conv", ["A", "cam_w"], ["cams"], name="cams"),
    ]
    graph = helper.make_graph(
        nodes, "opset9_cam",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("cams", TensorProto.FLOAT, ["N", 3, 4, 4])],
        initializer=[numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(rng.normal(size=8).astype(np.float32) * 0.1, "b"),
                     numpy_helper.from_array(fc, "fc"),
                     numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "fc_b"),
                     numpy_helper.from_array(np.ascontiguousarray(fc.T), "fc_t"),
                     numpy_helper.from_array(np.array([3, 8, 1, 1], np.int64), "cam_shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)
    onnx.checker.check_model(model)
    return model


def _tiny_card(file: str = "tiny.onnx", **kw) -> ModelCard:
    return ModelCard(name="tiny", version="1", file=file, layout="NCHW", size=(16, 16), channel_order="RGB",
                     scale=1 / 255, resize="squash", labels=("a", "b", "c"), **kw)


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize(
    "x, expected",
    [(0.0, 0.0), (1.0, 1.0), (-1.0, -1.0), (6.0, 6.0), (255.0, 255.0), (256.5, 258.0), (-0.30001, -0.30078125),
     (1e-3, 132 * 2.0**-17)],
)
def test_round_range_keeps_8_significant_bits_and_widens(x, expected):
    assert round_range(x) == expected
    assert abs(round_range(x)) >= abs(x)


@pytest.mark.parametrize("x", [0.1234567, 3.3, -7.77e-4, 11.1, 5.9999])
def test_round_range_absorbs_last_bit_noise(x):
    """Ranges that differ in the float32's last bits (another CPU's kernels) round to the same value
    (unless one sits exactly on the 8-bit grid)."""
    x32 = np.float32(x)
    for y in (np.nextafter(x32, np.float32(np.inf)), np.nextafter(x32, np.float32(-np.inf))):
        assert round_range(float(y)) == round_range(float(x32))


def test_fold_constant_reshapes_gives_each_node_its_own_weight():
    model = _opset9_cam_model()
    folded = fold_constant_reshapes(model)
    assert "Reshape" not in {n.op_type for n in folded.graph.node}
    assert "fc_t" not in {i.name for i in folded.graph.initializer}  # used only by the folded Reshape
    x = np.random.default_rng(2).normal(size=(2, 3, 16, 16)).astype(np.float32)
    a, b = _run(model, {"input": x}), _run(folded, {"input": x})
    np.testing.assert_allclose(b["cams"], a["cams"], atol=1e-6)
    np.testing.assert_allclose(b["logits"], a["logits"], atol=1e-6)


@pytest.mark.parametrize("opset", [9, 11, 13, 17])
def test_upgrade_opset_only_below_13(opset):
    model = onnx.version_converter.convert_version(_opset9_cam_model(), opset) if opset != 9 else _opset9_cam_model()
    up = upgrade_opset(model)
    version = next(o.version for o in up.opset_import if o.domain in ("", "ai.onnx"))
    assert version == (17 if opset < 13 else opset)
    onnx.checker.check_model(up)


def test_per_channel_int8_of_an_opset9_graph_loads_and_tracks_fp32(tmp_path):
    """FACTS: per-channel QDQ on the opset-9 graph fails to load ("Unrecognized attribute: axis") unless upgraded."""
    card = _tiny_card()
    fp32 = tmp_path / "tiny.onnx"
    onnx.save(_opset9_cam_model(), str(fp32))
    q = quantize_int8(card, onnx.load(str(fp32)), _frames(12), exclude_nodes=["fc/MatMul"])
    ops = [n.op_type for n in q.graph.node]
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 13
    per_channel = [n for n in q.graph.node
                   if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)]
    assert per_channel and ops.count("QuantizeLinear") >= 2
    assert "fc/MatMul" in {n.name for n in q.graph.node}  # kept in float, its name unchanged
    assert [o.name for o in q.graph.output] == ["logits", "cams"]
    dst = tmp_path / "tiny-int8.onnx"
    dst.write_bytes(q.SerializeToString())
    report = check_int8(card, fp32, dst, [(f"f{i}", f) for i, f in enumerate(_frames(8, seed=1))])
    assert report.n == 8 and report.cam_corr_mean > 0.95 and report.max_prob_diff < 0.1


@pytest.mark.parametrize(
    "same_top, cam_r, n, ok",
    [(1.0, 0.97, 48, True), (0.95, 0.9, 20, True), (0.94, 0.99, 48, False), (1.0, 0.89, 48, False),
     (1.0, 1.0, 0, False)],
)
def test_int8_report_ok(same_top, cam_r, n, ok):
    r = Int8Report(n=n, same_top=same_top, max_prob_diff=0.01, cam_corr_mean=cam_r, cam_corr_min=cam_r,
                   n_decisive=n, same_top_decisive=same_top)
    assert r.ok() is ok
    assert ("ok" if ok else "FAILS") in r.summary()


def test_card_at_int8_keeps_the_name_and_swaps_file_sha_version():
    card = _tiny_card(int8=Int8Variant(version="1+int8", file="tiny-int8.onnx", sha256="ab" * 32, keep_float=("x",)))
    v = card.at_int8()
    assert (v.name, v.labels, v.layout) == (card.name, card.labels, card.layout)
    assert (v.file, v.sha256, v.version, v.int8) == ("tiny-int8.onnx", "ab" * 32, "1+int8", None)
    with pytest.raises(ConfigError, match="no int8 variant"):
        v.at_int8()


OK_REPORT = Int8Report(n=20, same_top=1.0, max_prob_diff=0.01, cam_corr_mean=0.99, cam_corr_min=0.9,
                       n_decisive=20, same_top_decisive=1.0)
BAD_REPORT = Int8Report(n=20, same_top=0.7, max_prob_diff=0.2, cam_corr_mean=0.99, cam_corr_min=0.9,
                        n_decisive=10, same_top_decisive=1.0)


@pytest.mark.parametrize(
    "requested, backend, variant, state, expected",
    [
        ("fp32", "onnxruntime", True, "checked_ok", "fp32"),
        ("auto", "onnxruntime", True, "checked_ok", "int8"),
        ("auto", "onnxruntime", True, "checked_bad", "fp32"),
        ("auto", "onnxruntime", True, "unchecked", "fp32"),
        ("auto", "onnxruntime", True, "check_of_other_bytes", "fp32"),
        ("auto", "onnxruntime", True, "missing", "fp32"),
        ("auto", "onnxruntime", False, "missing", "fp32"),
        ("int8", "onnxruntime", True, "checked_bad", "int8"),
        ("auto", "tensorrt", True, "checked_ok", "fp32"),
        ("int8", "tensorrt", True, "checked_ok", ConfigError),
        ("int8", "onnxruntime", False, "missing", ConfigError),
    ],
)
def test_choose_precision(tmp_path, requested, backend, variant, state, expected):
    card = _tiny_card(int8=Int8Variant(version="1+int8", file="tiny-int8.onnx") if variant else None)
    path = tmp_path / "tiny-int8.onnx"
    if state != "missing":
        path.write_bytes(_opset9_cam_model().SerializeToString())
    if state in ("checked_ok", "checked_bad", "check_of_other_bytes"):
        report = OK_REPORT if state != "checked_bad" else BAD_REPORT
        digest = sha256_file(path) if state != "check_of_other_bytes" else "0" * 64
        check_path(path).write_text(report.to_json(digest))
    if expected is ConfigError:
        with pytest.raises(ConfigError):
            choose_precision(card, tmp_path, backend, requested)
        return
    choice = choose_precision(card, tmp_path, backend, requested)
    assert choice.precision == expected, choice.reason
    if state == "checked_ok" and expected == "int8" and requested == "auto":
        assert read_check(path) == OK_REPORT
