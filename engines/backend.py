"""Pick and load a backend for a model card: TensorRT on a GPU, ONNX Runtime otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from livemod.core.errors import ConfigError
from livemod.engines.card import ModelCard
from livemod.engines.ort import OrtClassifier
from livemod.engines.types import Classifier

log = logging.getLogger(__name__)

EngineName = Literal["auto", "tensorrt", "onnxruntime"]


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
) -> Classifier:
    """Load one model card on the chosen backend (the ONNX file is checked against its sha256)."""
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
