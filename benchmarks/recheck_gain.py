"""Small-object gain of the Grad-CAM re-check, by object size.

A real cat photo (scikit-image's "chelsea") is pasted into a 1920x1080 broadcast frame
(matplotlib's Grace Hopper photo, scaled) at several shares of the frame area and in
several positions. For each case the EfficientNet-Lite0 P(cat group) is reported for the
whole frame, after the CAM-box re-check (K=2 boxes, x1.5), and after boxes + a 3x3 tile
pass. Baseline and method run side by side in one process on the same frames.

    .venv/bin/python benchmarks/recheck_gain.py [--out out/bench]

Writes a markdown table on stdout and a PNG plot into --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from _common import machine

from livemod.core.types import SampledFrame
from livemod.engines.card import load_cards
from livemod.engines.ort import OrtClassifier
from livemod.engines.recheck import RecheckSpec, Scorer, ScoreRequest, Watch
from livemod.demo.scene import _cover, _photos

SHARES = (0.20, 0.10, 0.065, 0.04, 0.024, 0.01)
POSITIONS = ((0.80, 0.75), (0.15, 0.2), (0.5, 0.5), (0.85, 0.15))  # centre as frame fractions


def make_frame(bg: np.ndarray, cat: np.ndarray, share: float, pos: tuple[float, float], w=1920, h=1080) -> np.ndarray:
    frame = _cover(bg, w, h, 1.0, 0.5).copy()
    ch, cw = cat.shape[:2]
    s = (share * w * h / (ch * cw)) ** 0.5
    pw, ph = max(8, round(cw * s)), max(8, round(ch * s))
    x0 = int(min(max(pos[0] * w - pw / 2, 0), w - pw))
    y0 = int(min(max(pos[1] * h - ph / 2, 0), h - ph))
    frame[y0 : y0 + ph, x0 : x0 + pw] = cv2.resize(cat, (pw, ph), interpolation=cv2.INTER_AREA)
    return frame


def to_sampled(frame: np.ndarray, size) -> SampledFrame:
    small = cv2.resize(frame, (size.width, size.height), interpolation=cv2.INTER_AREA)
    return SampledFrame("bench", 0, 0.0, 0.0, True, "keyframe", frame.shape[1], frame.shape[0], {size: small},
                        lambda: frame)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default=".cache/livemod/models")
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    card = load_cards()["efficientnet-lite0"]
    clf = OrtClassifier(card, card.verify_file(Path(args.models_dir)), threads=args.threads)
    scorer = Scorer({card.name: clf})
    photos = _photos()
    box_only = RecheckSpec(band=(0.0, 1.01), max_boxes=2, expand=1.5, tiles=0)
    with_tiles = RecheckSpec(band=(0.0, 1.01), max_boxes=2, expand=1.5, tiles=3)
    print(f"Machine: {machine()}; model {card.name} {card.version}; ONNX Runtime CPU\n")
    rows = []
    t0 = time.perf_counter()
    for share in SHARES:
        frames = [to_sampled(make_frame(photos["hopper"], photos["cat"], share, pos), card.working_size)
                  for pos in POSITIONS]
        res_box = scorer.score([ScoreRequest(f, {card.name: [Watch("cat", box_only)]}) for f in frames])
        res_tile = scorer.score([ScoreRequest(f, {card.name: [Watch("cat", with_tiles)]}) for f in frames])
        whole = [r[card.name].scores["cat"] for r in res_box]
        boxed = [r[card.name].score("cat") for r in res_box]
        tiled = [r[card.name].score("cat") for r in res_tile]
        rows.append((share, statistics.median(whole), statistics.median(boxed), statistics.median(tiled)))
        print(f"  share {share:6.1%}: whole {statistics.median(whole):.3f}  box {statistics.median(boxed):.3f}  "
              f"box+tiles {statistics.median(tiled):.3f}", file=sys.stderr)
    print(f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    print("| cat share of 1080p frame | P(cat) whole frame (baseline) | after CAM box x1.5 | after box + 3x3 tiles |")
    print("|---:|---:|---:|---:|")
    for share, w, b, t in rows:
        print(f"| {share:.1%} | {w:.3f} | {b:.3f} | {t:.3f} |")
    print(f"\nMedians over {len(POSITIONS)} positions per size.")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    xs = [r[0] * 100 for r in rows]
    ax.plot(xs, [r[1] for r in rows], "o-", label="whole frame")
    ax.plot(xs, [r[2] for r in rows], "s-", label="CAM box x1.5 re-check")
    ax.plot(xs, [r[3] for r in rows], "^-", label="box + 3x3 tiles")
    ax.set_xscale("log")
    ax.set_xlabel("cat share of the 1920x1080 frame (%)")
    ax.set_ylabel("P(cat), median of 4 positions")
    ax.set_title("Small-object re-check gain (EfficientNet-Lite0, ONNX Runtime CPU)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recheck_gain.png")
    print(f"plot: {out / 'recheck_gain.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
