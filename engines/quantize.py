"""INT8 copies of the prepared models for ONNX Runtime on the CPU: static QDQ quantization, checked against FP32.

Weights are int8 per output channel (symmetric), activations uint8 per tensor (asymmetric, the
u8 x s8 form that x86 VNNI kernels run), calibrated with min/max on real photos that installed
packages ship, pre-processed exactly as the model card says. Calibration ranges are rounded to
8 significant bits before they become scales, so the tiny float differences between CPUs' kernels
do not change the file's bytes (the card pins its sha256; ``check_int8`` is the fallback check).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from livemod.core.errors import ModelError
from livemod.engines.card import ModelCard, sha256_file
from livemod.engines.ort import OrtClassifier
from livemod.engines.preprocess import prepare_batch

if TYPE_CHECKING:  # onnx (~0.5 s to import, ml_dtypes) is needed to derive models, not to serve them
    import onnx

MIN_OPSET = 13
"""Per-channel DequantizeLinear (its ``axis`` attribute) needs opset >= 13."""
TARGET_OPSET = 17

MIN_SAME_TOP = 0.95
"""The accuracy check: INT8's top class equals FP32's on at least this share of the check frames."""
MIN_CAM_CORRELATION = 0.9
"""... and the mean Pearson correlation of the top class's map is at least this."""

RANGE_BITS = 8
"""Significant bits kept of each calibrated min/max (see the module docstring)."""


# ---- sample frames ----------------------------------------------------------------------------

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "immunohistochemistry",
                  "hubble_deep_field", "retina", "moon", "brick", "grass", "gravel", "cell", "clock", "page")
"""Photographs in scikit-image's wheel (public domain / CC0); grey ones are repeated to RGB."""


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """Real photos from installed packages: scikit-image's data photos and matplotlib's grace_hopper.jpg.

    Returns:
        (name, RGB uint8 (h, w, 3)) pairs; empty when neither package is installed.
    """
    out: list[tuple[str, np.ndarray]] = []
    try:
        import skimage.data
    except ImportError:
        pass
    else:
        for name in SKIMAGE_PHOTOS:
            img = getattr(skimage.data, name)()
            out.append((name, _rgb(img)))
        left, _right, _disp = skimage.data.stereo_motorcycle()
        out.append(("motorcycle", _rgb(left)))
    try:
        import matplotlib
    except ImportError:
        pass
    else:
        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            out.append(("grace_hopper", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return out


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (img > 0).astype(np.uint8) * 255 if img.dtype == bool else np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _crop(img: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = round(y0 * h), round(x0 * w)
    return img[top : max(round(y1 * h), top + 1), left : max(round(x1 * w), left + 1)]


def calibration_frames(photos: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
    """Two frames per photo for calibration: the mirrored photo and a seeded random 60-90% crop of it.

    Different views from ``check_frames`` (which never mirror), so the check does not grade the
    very frames the ranges came from.
    """
    rng = np.random.default_rng(20261)
    out = []
    for _name, img in photos:
        out.append(np.ascontiguousarray(img[:, ::-1]))
        s = float(rng.uniform(0.6, 0.9))
        x0, y0 = (float(v) for v in rng.uniform(0.0, 1.0 - s, size=2))
        out.append(_crop(img, x0, y0, x0 + s, y0 + s))
    return out


def check_frames(photos: Sequence[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """Frames the FP32/INT8 comparison runs on: each photo whole and its centre 70%, plus a few
    corner crops and down-scaled copies (a frame 1/4 the size, scaled back up as a decoder would).

    Returns:
        (label, RGB uint8) pairs, at least 20 when scikit-image is installed.
    """
    out: list[tuple[str, np.ndarray]] = []
    for i, (name, img) in enumerate(photos):
        out.append((name, img))
        out.append((f"{name}/centre70", _crop(img, 0.15, 0.15, 0.85, 0.85)))
        if i % 3 == 0:
            out.append((f"{name}/top-left", _crop(img, 0.0, 0.0, 0.6, 0.6)))
        if i % 3 == 1:
            h, w = img.shape[:2]
            small = cv2.resize(img, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
            out.append((f"{name}/quarter", cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)))
    return out


# ---- quantization -----------------------------------------------------------------------------


def upgrade_opset(model: onnx.ModelProto, target: int = TARGET_OPSET) -> onnx.ModelProto:
    """The model at opset ``target`` when its default-domain opset is below MIN_OPSET (else unchanged)."""
    import onnx.version_converter
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= MIN_OPSET:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError subclasses
        raise ModelError(f"cannot convert graph {model.graph.name!r} from opset {current} to {target}: {exc}",
                         reason="model_format") from exc
    if upgraded.ir_version < 7:
        upgraded.ir_version = 7
    return upgraded


def fold_constant_reshapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every Reshape of an initializer by a constant shape is an initializer itself.

    EfficientNet-Lite0's ``cams`` Conv reads the classifier weight through such a Reshape (one
    copy shared with the Gemm); the quantizer would give the shared weight the Gemm's
    per-channel axis, which the Conv cannot use. Folded, each node gets its own weight.
    """
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Reshape" and len(node.input) == 2 and all(i in inits for i in node.input):
            data, shape = (numpy_helper.to_array(inits[i]) for i in node.input)
            g.initializer.append(numpy_helper.from_array(data.reshape(shape.astype(np.int64)), node.output[0]))
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    alive = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(alive)
    return out


def round_range(x: float, bits: int = RANGE_BITS) -> float:
    """``x`` rounded away from zero to ``bits`` significant bits (0 stays 0)."""
    if x == 0.0 or not math.isfinite(x):
        return x
    exp = math.floor(math.log2(abs(x))) - bits + 1
    q = math.ceil(abs(x) / 2.0**exp) * 2.0**exp
    return math.copysign(q, x)


def quantizer_supported() -> bool:
    """Whether the installed onnxruntime can quantize with pre-computed (rounded) ranges."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


class _Frames:
    """CalibrationDataReader over preprocessed single-image batches."""

    def __init__(self, input_name: str, batch: np.ndarray) -> None:
        self._items = iter([{input_name: batch[i : i + 1]} for i in range(batch.shape[0])])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_int8(
    card: ModelCard,
    model: onnx.ModelProto,
    frames: Sequence[np.ndarray],
    *,
    exclude_nodes: Sequence[str] = (),
    log: Callable[[str], None] = lambda _m: None,
) -> onnx.ModelProto:
    """Static INT8 QDQ quantization of a prepared FP32 model.

    Args:
        card: the FP32 model's card (pre-processing and the input name).
        model: the prepared FP32 model (any opset; upgraded to 17 when below 13).
        frames: RGB uint8 calibration images, any sizes.
        exclude_nodes: node names kept in float (for instance the class-map head).

    Returns:
        The QDQ model: float32 input and outputs as the FP32 model's.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, create_calibrator, save_tensors_data

    if not frames:
        raise ModelError("INT8 calibration needs at least one image", reason="bad_config")
    if not quantizer_supported():
        raise ModelError("this onnxruntime's quantize_static has no calibration_cache_path (added April 2026, "
                         "microsoft/onnxruntime#28221; 1.32 has it): upgrade onnxruntime for INT8",
                         reason="model_format")
    model = fold_constant_reshapes(upgrade_opset(model))
    batch = prepare_batch(card, list(frames))
    ort_log = logging.getLogger()  # onnxruntime.quantization logs to the root logger
    level = ort_log.level
    with tempfile.TemporaryDirectory(prefix="livemod-int8-") as tmp:
        src, cache, dst = Path(tmp, "fp32.onnx"), Path(tmp, "ranges.json"), Path(tmp, "int8.onnx")
        onnx.save_model(model, str(src))
        calibrator = create_calibrator(src, augmented_model_path=str(Path(tmp, "augmented.onnx")),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(_Frames(card.input, batch))
        ranges = calibrator.compute_data()
        del calibrator
        rounded = {
            name: TensorData(lowest=np.array(round_range(float(np.asarray(t.range_value[0]).min())), np.float32),
                             highest=np.array(round_range(float(np.asarray(t.range_value[1]).max())), np.float32))
            for name, t in sorted(ranges.items())
        }
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, rounded), cache)
        log(f"  calibrated {len(rounded)} tensors on {batch.shape[0]} frames")
        try:
            ort_log.setLevel(logging.ERROR)
            quantize_static(
                src, dst, None,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude_nodes),
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=cache,
            )
        finally:
            ort_log.setLevel(level)
        out = onnx.load(str(dst))
    del out.metadata_props[:]
    out.graph.name = f"{model.graph.name}_int8"
    return out


# ---- the check against FP32 -------------------------------------------------------------------


DECISIVE_MARGIN = 0.1
"""A frame is decisive when FP32's top class leads the second by at least this much probability."""


@dataclass(frozen=True)
class Int8Report:
    """INT8 against FP32 on the same frames, both on ONNX Runtime CPU.

    Attributes:
        n: frames compared.
        same_top: share of frames whose top class is the same.
        max_prob_diff: max over frames and classes of |p_int8 - p_fp32|.
        cam_corr_mean, cam_corr_min: Pearson correlation of FP32's top class map (h x w)
            between the two models, mean and worst over frames.
        n_decisive, same_top_decisive: the same-top share over the frames where FP32's top
            class leads by DECISIVE_MARGIN (shown for context; ``ok`` counts every frame).
        changed: labels of the frames whose top class changed.
    """

    n: int
    same_top: float
    max_prob_diff: float
    cam_corr_mean: float
    cam_corr_min: float
    n_decisive: int
    same_top_decisive: float
    changed: tuple[str, ...] = ()

    def ok(self) -> bool:
        """The accuracy check that ``precision: auto`` relies on."""
        return self.n > 0 and self.same_top >= MIN_SAME_TOP and self.cam_corr_mean >= MIN_CAM_CORRELATION

    def brief(self) -> str:
        return (f"same top class on {self.same_top:.0%} of {self.n} frames, "
                f"max prob diff {self.max_prob_diff:.3f}, CAM r {self.cam_corr_mean:.3f}")

    def summary(self) -> str:
        verdict = "ok" if self.ok() else (f"FAILS the check (needs >= {MIN_SAME_TOP:.0%} same top class "
                                          f"and CAM r >= {MIN_CAM_CORRELATION})")
        return (f"{self.n} frames: same top class {self.same_top:.1%} ({self.same_top_decisive:.0%} of the "
                f"{self.n_decisive} where FP32 leads by >= {DECISIVE_MARGIN}), max |p_int8 - p_fp32| "
                f"{self.max_prob_diff:.3f}, CAM correlation mean {self.cam_corr_mean:.3f} "
                f"(min {self.cam_corr_min:.3f}) -> {verdict}")

    def to_json(self, sha256: str) -> str:
        return json.dumps({"sha256": sha256, "ok": self.ok(), **asdict(self)}, indent=1) + "\n"


def check_path(model_path: Path) -> Path:
    """Where `models prepare` records the accuracy check of an INT8 file: ``<file>.check.json``."""
    return model_path.with_name(model_path.name + ".check.json")


def read_check(model_path: Path) -> Int8Report | None:
    """The recorded check of ``model_path``, or None when it is missing, unreadable or for other bytes."""
    try:
        data = json.loads(check_path(model_path).read_text())
        if data.pop("sha256") != sha256_file(model_path):
            return None
        data.pop("ok", None)
        data["changed"] = tuple(data.get("changed", ()))
        return Int8Report(**data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel().astype(np.float64) - a.mean()
    b = b.ravel().astype(np.float64) - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 0 else (1.0 if np.allclose(a, b) else 0.0)


def check_int8(
    card: ModelCard, fp32_path: Path, int8_path: Path, frames: Sequence[tuple[str, np.ndarray]]
) -> Int8Report:
    """Compare an INT8 model with its FP32 original on ``frames`` (label, RGB uint8), one thread each."""
    if not frames:
        raise ModelError("the INT8 check needs at least one frame", reason="bad_config")
    batch = prepare_batch(card, [f for _, f in frames])
    a = OrtClassifier(card, fp32_path, threads=1).infer(batch)
    b = OrtClassifier(card, int8_path, threads=1).infer(batch)
    top_a, top_b = a.probs.argmax(1), b.probs.argmax(1)
    rows = np.arange(len(frames))
    two = np.sort(a.probs, axis=1)[:, -2:]
    decisive = (two[:, 1] - two[:, 0]) >= DECISIVE_MARGIN
    corr = [_pearson(a.cams[i, top_a[i]], b.cams[i, top_a[i]]) for i in rows]
    return Int8Report(
        n=len(frames),
        same_top=float((top_a == top_b).mean()),
        max_prob_diff=float(np.abs(a.probs - b.probs).max()),
        cam_corr_mean=float(np.mean(corr)),
        cam_corr_min=float(np.min(corr)),
        n_decisive=int(decisive.sum()),
        same_top_decisive=float((top_a == top_b)[decisive].mean()) if decisive.any() else 1.0,
        changed=tuple(frames[i][0] for i in rows if top_a[i] != top_b[i]),
    )
