"""Small objects in any frame shape: the old band re-check beside the budgeted sweep, same run.

Real photos that installed packages ship are pasted as objects into real photo backgrounds:
objects scikit-image's "chelsea" (watched as the card's cat group), "coffee" (espresso, cup,
coffee mug) and "camera" (tripod); backgrounds matplotlib's Grace Hopper and scikit-image's
astronaut, rocket (and more with --backgrounds). Each object is placed at several shares of the
frame's area, in several positions, in 1920x1080, 1080x1920 and 1280x720 frames, and scored with
EfficientNet-Lite0 by four configurations:

- old, demo policy: band re-check [0.001, 0.6), 2 CAM boxes x1.5 (the shipped demo rule);
- old, default policy: band [0.05, 0.6), 2 boxes + 3x3 tiles (the shipped firearm rule);
- new, every frame: band [0.02, 0.6) + hot spots below the band (no sweep on this frame);
- new, sweep frame: the same plus the sweep (square tiles sized for --sweep-share), as it runs on a
  stream's first frame, on scene changes and whenever the stream's budget has saved up for it.

Both new configurations confirm a crop that scores 0.5 or more in a --confirm times scaled crop
(policies' ``recheck.confirm``, 0.67 by default: a tighter crop) and keep the lower score.

Then clean broadcasts (no object: each background panned over --clean-frames frames, per shape)
run through the old and new configurations with the per-stream budget on, watching all the labels
above and the firearm group: the extra inference per whole-frame image, how often the sweep runs,
and the highest score of any watched label.

    .venv/bin/python benchmarks/small_objects.py [--out out/bench] [--positions 1-4] [--threads 0]

The default (1 position, 9 placements per row) takes about 4-5 minutes on 2 shared cores; --positions 2
doubles the placements.

Markdown tables on stdout, a PNG plot into --out, progress on stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from _common import machine

from livemod.core.types import SampledFrame
from livemod.engines.card import load_cards
from livemod.engines.ort import OrtClassifier
from livemod.engines.cam import SWEEP_TILE_SHARE, square_tiles, sweep_side
from livemod.engines.recheck import RecheckSpec, Scorer, ScoreRequest, Watch
from livemod.demo.scene import _cover

SHARES = (0.01, 0.015, 0.025, 0.04, 0.065, 0.10)
SHAPES = ((1920, 1080), (1080, 1920), (1280, 720))
POSITIONS = ((0.80, 0.75), (0.15, 0.2), (0.5, 0.5), (0.85, 0.15))  # object centre, frame fractions
GROUPS = {"coffee": ("espresso", "cup", "coffee mug"), "tripod": ("tripod",)}  # added to the card for the bench
OBJECTS = {"cat": ("chelsea", "cat"), "coffee": ("coffee", "coffee"), "tripod": ("camera", "tripod")}
CLEAN_LABELS = ("cat", "firearm", "coffee", "tripod")


def photos() -> dict[str, np.ndarray]:
    """Real photos from the scikit-image and matplotlib wheels, RGB uint8."""
    import matplotlib
    import skimage.data as data

    def rgb(im: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3])

    hopper = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))[..., ::-1]
    out = {"hopper": rgb(hopper)}
    for name in ("astronaut", "rocket", "grass", "brick", "gravel", "chelsea", "coffee", "camera"):
        out[name] = rgb(getattr(data, name)())
    return out


def place(bg: np.ndarray, obj: np.ndarray, share: float, pos: tuple[float, float], w: int, h: int) -> np.ndarray:
    """The background covering w x h with the object pasted at ``share`` of the area, centred at ``pos``."""
    frame = _cover(bg, w, h, 1.0, 0.5).copy()
    oh, ow = obj.shape[:2]
    s = (share * w * h / (oh * ow)) ** 0.5
    pw, ph = max(8, round(ow * s)), max(8, round(oh * s))
    x0 = int(min(max(pos[0] * w - pw / 2, 0), w - pw))
    y0 = int(min(max(pos[1] * h - ph / 2, 0), h - ph))
    frame[y0 : y0 + ph, x0 : x0 + pw] = cv2.resize(obj, (pw, ph), interpolation=cv2.INTER_AREA)
    return frame


def sampled(frame: np.ndarray, size, stream: str, index: int = 0, reason: str = "keyframe") -> SampledFrame:
    small = cv2.resize(frame, (size.width, size.height), interpolation=cv2.INTER_AREA)
    return SampledFrame(stream, index, float(index), float(index), True, reason, frame.shape[1], frame.shape[0],
                        {size: small}, lambda: frame)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default=".cache/livemod/models")
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--positions", type=int, default=1, help="positions per (object, background, share, shape), 1-4")
    ap.add_argument("--backgrounds", default="hopper,astronaut,rocket")
    ap.add_argument("--clean-backgrounds", default="hopper,astronaut,grass")
    ap.add_argument("--clean-frames", type=int, default=200,
                    help="frames per clean broadcast for the new configuration (a 24-tile sweep comes due about every 100)")
    ap.add_argument("--clean-frames-old", type=int, default=40,
                    help="frames per clean broadcast for the old ones (their cost per frame does not build up)")
    ap.add_argument("--sweep-share", type=float, default=0.015)
    ap.add_argument("--spot-threshold", type=float, default=0.5)
    ap.add_argument("--budget", type=float, default=0.3)
    ap.add_argument("--confirm", type=float, default=0.67,
                    help="the new configurations' confirming crop (policies' recheck.confirm; 0 = off)")
    args = ap.parse_args()

    base = load_cards()["efficientnet-lite0"]
    card = base.model_copy(update={"groups": {**base.groups, **GROUPS}})
    clf = OrtClassifier(card, base.verify_file(Path(args.models_dir)), threads=args.threads)
    size = card.working_size
    pics = photos()
    configs = {
        "old_demo": RecheckSpec(band=(0.001, 0.6), max_boxes=2, expand=1.5, tiles=0),
        "old_default": RecheckSpec(band=(0.05, 0.6), max_boxes=2, expand=1.5, tiles=3),
        "new_frame": RecheckSpec(band=(0.02, 0.6), max_boxes=2, expand=1.5, spot_threshold=args.spot_threshold,
                                 confirm=args.confirm),
        "new_sweep": RecheckSpec(band=(0.02, 0.6), max_boxes=2, expand=1.5, spot_threshold=args.spot_threshold,
                                 sweep_share=args.sweep_share, confirm=args.confirm),
    }
    backgrounds = args.backgrounds.split(",")
    positions = POSITIONS[: max(1, min(4, args.positions))]
    print(f"Machine: {machine()}; model {card.name} {card.version}; ONNX Runtime CPU, threads={args.threads or 'auto'}; "
          "taken on a shared machine while other work ran\n")

    # ---- placements ---------------------------------------------------------------------------
    scores: dict[tuple[str, float, tuple[int, int], str], list[float]] = defaultdict(list)  # (config, share, shape, obj)
    t0 = time.perf_counter()
    n_cells = len(SHARES) * len(SHAPES)
    for k, (share, shape) in enumerate((s, sh) for s in SHARES for sh in SHAPES):
        frames, meta = [], []
        for oname, (photo, label) in OBJECTS.items():
            for bg in backgrounds:
                for p, pos in enumerate(positions):
                    frames.append(place(pics[bg], pics[photo], share, pos, *shape))
                    meta.append((oname, label, f"{oname}-{bg}-{p}-{share}-{shape}"))
        for name, spec in configs.items():
            # each placement is a stream's first frame: "new_sweep" sweeps it (borrowing), "new_frame" has no
            # sweep and a budget that always affords its hot spots (what a frame between sweeps gets at best)
            scorer = Scorer({card.name: clf}, budget=args.budget if name != "new_frame" else 32.0)
            reqs = [ScoreRequest(sampled(f, size, sid), {card.name: [Watch(label, spec)]})
                    for f, (_o, label, sid) in zip(frames, meta)]
            for (oname, label, _sid), res in zip(meta, scorer.score(reqs)):
                scores[(name, share, shape, oname)].append(res[card.name].score(label))
        print(f"  [{k + 1}/{n_cells}] share {share:.1%} {shape[0]}x{shape[1]}: " + "  ".join(
            f"{n} {np.mean([v >= 0.5 for o in OBJECTS for v in scores[(n, share, shape, o)]]):.0%}" for n in configs)
            + f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    def ok(name: str, share: float, shape=None, obj=None) -> tuple[float, int]:
        vals = [v for (n, s, sh, o), vs in scores.items() for v in vs
                if n == name and s == share and (shape is None or sh == shape) and (obj is None or o == obj)]
        return float(np.mean([v >= 0.5 for v in vals])), len(vals)

    def med(name: str, share: float, shape) -> float:
        return statistics.median(v for (n, s, sh, _o), vs in scores.items() for v in vs
                                 if n == name and s == share and sh == shape)

    per_cell = len(OBJECTS) * len(backgrounds) * len(positions)
    print(f"### Share of placements with P >= 0.5 ({per_cell} placements per row: {len(OBJECTS)} objects x "
          f"{len(backgrounds)} backgrounds x {len(positions)} positions)\n")
    print("| object share | frame | old: demo band, boxes | old: default band, boxes + 3x3 tiles | "
          "new: every frame (band + spots) | new: sweep frame | median P old demo -> new sweep |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for share in SHARES:
        for shape in SHAPES:
            cells = [f"{ok(n, share, shape)[0]:.0%}" for n in configs]
            print(f"| {share:.1%} | {shape[0]}x{shape[1]} | " + " | ".join(cells)
                  + f" | {med('old_demo', share, shape):.3f} -> {med('new_sweep', share, shape):.3f} |")
    print("\n### New (sweep frame) by object, all shapes\n")
    print("| object (watched label) | " + " | ".join(f"{s:.1%}" for s in SHARES) + " |")
    print("|---|" + "---:|" * len(SHARES))
    for oname, (_photo, label) in OBJECTS.items():
        print(f"| {oname} ({label}) | " + " | ".join(f"{ok('new_sweep', s, obj=oname)[0]:.0%}" for s in SHARES) + " |")

    # ---- clean broadcasts ---------------------------------------------------------------------
    watches = {"old_demo": configs["old_demo"], "old_default": configs["old_default"], "new": configs["new_sweep"]}
    streams = [(shape, bg) for shape in SHAPES for bg in args.clean_backgrounds.split(",")]
    clean: dict[str, dict] = {}
    for name, spec in watches.items():
        counts: dict[str, int] = defaultdict(int)
        later = 0  # sweep images after each stream's first frame (its borrowed sweep)
        worst: dict[str, float] = dict.fromkeys(CLEAN_LABELS, 0.0)
        batch: list[int] = []

        def hook(_m: str, n: int, stage: str) -> None:
            counts[stage] += n
            if stage == "sweep":
                batch.append(n)

        scorer = Scorer({card.name: clf}, on_batch=hook, budget=args.budget)
        n_frames = args.clean_frames if name == "new" else args.clean_frames_old
        for i in range(n_frames):  # one batch per time step, one frame of every stream, as the service batches
            t = i / max(1, n_frames - 1)
            reqs = [ScoreRequest(sampled(_cover(pics[bg], *shape, 1.0 + 0.5 * t, t), size, f"clean-{bg}-{shape}", i),
                                 {card.name: [Watch(lb, spec) for lb in CLEAN_LABELS]}) for shape, bg in streams]
            batch.clear()
            for res in scorer.score(reqs):
                for lb in CLEAN_LABELS:
                    worst[lb] = max(worst[lb], res[card.name].score(lb))
            if i > 0:
                later += sum(batch)
        clean[name] = {"frames": counts["frame"], "extra": counts["recheck"] + counts["sweep"],
                       "recheck": counts["recheck"], "sweep": counts["sweep"], "later": later, "worst": worst}
        print(f"  clean {name}: {dict(counts)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    n_bg = len(args.clean_backgrounds.split(","))
    print(f"\n### Clean broadcasts ({len(streams)} streams: {len(SHAPES)} shapes x {n_bg} backgrounds, "
          f"{args.clean_frames} frames each for new, {args.clean_frames_old} for old; labels {', '.join(CLEAN_LABELS)} watched; budget {args.budget:.0%})\n")
    print("| configuration | whole-frame images | extra images (re-check / sweep) | extra inference, whole run | "
          "after each stream's first frame | highest score of a watched label |")
    print("|---|---:|---:|---:|---:|---|")
    for name, c in clean.items():
        steady = (c["recheck"] + c["later"]) / max(1, c["frames"] - len(streams))
        worst = ", ".join(f"{lb} {v:.3f}" for lb, v in c["worst"].items())
        print(f"| {name} | {c['frames']} | {c['extra']} ({c['recheck']} / {c['sweep']}) | "
              f"{c['extra'] / c['frames']:.0%} | {steady:.0%} | {worst} |")
    print(f"\nThe sweep's tiles are squares sized so that an object of {args.sweep_share:.1%} of the frame covers "
          f"{SWEEP_TILE_SHARE:.0%} of a tile: {len(square_tiles(1920, 1080, sweep_side(1920, 1080, args.sweep_share)))} "
          "tiles for a 16:9 or 9:16 frame, plus up to 4 crops per watched label. A stream's first frame borrows one "
          f"sweep; later sweeps run when its credit ({args.budget:.0%} of an image per frame, minus the band "
          "re-check's crops) covers the tiles.")
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SHAPES), figsize=(13, 4), dpi=100, sharey=True)
    xs = [s * 100 for s in SHARES]
    styles = {"old_demo": ("o--", "old: demo band, boxes"), "old_default": ("v--", "old: default band + tiles"),
              "new_frame": ("s-", "new: every frame"), "new_sweep": ("^-", "new: sweep frame")}
    for ax, shape in zip(axes, SHAPES):
        for name, (style, label) in styles.items():
            ax.plot(xs, [ok(name, s, shape)[0] * 100 for s in SHARES], style, label=label)
        ax.axhline(90, color="grey", lw=0.8, ls=":")
        ax.axvline(1.5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_title(f"{shape[0]}x{shape[1]}")
        ax.set_xlabel("object share of the frame (%)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("placements with P >= 0.5 (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Small objects: old band re-check vs budgeted sweep (EfficientNet-Lite0, ONNX Runtime CPU)")
    fig.tight_layout()
    fig.savefig(out / "small_objects.png")
    print(f"plot: {out / 'small_objects.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
