"""Batched scoring of sampled frames with the Grad-CAM small-object re-check (the YY Inc. method)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from livemod.core.types import SampledFrame
from livemod.engines.card import ModelCard
from livemod.engines.cam import expand_box, hot_boxes, input_to_frame, tile_boxes
from livemod.engines.preprocess import prepare_batch
from livemod.engines.types import Box, Classifier, FrameScores, Outputs, Recheck


@dataclass(frozen=True)
class RecheckSpec:
    """How to re-check one watched label.

    Attributes:
        band: (lo, hi) whole-frame probability that triggers the re-check; lo <= p < hi.
        max_boxes: K boxes around the hottest CAM regions.
        expand: box enlargement factor (1.5).
        cam_threshold: fraction of the map's max a region must reach.
        tiles: grid for the tile pass (0 disables); run when the boxes leave the score below hi.
    """

    band: tuple[float, float] = (0.02, 0.5)
    max_boxes: int = 2
    expand: float = 1.5
    cam_threshold: float = 0.8
    tiles: int = 0


@dataclass(frozen=True)
class Watch:
    """A label (or group) of one model that a policy watches, with its optional re-check."""

    label: str
    recheck: RecheckSpec | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """One frame and what to look for in it: model name -> watched labels."""

    frame: SampledFrame
    watches: Mapping[str, Sequence[Watch]]


def _label_prob(card: ModelCard, probs: np.ndarray, label: str) -> float:
    return float(probs[list(card.label_indices(label))].sum())


def _label_cam(card: ModelCard, cams: np.ndarray, label: str) -> np.ndarray:
    return cams[list(card.label_indices(label))].sum(axis=0).astype(np.float32)


def _top(card: ModelCard, probs: np.ndarray, k: int = 5) -> tuple[tuple[str, float], ...]:
    idx = np.argsort(-probs)[:k]
    return tuple((card.labels[i], round(float(probs[i]), 4)) for i in idx)


def crop(full: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return full[y0:y1, x0:x1]


class Scorer:
    """Scores frames from any number of streams in batches, one batch per model.

    Args:
        classifiers: model name -> backend (ONNX Runtime or TensorRT).
        on_batch: called with (model name, batch size) after each engine call, for metrics.
    """

    def __init__(self, classifiers: Mapping[str, Classifier], on_batch: Callable[[str, int, str], None] | None = None):
        self.classifiers = dict(classifiers)
        self.on_batch = on_batch

    def _run(self, model: str, images: Sequence[np.ndarray], stage: str) -> Outputs:
        clf = self.classifiers[model]
        out = clf.infer(prepare_batch(clf.card, images))
        if self.on_batch:
            self.on_batch(model, len(images), stage)
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> list[dict[str, FrameScores]]:
        """Classify every frame with every model it asks for, then re-check the suspicious ones.

        Per model: one batch of whole frames (the decoder's FFmpeg-scaled working images),
        then one batch of all box crops from every suspicious frame, then (where a box pass
        stayed below the band's top and tiles are on) one batch of tiles. Only frames that
        are re-checked are converted to full resolution.

        Returns:
            For each request, model name -> FrameScores, in request order.
        """
        results: list[dict[str, FrameScores]] = [{} for _ in requests]
        models = sorted({m for r in requests for m in r.watches})
        full_cache: dict[int, np.ndarray] = {}

        def full(i: int) -> np.ndarray:
            if i not in full_cache:
                full_cache[i] = requests[i].frame.full_rgb()
            return full_cache[i]

        for model in models:
            card = self.classifiers[model].card
            idx = [i for i, r in enumerate(requests) if model in r.watches]
            images = [requests[i].frame.images[card.working_size] for i in idx]
            whole = self._run(model, images, "frame")

            # Pass 1: CAM boxes of every suspicious (frame, label).
            pending: list[tuple[int, int, str, RecheckSpec, float]] = []  # (req, row, label, spec, before)
            crops: list[tuple[int, str, Box, str]] = []  # (pending idx, label, box, method)
            for row, i in enumerate(idx):
                fr = requests[i].frame
                for watch in requests[i].watches[model]:
                    spec = watch.recheck
                    before = _label_prob(card, whole.probs[row], watch.label)
                    if spec is None or not (spec.band[0] <= before < spec.band[1]):
                        continue
                    cam = _label_cam(card, whole.cams[row], watch.label)
                    pending.append((i, row, watch.label, spec, before))
                    for nb in hot_boxes(cam, threshold=spec.cam_threshold, max_boxes=spec.max_boxes):
                        fbox = input_to_frame(card, nb, fr.width, fr.height)
                        crops.append((len(pending) - 1, watch.label, expand_box(fbox, spec.expand, fr.width, fr.height), "cam_box"))
            best: dict[int, tuple[float, Box, str]] = {}
            counts: dict[int, int] = {}
            self._recheck_pass(model, card, pending, crops, full, best, counts)
            # Pass 2: tiles where the boxes did not settle it.
            tiles: list[tuple[int, str, Box, str]] = []
            for p, (i, _row, label, spec, before) in enumerate(pending):
                if spec.tiles and max(before, best[p][0] if p in best else 0.0) < spec.band[1]:
                    fr = requests[i].frame
                    tiles += [(p, label, b, "tile") for b in tile_boxes(fr.width, fr.height, spec.tiles)]
            self._recheck_pass(model, card, pending, tiles, full, best, counts)

            for row, i in enumerate(idx):
                labels = [w.label for w in requests[i].watches[model]]
                rechecks: dict[str, Recheck] = {}
                for p, (pi, _r, label, _spec, before) in enumerate(pending):
                    if pi == i and p in best:
                        after, box, method = best[p]
                        rechecks[label] = Recheck(label, round(before, 6), round(after, 6), box, method, counts[p])
                results[i][model] = FrameScores(
                    model=model,
                    version=card.version,
                    scores={lb: _label_prob(card, whole.probs[row], lb) for lb in labels},
                    cams={lb: _label_cam(card, whole.cams[row], lb) for lb in labels},
                    rechecks=rechecks,
                    top=_top(card, whole.probs[row]),
                )
        return results

    def _recheck_pass(
        self,
        model: str,
        card: ModelCard,
        pending: list[tuple[int, int, str, RecheckSpec, float]],
        crops: list[tuple[int, str, Box, str]],
        full: Callable[[int], np.ndarray],
        best: dict[int, tuple[float, Box, str]],
        counts: dict[int, int],
    ) -> None:
        """Classify all crops of one pass as one batch; keep the best crop per (frame, label)."""
        if not crops:
            return
        images = [crop(full(pending[p][0]), box) for p, _label, box, _m in crops]
        out = self._run(model, images, "recheck")
        for (p, label, box, method), probs in zip(crops, out.probs):
            counts[p] = counts.get(p, 0) + 1
            score = _label_prob(card, probs, label)
            if p not in best or score > best[p][0]:
                best[p] = (score, box, method)
