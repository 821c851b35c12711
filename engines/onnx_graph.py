"""onnx.helper building blocks for the prepared models: TF 'SAME' padding, folded BN, class-map heads."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from livemod.core.errors import ModelError


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow 'SAME' padding along one axis, as the TF-trained EfficientNet weights expect.

    total = max((ceil(size / stride) - 1) * stride + kernel - size, 0); the smaller half goes
    before, the rest after (the same arithmetic as efficientnet-lite-pytorch's
    ``Conv2dStaticSamePadding``).

    Returns:
        (pad_before, pad_after, output_size).
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def fold_bn(
    weight: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fold an inference-mode BatchNorm into the bias-free convolution before it.

    Args:
        weight: float (C_out, C_in / groups, kh, kw).
        gamma, beta, mean, var: float (C_out,), the BatchNorm's parameters and running statistics.
        eps: the BatchNorm's epsilon.

    Returns:
        (weight, bias): float32 (C_out, C_in / groups, kh, kw) and float32 (C_out,) such that
        conv(x, weight) + bias == BN(conv(x, original weight)).
    """
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    w = weight.astype(np.float64) * scale[:, None, None, None]
    b = beta.astype(np.float64) - mean.astype(np.float64) * scale
    return w.astype(np.float32), b.astype(np.float32)


class GraphBuilder:
    """Collects nodes and initializers for one ONNX graph; names are made unique by a counter."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._clip: tuple[str, str] | None = None

    def unique(self, stem: str) -> str:
        """A fresh tensor/node name starting with ``stem``."""
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, array: np.ndarray, stem: str) -> str:
        """Add an initializer and return its name."""
        name = self.unique(stem)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def conv(
        self,
        x: str,
        weight: np.ndarray,
        bias: np.ndarray,
        *,
        size: int,
        stride: int = 1,
        groups: int = 1,
        stem: str = "conv",
    ) -> tuple[str, int]:
        """A square convolution with TF 'SAME' padding (explicit, possibly asymmetric ``pads``).

        Args:
            x: input tensor name, (N, C_in, size, size).
            weight: float32 (C_out, C_in / groups, k, k).
            bias: float32 (C_out,).
            size: spatial size of ``x`` (the pads are computed statically for it).

        Returns:
            (output tensor name, output spatial size).
        """
        k = int(weight.shape[-1])
        lo, hi, out = same_pads(size, k, stride)
        y = self.unique(stem)
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(weight, f"{stem}_w"), self.const(bias, f"{stem}_b")], [y], name=y,
            kernel_shape=[k, k], strides=[stride, stride], pads=[lo, lo, hi, hi], group=groups,
        ))
        return y, out

    def relu6(self, x: str) -> str:
        """min(max(x, 0), 6) as Clip (opset >= 11 form, bounds as shared scalar initializers)."""
        if self._clip is None:
            self._clip = (self.const(np.array(0.0, np.float32), "zero"), self.const(np.array(6.0, np.float32), "six"))
        y = self.unique("relu6")
        self.nodes.append(helper.make_node("Clip", [x, *self._clip], [y], name=y))
        return y

    def add(self, a: str, b: str) -> str:
        """Element-wise a + b (a residual connection)."""
        y = self.unique("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y], name=y))
        return y

    def cam_head(self, features: str, fc_w: np.ndarray, fc_b: np.ndarray, *, logits: str, cams: str) -> None:
        """Global average pooling + linear classifier, and the same classifier at every cell.

        Args:
            features: tensor (N, K, h, w), the one that feeds the pooling.
            fc_w: float32 (C, K); fc_b: float32 (C,).
            logits: output name for (N, C) = fc_w . mean_hw(features) + fc_b.
            cams: output name for (N, C, h, w) = fc_w . features (1x1 convolution, no bias), so
                mean_hw(cams) + fc_b == logits.
        """
        w = self.const(fc_w.astype(np.float32), "fc_w")  # one copy, shared by both outputs
        b = self.const(fc_b.astype(np.float32), "fc_b")
        shape = self.const(np.array([*fc_w.shape, 1, 1], np.int64), "cam_shape")
        gap, flat, cam_w = self.unique("gap"), self.unique("flatten"), self.unique("cam_w")
        self.nodes += [
            helper.make_node("GlobalAveragePool", [features], [gap], name=gap),
            helper.make_node("Flatten", [gap], [flat], axis=1, name=flat),
            helper.make_node("Gemm", [flat, w, b], [logits], transB=1, name="fc"),
            helper.make_node("Reshape", [w, shape], [cam_w], name=cam_w),
            helper.make_node("Conv", [features, cam_w], [cams], name="cams"),
        ]

    def model(
        self,
        name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        *,
        opset: int = 17,
        ir_version: int = 8,
    ) -> onnx.ModelProto:
        """The finished model, checked by ``onnx.checker``."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
        check(model)
        return model


def check(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model``, its failure as ModelError."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"built ONNX graph {model.graph.name!r} is invalid: {exc}", reason="model_format") from exc


def add_cam_outputs(
    model: onnx.ModelProto,
    *,
    features: str,
    weight: str,
    logits_tensor: str,
    cells: tuple[int, int],
    logits: str = "logits",
    cams: str = "cams",
) -> onnx.ModelProto:
    """Expose the pre-softmax logits and add class maps to a graph with a linear head.

    The graph must compute ``logits_tensor = MatMul(pool(features), weight) + bias`` with
    ``features`` (N, K, h, w), ``cells`` = (h, w), and the initializer ``weight`` (K, C). Two outputs are appended
    (the existing ones stay): ``logits`` (N, C), an Identity of ``logits_tensor``, and
    ``cams`` (N, C, h, w), a 1x1 Conv of ``features`` with weight^T and no bias.

    Raises:
        ModelError: a named tensor or initializer is missing, or the weight is not 2-D.
    """
    g = model.graph
    produced = {o for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    missing = [t for t in (features, logits_tensor) if t not in produced] + ([weight] if weight not in inits else [])
    if missing:
        raise ModelError(f"graph {g.name!r} lacks {', '.join(missing)}", reason="model_format")
    w = numpy_helper.to_array(inits[weight])
    if w.ndim != 2:
        raise ModelError(f"{weight} has shape {w.shape}, expected (features, classes)", reason="model_format")
    cam_w = f"{cams}_weight"
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T[:, :, None, None].astype(np.float32)), cam_w))
    g.node.append(helper.make_node("Conv", [features, cam_w], [cams], name=cams))
    g.node.append(helper.make_node("Identity", [logits_tensor], [logits], name=logits))
    g.output.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", w.shape[1]]))
    g.output.append(helper.make_tensor_value_info(cams, TensorProto.FLOAT, ["N", w.shape[1], *cells]))
    return model


def name_batch_dim(model: onnx.ModelProto, name: str = "N") -> None:
    """Give the first axis of every graph input and output the symbolic name ``name``.

    tf2onnx leaves names such as ``unk__653``; one name for all of them says that every output
    has as many rows as the input batch, and shapes a TensorRT optimisation profile by.
    """
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = name
