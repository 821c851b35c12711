"""`livemod models fp16`: an FP16 copy of a model with NVIDIA ModelOpt AutoCast, checked against FP32.

TensorRT 11 has no FP16 builder flag: precision lives in the ONNX. AutoCast converts the
graph to FP16 while keeping float32 inputs and outputs (``--keep_io_types``), so the
backends and the CAM contract are unchanged. ModelOpt is an optional extra (``fp16``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from livemod.decoders.errors import ConfigError, ModelError
from livemod.engines.card import ModelCard, load_cards
from livemod.engines.ort import OrtClassifier
from livemod.engines.preprocess import prepare_batch


@dataclass(frozen=True)
class Fp16Report:
    """FP16 against FP32 on the same images (ONNX Runtime)."""

    n: int
    max_prob_diff: float
    same_top_class: float
    max_cam_diff: float

    def ok(self, tolerance: float = 1e-2) -> bool:
        return self.max_prob_diff <= tolerance and self.same_top_class == 1.0


def fp16_path(card: ModelCard, cache_dir: Path) -> Path:
    return Path(cache_dir) / (Path(card.file).stem + "-fp16.onnx")


def convert_fp16(card: ModelCard, cache_dir: Path) -> Path:
    """Run ModelOpt AutoCast on the card's prepared ONNX; returns the FP16 file."""
    if importlib.util.find_spec("modelopt") is None:
        raise ConfigError("NVIDIA ModelOpt is not installed: pip install 'livemod[fp16]'")
    src = card.verify_file(cache_dir)
    dst = fp16_path(card, cache_dir)
    cmd = [sys.executable, "-m", "modelopt.onnx.autocast", "--onnx_path", str(src), "--output_path", str(dst),
           "--low_precision_type", "fp16", "--keep_io_types"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not dst.is_file():
        raise ModelError(f"AutoCast failed ({proc.returncode}): {proc.stderr[-2000:]}", reason="fp16_convert")
    return dst


def check_fp16(card: ModelCard, fp32: Path, fp16: Path, images: Sequence[np.ndarray]) -> Fp16Report:
    """Compare probabilities, top classes and class maps of the two models on RGB images."""
    batch = prepare_batch(card, list(images))
    a = OrtClassifier(card, fp32, threads=1).infer(batch)
    b = OrtClassifier(card, fp16, threads=1).infer(batch)
    return Fp16Report(
        n=len(images),
        max_prob_diff=float(np.abs(a.probs - b.probs).max()),
        same_top_class=float((a.probs.argmax(1) == b.probs.argmax(1)).mean()),
        max_cam_diff=float(np.abs(a.cams - b.cams).max() / max(float(np.abs(a.cams).max()), 1e-6)),
    )


def sample_images() -> list[np.ndarray]:
    """Real photos from scikit-image (if installed), else fixed random images."""
    try:
        import skimage.data as d

        return [d.astronaut(), d.coffee(), d.chelsea(), d.rocket()]
    except ImportError:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 255, (300, 400, 3), dtype=np.uint8) for _ in range(4)]


def fp16_command(name: str, cache_dir: Path) -> str:
    """Convert one shipped or configured model and return a printable report."""
    cards = load_cards()
    if name not in cards:
        raise ConfigError(f"no model card {name!r} (have {sorted(cards)})")
    card = cards[name]
    dst = convert_fp16(card, cache_dir)
    report = check_fp16(card, card.path(cache_dir), dst, sample_images())
    verdict = "OK" if report.ok() else "CHECK: differences above 1e-2 or a changed top class"
    return (f"{dst}\n{report.n} images: max |p16 - p32| = {report.max_prob_diff:.2e}, "
            f"same top class {report.same_top_class:.0%}, max relative CAM difference {report.max_cam_diff:.2e} -> {verdict}\n"
            f"use it with a card whose `file` is {dst.name} (inputs and outputs stay float32)")
