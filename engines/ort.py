"""ONNX Runtime backend: batched, dynamic batch size, CPU by default."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from livemod.core.errors import InferenceError, ModelError
from livemod.engines.card import ModelCard
from livemod.engines.types import Outputs

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, float32."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z, dtype=np.float32)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class OrtClassifier:
    """Runs one model card with ONNX Runtime.

    Args:
        card: the model card (input/output names, layout).
        model_path: the CAM-augmented ONNX file.
        threads: intra-op threads (0 lets ONNX Runtime choose).
        max_batch: the largest batch ``infer`` accepts; bigger batches are split.
        providers: ONNX Runtime execution providers, CPU by default.
    """

    backend: Literal["onnxruntime"] = "onnxruntime"

    def __init__(
        self,
        card: ModelCard,
        model_path: Path,
        *,
        threads: int = 0,
        max_batch: int = 16,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
    ) -> None:
        self.card = card
        self.max_batch = max_batch
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=opts, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise ModelError(f"ONNX Runtime cannot load {model_path}: {exc}", reason="model_load") from exc
        names_in = [i.name for i in self._session.get_inputs()]
        names_out = [o.name for o in self._session.get_outputs()]
        if card.input not in names_in:
            raise ModelError(f"{model_path} has inputs {names_in}, card {card.name} names {card.input!r}")
        missing = {card.logits, card.cams} - set(names_out)
        if missing:
            raise ModelError(
                f"{model_path} lacks outputs {sorted(missing)} (has {names_out}); "
                "prepare it with `livemod models prepare` so it carries the cams output"
            )

    def infer(self, batch: np.ndarray) -> Outputs:
        """Run a preprocessed float32 batch (any N >= 1) and return logits, probs and cams."""
        if batch.ndim != 4 or batch.dtype != np.float32:
            raise InferenceError(f"expected a float32 (N, ...) 4-D batch, got {batch.dtype} {batch.shape}")
        logits_parts, cams_parts = [], []
        for start in range(0, batch.shape[0], self.max_batch):
            chunk = batch[start : start + self.max_batch]
            try:
                logits, cams = self._session.run([self.card.logits, self.card.cams], {self.card.input: chunk})
            except Exception as exc:
                raise InferenceError(f"{self.card.name}: ONNX Runtime failed on {chunk.shape}: {exc}") from exc
            logits_parts.append(logits)
            cams_parts.append(cams)
        logits = np.concatenate(logits_parts).astype(np.float32, copy=False)
        cams = np.concatenate(cams_parts).astype(np.float32, copy=False)
        return Outputs(logits=logits, probs=softmax(logits), cams=cams)
