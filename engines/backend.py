"""Pick and load a backend for a model card: TensorRT on a GPU, ONNX Runtime otherwise; FP32 or INT8."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from livemod.core.errors import ConfigError, ModelError
from livemod.engines.card import ModelCard
from livemod.engines.ort import OrtClassifier
from livemod.engines.types import Classifier

log = logging.getLogger(__name__)

EngineName = Literal["auto", "tensorrt", "onnxruntime"]
Precision = Literal["auto", "fp32", "int8"]


@dataclass(frozen=True)
class BackendChoice:
    """The backend in use and why (logged at start, exported as a metric label)."""

    backend: Literal["tensorrt", "onnxruntime"]
    reason: str


def choose(requested: EngineName) -> BackendChoice:
    """Resolve ``auto``: TensorRT only when it imports and a GPU answers, probed before any Runtime."""
    if requested == "onnxruntime":
        return BackendChoice("onnxruntime", "requested in settings")
    from livemod.engines.gpu import choose_backend

    backend, reason = choose_backend(requested)
    if requested == "tensorrt" and backend != "tensorrt":
        raise ConfigError(f"engine=tensorrt was requested but cannot run here: {reason}")
    return BackendChoice(backend, reason)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision one model runs at, and why (logged at load, printed by check-config)."""

    precision: Literal["fp32", "int8"]
    reason: str


def choose_precision(
    card: ModelCard, cache_dir: Path, backend: Literal["tensorrt", "onnxruntime"], requested: Precision = "auto"
) -> PrecisionChoice:
    """Resolve ``precision`` for one model card on one backend.

    ``auto``: INT8 on ONNX Runtime when the card has an INT8 variant, its file is prepared and
    the accuracy check that ``models prepare`` recorded for that very file holds; FP32 otherwise
    and always on TensorRT. ``int8`` insists (the check is not consulted); ``fp32`` never uses INT8.

    Raises:
        ConfigError: ``int8`` on TensorRT (the variant's uint8 activations are asymmetric; TensorRT
            takes symmetric int8 Q/DQ) or on a card without an INT8 variant.
    """
    if requested == "fp32":
        return PrecisionChoice("fp32", "requested in settings")
    if backend == "tensorrt":
        if requested == "int8":
            raise ConfigError("precision=int8 is for ONNX Runtime on the CPU (asymmetric uint8 activations); "
                              "TensorRT runs the FP32 model: set precision to auto or fp32")
        return PrecisionChoice("fp32", "TensorRT runs the FP32 model")
    if card.int8 is None:
        if requested == "int8":
            raise ConfigError(f"precision=int8, but model card {card.name!r} has no int8 variant")
        return PrecisionChoice("fp32", "the card has no INT8 variant")
    if requested == "int8":
        return PrecisionChoice("int8", "requested in settings")
    from livemod.engines.quantize import read_check

    int8 = card.at_int8()
    try:
        path = int8.verify_file(cache_dir)
    except ModelError as exc:
        return PrecisionChoice("fp32", f"INT8 model not usable ({exc.reason}): run `livemod models prepare`")
    report = read_check(path)
    if report is None:
        return PrecisionChoice("fp32", "INT8 model has no accuracy check for its file: run `livemod models prepare`")
    if not report.ok():
        return PrecisionChoice("fp32", f"INT8 accuracy check fails: {report.brief()}")
    return PrecisionChoice("int8", f"INT8 accuracy check holds: {report.brief()}")


def describe_precision(cards: Mapping[str, ModelCard], cache_dir: Path, requested: Precision = "auto") -> str:
    """One line for `livemod check-config`: what each model runs at on ONNX Runtime (CPU)."""
    parts = []
    for name in sorted(cards):
        try:
            c = choose_precision(cards[name], cache_dir, "onnxruntime", requested)
        except ConfigError as exc:
            parts.append(f"{name} ERROR ({exc})")
        else:
            parts.append(f"{name} {c.precision.upper()} ({c.reason})")
    trt = "TensorRT refuses int8" if requested == "int8" else "TensorRT runs FP32"
    return f"CPU precision (precision={requested}; {trt}): {'; '.join(parts)}"


def load_classifier(
    card: ModelCard,
    cache_dir: Path,
    choice: BackendChoice,
    *,
    threads: int = 0,
    max_batch: int = 16,
    opt_batch: int = 8,
    workspace_mb: int = 1024,
    engine_cache_dir: Path | None = None,
    precision: Precision = "auto",
) -> Classifier:
    """Load one model card on the chosen backend (the ONNX file is checked against its sha256).

    ``precision`` picks FP32 or the card's INT8 variant (see ``choose_precision``); the returned
    classifier's card is the variant's (same name, its own version), so scores say which ran.
    """
    prec = choose_precision(card, cache_dir, choice.backend, precision)
    log.info("%s: %s on %s (%s)", card.name, prec.precision.upper(), choice.backend, prec.reason)
    if prec.precision == "int8":
        card = card.at_int8()
    path = card.verify_file(cache_dir)
    if choice.backend == "tensorrt":
        from livemod.engines.trt import TrtClassifier

        return TrtClassifier(
            card,
            path,
            cache_dir=engine_cache_dir or Path(cache_dir) / "engines",
            max_batch=max_batch,
            opt_batch=opt_batch,
            workspace_bytes=workspace_mb << 20,
        )
    return OrtClassifier(card, path, threads=threads, max_batch=max_batch)
