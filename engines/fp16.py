"""`livemod models fp16`: an FP16 copy of a model with NVIDIA ModelOpt AutoCast, checked against FP32.

TensorRT 11 has no FP16 builder flag: precision lives in the ONNX. AutoCast converts the graph
to mixed FP16/FP32 (it keeps sensitive nodes in FP32) while keeping float32 inputs and outputs
(``--keep_io_types``), so both backends and the CAM contract stay as they are. ModelOpt is an
optional extra (``fp16``); it runs in a child process, so its imports never enter the service.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from livemod.core.errors import ConfigError, ModelError
from livemod.engines.card import ModelCard, load_cards, sha256_file
from livemod.engines.ort import OrtClassifier
from livemod.engines.preprocess import prepare_batch

TOLERANCE = 1e-2
"""Largest accepted |p16 - p32| (the gpu lane uses the same bound for TensorRT FP16)."""


@dataclass(frozen=True)
class Fp16Report:
    """FP16 against FP32 on the same images, both on ONNX Runtime.

    Attributes:
        n: images compared.
        max_prob_diff: max over images and classes of |p16 - p32|.
        same_top_class_fraction: share of images whose top class is the same.
        max_cam_diff: max |cam16 - cam32| relative to max |cam32|.
    """

    n: int
    max_prob_diff: float
    same_top_class_fraction: float
    max_cam_diff: float

    def ok(self, tolerance: float = TOLERANCE) -> bool:
        """Probabilities within ``tolerance`` and the same top class on every image."""
        return self.max_prob_diff <= tolerance and self.same_top_class_fraction == 1.0


def fp16_path(card: ModelCard, cache_dir: Path, out_name: str | None = None) -> Path:
    """``<cache_dir>/<model stem>-fp16.onnx`` unless ``out_name`` is given."""
    return Path(cache_dir) / (out_name or Path(card.file).stem + "-fp16.onnx")


def autocast_command(src: Path, dst: Path) -> list[str]:
    """The ModelOpt AutoCast command line (run with this interpreter)."""
    return [sys.executable, "-m", "modelopt.onnx.autocast", "--onnx_path", str(src), "--output_path", str(dst),
            "--low_precision_type", "fp16", "--keep_io_types"]


def convert_fp16(card: ModelCard, cache_dir: Path, *, out_name: str | None = None, timeout_s: float = 3600) -> Path:
    """Run ModelOpt AutoCast on the card's prepared ONNX.

    Args:
        card: the model card; its file must be prepared in ``cache_dir`` (sha256 checked).
        cache_dir: the model cache folder; the FP16 file is written there.
        out_name: file name of the FP16 model (``<stem>-fp16.onnx`` by default).
        timeout_s: give up on AutoCast after this long.

    Returns:
        The FP16 ONNX file (float32 inputs and outputs).

    Raises:
        ConfigError: ModelOpt is not installed (``pip install 'livemod[fp16]'``).
        ModelError: the model file is missing or wrong, or AutoCast failed.
    """
    if importlib.util.find_spec("modelopt") is None:
        raise ConfigError("NVIDIA ModelOpt is not installed: pip install 'livemod[fp16]' (FP16 conversion only)")
    src = card.verify_file(cache_dir)
    dst = fp16_path(card, cache_dir, out_name)
    try:
        proc = subprocess.run(autocast_command(src, dst), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ModelError(f"AutoCast did not finish in {timeout_s:.0f} s", reason="fp16_convert") from exc
    if proc.returncode != 0 or not dst.is_file():
        raise ModelError(f"AutoCast failed (exit {proc.returncode}): {proc.stderr[-2000:]}", reason="fp16_convert")
    return dst


def check_fp16(card: ModelCard, fp32_path: Path, fp16_path: Path, images: Sequence[np.ndarray]) -> Fp16Report:
    """Compare probabilities, top classes and class maps of two models on the same RGB images.

    Args:
        card: how to preprocess and which tensors to read (both models share it).
        fp32_path, fp16_path: the two ONNX files.
        images: RGB uint8 (H, W, 3) images, any sizes.
    """
    if not images:
        raise ConfigError("check_fp16 needs at least one image")
    batch = prepare_batch(card, list(images))
    a = OrtClassifier(card, fp32_path, threads=1).infer(batch)
    b = OrtClassifier(card, fp16_path, threads=1).infer(batch)
    return Fp16Report(
        n=len(images),
        max_prob_diff=float(np.abs(a.probs - b.probs).max()),
        same_top_class_fraction=float((a.probs.argmax(1) == b.probs.argmax(1)).mean()),
        max_cam_diff=float(np.abs(a.cams - b.cams).max() / max(float(np.abs(a.cams).max()), 1e-6)),
    )


def fp16_card(card: ModelCard, fp16_file: Path) -> ModelCard:
    """The card for the FP16 copy: same name (policies keep working), its own file, sha256 and version.

    The FP32 card's INT8 copy does not carry over: on a CPU it would be chosen over the FP16 file.
    """
    return card.model_copy(update={"file": fp16_file.name, "sha256": sha256_file(fp16_file),
                                   "version": f"{card.version}+fp16", "int8": None})


def write_card(card: ModelCard, path: Path) -> Path:
    """Write a model card as YAML (loadable with ``load_card``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False))
    return path


def sample_images() -> list[np.ndarray]:
    """Real photos from scikit-image (the ``demo`` extra), else fixed random images."""
    try:
        import skimage.data as d
    except ImportError:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 255, (300, 400, 3), dtype=np.uint8) for _ in range(8)]
    return [d.astronaut(), d.coffee(), d.chelsea(), d.rocket(), np.repeat(d.camera()[..., None], 3, axis=2)]


def fp16_command(card_name: str, cache_dir: Path) -> str:
    """Convert one shipped model card's model to FP16, check it, write its card; returns a printable report.

    Raises:
        ConfigError: no such card, or ModelOpt missing.
        ModelError: the conversion failed.
    """
    cards = load_cards()
    if card_name not in cards:
        raise ConfigError(f"no model card {card_name!r} (have {sorted(cards)})")
    card = cards[card_name]
    dst = convert_fp16(card, cache_dir)
    report = check_fp16(card, card.path(cache_dir), dst, sample_images())
    card_path = write_card(fp16_card(card, dst), Path(cache_dir) / "cards-fp16" / f"{card.name}.yaml")
    verdict = "OK" if report.ok() else f"CHECK: |p16 - p32| above {TOLERANCE:g} or a changed top class"
    return "\n".join([
        f"FP16 model: {dst}",
        f"{report.n} images: max |p16 - p32| = {report.max_prob_diff:.2e}, same top class "
        f"{report.same_top_class_fraction:.0%}, max relative CAM difference {report.max_cam_diff:.2e} -> {verdict}",
        f"card: {card_path} (inputs and outputs stay float32; copy it into the folder named by "
        "LIVEMOD_ENGINES__CARDS_DIR, beside the other cards, to run the FP16 model)",
    ])
