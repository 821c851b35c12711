"""Batched scoring of sampled frames with the Grad-CAM small-object re-check (the YY Inc. method),
per-cell hot spots below the band, and a budgeted sweep of square tiles for objects down to about
1.5% of the frame in any frame shape."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import numpy as np

from livemod.core.types import SampledFrame
from livemod.engines.card import ModelCard
from livemod.engines.cam import (
    cell_probs,
    expand_box,
    hot_boxes,
    input_to_frame,
    peaks,
    square_box,
    square_tiles,
    sweep_side,
    tile_boxes,
)
from livemod.engines.preprocess import prepare_batch
from livemod.engines.types import Box, Classifier, FrameScores, Outputs, Recheck

Method = Literal["cam_box", "tile", "spot", "sweep"]
CONFIRMED: tuple[Method, ...] = ("cam_box", "tile")
"""The methods whose high crops ``RecheckSpec.confirm`` checks again."""

SWEEP_CROPS = (1.5, 2.5)
"""Sides of the square crops around a sweep tile's hot cell, in cells of that tile; the larger
grows to 1.25 x the hot region's extent when that is bigger (an object larger than the sweep's
``sweep_share``)."""


@dataclass(frozen=True)
class RecheckSpec:
    """How to re-check one watched label.

    Attributes:
        band: (lo, hi) whole-frame probability that triggers the re-check; lo <= p < hi.
        max_boxes: K boxes around the hottest CAM regions (also the most hot spots and sweep
            crops per frame).
        expand: box enlargement factor (1.5).
        cam_threshold: fraction of the map's max a region must reach.
        tiles: grid for the tile pass (0 disables); run when the boxes leave the score below hi.
        spot_threshold: below the band, a cell of the whole frame whose own probability of the
            label (``cam.cell_probs``) reaches this is cropped and classified; 0 disables. Paid
            from the stream's budget (see ``Scorer``).
        sweep_share: the smallest object, as a share of the frame's area, that the budgeted
            sweep looks for; it sets the size of the sweep's square tiles. 0 disables the sweep.
        sweep_peak: a sweep tile's cell must reach this probability of the label before a crop
            is taken around it.
        confirm: a band re-check crop (CAM box or tile) that scores ``confirm_above`` or more is
            classified again in a crop ``confirm`` times its size around the same centre (0.67:
            tighter, on the hot region itself), and counts with the lower of the two scores: an
            object stays what it is in a closer view, while what the box's mix of context made
            look like the label (a helmet's rim read as a cup of coffee) does not. Hot-spot and
            sweep crops are already tight around a cell and are not confirmed (measured: a
            tighter crop cuts objects of 1.5% of the frame). 0 disables.
        confirm_above: the crop score from which ``confirm`` applies.
    """

    band: tuple[float, float] = (0.02, 0.5)
    max_boxes: int = 2
    expand: float = 1.5
    cam_threshold: float = 0.8
    tiles: int = 0
    spot_threshold: float = 0.0
    sweep_share: float = 0.0
    sweep_peak: float = 0.02
    confirm: float = 0.0
    confirm_above: float = 0.5


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


@dataclass
class _Budget:
    """One stream's credit for speculative work on one model, in images of the network input."""

    credit: float = 0.0
    new: bool = True


@dataclass
class _Case:
    """One (frame, watched label) that got any re-check: the best crop so far."""

    req: int
    row: int
    label: str
    spec: RecheckSpec
    before: float
    best: tuple[float, Box, Method] | None = None
    crops: int = 0

    def offer(self, score: float, box: Box, method: Method) -> None:
        self.crops += 1
        if self.best is None or score > self.best[0]:
            self.best = (score, box, method)

    @property
    def score(self) -> float:
        return max(self.before, self.best[0] if self.best else 0.0)


Crop = tuple[_Case, Box, Method]


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
    """Scores frames from any number of streams in batches, one batch per model and pass.

    Speculative work (hot spots below the band and the sweep) is paid from a per-stream,
    per-model credit: each whole-frame image a stream has scored earns ``budget`` images; every
    extra image for that stream (band re-check crops included) is debited. A sweep runs when the
    credit covers its tiles; a stream's first frame and scene changes (``reason == "scene"``) may
    borrow one sweep. So over any run of F frames the extra images are at most ``budget`` x F
    plus one sweep, plus whatever band re-checks (which always run) spend beyond the budget.

    Args:
        classifiers: model name -> backend (ONNX Runtime or TensorRT).
        on_batch: called with (model name, batch size, stage) after each engine call, for
            metrics; stage is "frame", "recheck" (band boxes, tiles and hot spots) or "sweep".
        budget: extra images per whole-frame image that speculative work may spend (0.3 = 30%).
        max_credit: the most credit a quiet stream can save up, in images.
        max_streams: streams whose credit is remembered (least recently seen dropped first).
    """

    def __init__(
        self,
        classifiers: Mapping[str, Classifier],
        on_batch: Callable[[str, int, str], None] | None = None,
        *,
        budget: float = 0.3,
        max_credit: float = 32.0,
        max_streams: int = 10_000,
    ):
        self.classifiers = dict(classifiers)
        self.on_batch = on_batch
        self.budget = budget
        self.max_credit = max_credit
        self.max_streams = max_streams
        self._budgets: OrderedDict[tuple[str, str], _Budget] = OrderedDict()

    def credit(self, stream_id: str, model: str) -> float:
        """The stream's current credit for speculative work on a model, in images (0 if unseen)."""
        b = self._budgets.get((stream_id, model))
        return b.credit if b else 0.0

    def _budget(self, stream_id: str, model: str) -> _Budget:
        key = (stream_id, model)
        b = self._budgets.get(key)
        if b is None:
            b = self._budgets[key] = _Budget()
            while len(self._budgets) > self.max_streams:
                self._budgets.popitem(last=False)
        self._budgets.move_to_end(key)
        return b

    def _run(self, model: str, images: Sequence[np.ndarray], stage: str) -> Outputs:
        clf = self.classifiers[model]
        out = clf.infer(prepare_batch(clf.card, images))
        if self.on_batch:
            self.on_batch(model, len(images), stage)
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> list[dict[str, FrameScores]]:
        """Classify every frame with every model it asks for, then re-check the suspicious ones.

        Per model: one batch of whole frames (the decoder's FFmpeg-scaled working images);
        then one batch of all box crops from every suspicious frame (and hot spots below the
        band where the budget allows); then, where a box pass stayed below the band's top and
        tiles are on, one batch of tiles; then, for frames whose stream can afford it, one batch
        of square sweep tiles and one of crops around their hot cells. Only frames that are
        re-checked are converted to full resolution.

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
            budgets = {i: self._budget(requests[i].frame.stream_id, model) for i in idx}
            for i in idx:
                b = budgets[i]
                b.credit = min(b.credit + self.budget, self.max_credit)
            opening = {i: budgets[i].credit for i in idx}  # before this frame's band re-check is paid

            # Pass 1: CAM boxes of every suspicious (frame, label); hot spots below the band.
            cases: list[_Case] = []
            crops: list[Crop] = []
            for row, i in enumerate(idx):
                fr = requests[i].frame
                for watch in requests[i].watches[model]:
                    spec = watch.recheck
                    if spec is None:
                        continue
                    before = _label_prob(card, whole.probs[row], watch.label)
                    case = _Case(i, row, watch.label, spec, before)
                    cases.append(case)
                    if spec.band[0] <= before < spec.band[1]:
                        cam = _label_cam(card, whole.cams[row], watch.label)
                        boxes = hot_boxes(cam, threshold=spec.cam_threshold, max_boxes=spec.max_boxes)
                        for nb in boxes:
                            fbox = input_to_frame(card, nb, fr.width, fr.height)
                            crops.append((case, expand_box(fbox, spec.expand, fr.width, fr.height), "cam_box"))
                        budgets[i].credit -= len(boxes)  # evidence-driven: always runs, always paid
                    elif spec.spot_threshold > 0 and before < spec.band[0]:
                        spots = self._spots(card, whole, row, fr, spec, watch.label)
                        if spots and budgets[i].credit >= len(spots):  # speculative: only when affordable
                            budgets[i].credit -= len(spots)
                            crops += [(case, box, "spot") for box in spots]
            self._pass(model, card, crops, full, "recheck", budgets)
            # Pass 2: tiles where the boxes did not settle it.
            tiles: list[Crop] = []
            for case in cases:
                spec = case.spec
                in_band = spec.band[0] <= case.before < spec.band[1]
                if in_band and spec.tiles and case.score < spec.band[1]:
                    fr = requests[case.req].frame
                    grid = tile_boxes(fr.width, fr.height, spec.tiles)
                    budgets[case.req].credit -= len(grid)
                    tiles += [(case, b, "tile") for b in grid]
            self._pass(model, card, tiles, full, "recheck", budgets)
            # Pass 3: the budgeted sweep, for frames where nothing reached the band's top yet.
            self._sweep(model, card, requests, cases, full, budgets, opening)

            for row, i in enumerate(idx):
                labels = [w.label for w in requests[i].watches[model]]
                rechecks: dict[str, Recheck] = {}
                for case in cases:
                    if case.req == i and case.best is not None:
                        after, box, method = case.best
                        rechecks[case.label] = Recheck(
                            case.label, round(case.before, 6), round(after, 6), box, method, case.crops
                        )
                results[i][model] = FrameScores(
                    model=model,
                    version=card.version,
                    scores={lb: _label_prob(card, whole.probs[row], lb) for lb in labels},
                    cams={lb: _label_cam(card, whole.cams[row], lb) for lb in labels},
                    rechecks=rechecks,
                    top=_top(card, whole.probs[row]),
                )
            for i in idx:
                budgets[i].new = False
        return results

    @staticmethod
    def _spots(
        card: ModelCard, whole: Outputs, row: int, fr: SampledFrame, spec: RecheckSpec, label: str
    ) -> list[Box]:
        """Square crops around the whole frame's cells whose own probability reaches the threshold."""
        cp = cell_probs(whole.logits[row], whole.cams[row], card.label_indices(label))
        h, w = cp.shape
        out = []
        for _p, cx, cy, _ext in peaks(cp, min_prob=spec.spot_threshold, max_peaks=spec.max_boxes):
            x0, y0, x1, y1 = input_to_frame(card, ((cx - 0.5) / w, (cy - 0.5) / h, (cx + 0.5) / w, (cy + 0.5) / h),
                                            fr.width, fr.height)
            side = 2.0 * max(x1 - x0, y1 - y0)  # two cells: an object that fires a cell is about that big
            out.append(square_box((x0 + x1) / 2, (y0 + y1) / 2, side, fr.width, fr.height))
        return out

    def _sweep(
        self,
        model: str,
        card: ModelCard,
        requests: Sequence[ScoreRequest],
        cases: list[_Case],
        full: Callable[[int], np.ndarray],
        budgets: dict[int, _Budget],
        opening: dict[int, float],
    ) -> None:
        """Square tiles over the frames whose stream can afford them, then crops at their hot cells.

        A frame is swept when its stream's credit covers the tiles, or when it is the stream's
        first frame or a scene change and the credit was not negative before this frame.
        """
        wanting: dict[int, list[_Case]] = {}
        for case in cases:
            if case.spec.sweep_share > 0 and case.score < case.spec.band[1]:
                wanting.setdefault(case.req, []).append(case)
        tiles: list[tuple[int, Box]] = []
        for i, its in wanting.items():
            fr = requests[i].frame
            side = min(sweep_side(fr.width, fr.height, c.spec.sweep_share) for c in its)
            boxes = square_tiles(fr.width, fr.height, side)
            b = budgets[i]
            may_borrow = b.new or fr.reason == "scene"
            if b.credit >= min(len(boxes), self.max_credit) or (may_borrow and opening[i] >= 0):
                b.credit -= len(boxes)
                tiles += [(i, box) for box in boxes]
        if not tiles:
            return
        out = self._run(model, [crop(full(i), box) for i, box in tiles], "sweep")
        # Per case: the tiles' own scores, then the hottest cells over all its frame's tiles.
        found: dict[int, list[tuple[float, float, float, float, float]]] = {}  # case -> (peak, cx, cy, cell, extent)
        own: list[tuple[Crop, float]] = []
        for r, (i, (x0, y0, x1, y1)) in enumerate(tiles):
            for case in wanting[i]:
                own.append(((case, (x0, y0, x1, y1), "sweep"), _label_prob(card, out.probs[r], case.label)))
                cp = cell_probs(out.logits[r], out.cams[r], card.label_indices(case.label))
                cell = (x1 - x0) / cp.shape[1]
                for p, cx, cy, ext in peaks(cp, min_prob=case.spec.sweep_peak, max_peaks=case.spec.max_boxes):
                    found.setdefault(id(case), []).append((p, x0 + cx * cell, y0 + cy * cell, cell, ext))
        crops: list[Crop] = []
        for i, its in wanting.items():
            fr = requests[i].frame
            for case in its:
                kept: list[tuple[float, float, float, float, float]] = []
                for spot in sorted(found.get(id(case), []), reverse=True):
                    # overlapping tiles see one object twice: keep spots a cell or more apart
                    if all(abs(spot[1] - k[1]) >= k[3] or abs(spot[2] - k[2]) >= k[3] for k in kept):
                        kept.append(spot)
                    if len(kept) == case.spec.max_boxes:
                        break
                for _p, cx, cy, cell, ext in kept:
                    sides = (*SWEEP_CROPS[:-1], max(SWEEP_CROPS[-1], 1.25 * ext))
                    crops += [(case, square_box(cx, cy, f * cell, fr.width, fr.height), "sweep") for f in sides]
                    budgets[i].credit -= len(SWEEP_CROPS)
        self._settle(model, card, own, full, "sweep", budgets)
        self._pass(model, card, crops, full, "sweep", budgets)

    def _pass(
        self,
        model: str,
        card: ModelCard,
        crops: list[Crop],
        full: Callable[[int], np.ndarray],
        stage: str,
        budgets: Mapping[int, _Budget],
    ) -> None:
        """Classify all crops of one pass as one batch; keep the best crop per (frame, label).

        The crops were paid for from their streams' credit when they were chosen.
        """
        if not crops:
            return
        images = [crop(full(case.req), box) for case, box, _m in crops]
        out = self._run(model, images, stage)
        self._settle(model, card, [(c, _label_prob(card, p, c[0].label)) for c, p in zip(crops, out.probs)], full,
                     stage, budgets)

    def _settle(
        self,
        model: str,
        card: ModelCard,
        scored: list[tuple[Crop, float]],
        full: Callable[[int], np.ndarray],
        stage: str,
        budgets: Mapping[int, _Budget],
    ) -> None:
        """Offer each crop's score to its case; a high band crop first confirmed (``spec.confirm``).

        Confirmations are evidence-driven like band re-checks: they always run and are paid
        from the stream's credit (one image each).
        """
        todo = [(k, (case, box, method)) for k, ((case, box, method), score) in enumerate(scored)
                if case.spec.confirm > 0 and method in CONFIRMED and score >= case.spec.confirm_above]
        final = [score for _c, score in scored]
        if todo:
            second = []
            for _k, (case, box, _m) in todo:
                fr = full(case.req)
                second.append(crop(fr, expand_box(box, case.spec.confirm, fr.shape[1], fr.shape[0])))
                budgets[case.req].credit -= 1
            out = self._run(model, second, stage)
            for (k, (case, _box, _m)), probs in zip(todo, out.probs):
                case.crops += 1
                final[k] = min(final[k], _label_prob(card, probs, case.label))
        for ((case, box, method), _s), score in zip(scored, final):
            case.offer(score, box, method)
