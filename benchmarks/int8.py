"""Per-image latency of the FP32 and INT8 models on ONNX Runtime CPU, side by side, one thread.

    .venv/bin/python benchmarks/int8.py [--rounds 7] [--iters 20] [--batches 1 8] [--out out/bench]

For each shipped model with an INT8 variant (run `livemod models prepare` first): the same
pre-processed real photos through both files, FP32 and INT8 alternating round by round (the
order flips every round), one intra-op thread. Reports the median per-image time of each, the
ratio FP32 / INT8, and the accuracy check that `models prepare` recorded. Writes int8.png into --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _common import machine


def per_image_ms(clf, batch: np.ndarray, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        clf.infer(batch)
        out.append((time.perf_counter() - t0) * 1000 / batch.shape[0])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20, help="timed calls per model per round")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models-dir", default=".cache/livemod/models")
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args()

    from livemod.engines.card import load_cards
    from livemod.engines.ort import OrtClassifier
    from livemod.engines.preprocess import prepare_batch
    from livemod.engines.quantize import read_check, sample_photos

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    say(f"machine: {machine()}")
    photos = [p for _, p in sample_photos()]
    models_dir = Path(args.models_dir)
    rows = []
    for name, card in load_cards().items():
        if card.int8 is None:
            continue
        int8_card = card.at_int8()
        fp32 = OrtClassifier(card, card.verify_file(models_dir), threads=args.threads, max_batch=max(args.batches))
        int8 = OrtClassifier(int8_card, int8_card.verify_file(models_dir), threads=args.threads,
                             max_batch=max(args.batches))
        report = read_check(int8_card.path(models_dir))
        for b in args.batches:
            batch = prepare_batch(card, [photos[i % len(photos)] for i in range(b)])
            for clf in (fp32, int8):
                per_image_ms(clf, batch, 3)  # warm-up
            times: dict[str, list[float]] = {"fp32": [], "int8": []}
            for r in range(args.rounds):
                order = (("fp32", fp32), ("int8", int8)) if r % 2 == 0 else (("int8", int8), ("fp32", fp32))
                for key, clf in order:
                    times[key] += per_image_ms(clf, batch, args.iters)
                say(f"  {name} batch {b}: round {r + 1}/{args.rounds}")
            m32, m8 = statistics.median(times["fp32"]), statistics.median(times["int8"])
            rows.append((name, b, m32, m8, report))

    print(f"Machine: {machine()}; ONNX Runtime CPU, {args.threads} thread(s); medians of "
          f"{args.rounds} x {args.iters} calls per model, FP32 and INT8 alternating\n")
    print("| model | batch | FP32 ms/image | INT8 ms/image | FP32 / INT8 | INT8 vs FP32 (models prepare check) |")
    print("|---|---:|---:|---:|---:|---|")
    for name, b, m32, m8, report in rows:
        check = report.brief() + (" (ok)" if report.ok() else " (fails: auto keeps FP32)") if report else "not checked"
        print(f"| {name} | {b} | {m32:.2f} | {m8:.2f} | {m32 / m8:.2f}x | {check} |")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{n}\nbatch {b}" for n, b, *_ in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r[2] for r in rows], 0.4, label="FP32")
    ax.bar(x + 0.2, [r[3] for r in rows], 0.4, label="INT8")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(f"ms per image ({args.threads} thread)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "int8.png", dpi=120)
    say(f"wrote {out / 'int8.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
