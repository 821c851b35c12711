"""Per-stage CPU time per frame, each stage side by side with the baseline it replaces.

    .venv/bin/python benchmarks/stages.py [--seconds 10] [--repeats 3] [--out out/bench]

On one generated 1080p30 H.264 clip (2 s GOP) of the sample broadcast:
  decode      all frames (baseline) vs keyframes only (skip_frame=NONKEY)
  scale       full-size rgb24 + cv2.resize INTER_AREA (baseline) vs FFmpeg scaling to 224
  inference   per image at batch 1 (baseline) vs batch 8, per model (ONNX Runtime CPU)
  re-check    full-resolution conversion + 2 CAM-box crops classified as one batch
  pipeline    the whole embedded pipeline (demo policy: both models, re-check on)
Medians over --repeats runs; ratios are baseline / livemod. Writes stages.png into --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from _common import machine


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (1 = per-core cost)")
    ap.add_argument("--models-dir", default=".cache/livemod/models")
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args()

    from livemod.demo.synth import write_video
    from livemod.engines.card import load_cards
    from livemod.engines.ort import OrtClassifier
    from livemod.engines.preprocess import prepare_batch
    from livemod.demo.scene import Scene, broadcast_frames

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    say(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="livemod-bench-"))
    clip = tmp / "broadcast_1080p.mp4"
    say(f"encoding a {args.seconds:.0f} s 1080p30 H.264 clip (2 s GOP) ...")
    write_video(clip, broadcast_frames(Scene(width=1920, height=1080, fps=30, seconds=args.seconds)), fps=30,
                codec="libx264", gop=60)
    rows: list[tuple[str, str, float, str, float]] = []

    def decode(nonkey: bool) -> int:
        n = 0
        with av.open(str(clip)) as c:
            s = c.streams.video[0]
            s.thread_type = "NONE"  # one core: the per-core cost
            if nonkey:
                s.codec_context.skip_frame = "NONKEY"
            for _f in c.decode(s):
                n += 1
        return n

    n_all, n_key = decode(False), decode(True)
    t_all, t_key = timed(lambda: decode(False), args.repeats), timed(lambda: decode(True), args.repeats)
    # per *sampled* frame: the baseline decodes everything to sample the same keyframes
    rows.append(("decode per sampled frame", "all frames", t_all / n_key * 1e3, "keyframes only", t_key / n_key * 1e3))
    say(f"decode: {n_all} frames in {t_all:.2f} s ({n_all / t_all:.0f} fps); {n_key} keyframes in {t_key:.2f} s "
        f"({t_key / n_key * 1e3:.1f} ms each, {args.seconds / t_key:.0f}x real time)")

    with av.open(str(clip)) as c:
        frame = next(c.decode(video=0))
    t_full = timed(lambda: cv2.resize(frame.to_ndarray(format="rgb24"), (224, 224), interpolation=cv2.INTER_AREA),
                   args.repeats * 10)
    t_ff = timed(lambda: frame.to_ndarray(format="rgb24", width=224, height=224, interpolation="AREA"), args.repeats * 10)
    rows.append(("scale 1080p -> 224", "rgb24 + cv2 AREA", t_full * 1e3, "FFmpeg AREA", t_ff * 1e3))

    cards = load_cards()
    full = frame.to_ndarray(format="rgb24")
    for name in ("open-nsfw", "efficientnet-lite0"):
        card = cards[name]
        clf = OrtClassifier(card, card.verify_file(Path(args.models_dir)), threads=args.threads)
        ws = card.working_size
        img = cv2.resize(full, (ws.width, ws.height), interpolation=cv2.INTER_AREA)
        b1, b8 = prepare_batch(card, [img]), prepare_batch(card, [img] * 8)
        clf.infer(b8)
        t1 = timed(lambda: clf.infer(b1), args.repeats * 5)
        t8 = timed(lambda: clf.infer(b8), args.repeats * 2) / 8
        rows.append((f"{name} per image", "batch 1", t1 * 1e3, "batch 8", t8 * 1e3))
        if name == "efficientnet-lite0":
            from livemod.engines.cam import expand_box

            box = expand_box((1300, 650, 1800, 950), 1.5, 1920, 1080)

            def recheck() -> None:
                f = frame.to_ndarray(format="rgb24")
                crops = [f[box[1]:box[3], box[0]:box[2]]] * 2
                clf.infer(prepare_batch(card, crops))

            t_rc = timed(recheck, args.repeats * 3)
            rows.append(("re-check (2 crops) per suspicious frame", "-", float("nan"), "full-res + 2 crops", t_rc * 1e3))

    from livemod.rules.evaluate import StreamState
    from livemod.stream.pipeline import Moderator
    from livemod.stream.records import FrameRef
    from livemod.stream.settings import Settings

    s = Settings()
    s = s.model_copy(update={
        "engines": s.engines.model_copy(update={"models_dir": Path(args.models_dir), "threads": args.threads}),
        "rules": s.rules.model_copy(update={"default_policy": "demo", "write_evidence": False}),
        "decoder": s.decoder.model_copy(update={"file_roots": (tmp,)}),
    })
    mod = Moderator(s)
    frames = 0

    def pipeline() -> None:
        nonlocal frames
        frames = sum(1 for _ in mod.moderate(FrameRef(stream_id="bench", uri=str(clip), wall_start=0.0), StreamState()))

    t_pipe = timed(pipeline, args.repeats)
    rows.append(("whole pipeline per sampled frame", "-", float("nan"), "decode+2 models+re-check+rules", t_pipe / frames * 1e3))
    say(f"pipeline: {frames} sampled frames of {args.seconds:.0f} s of 1080p30 in {t_pipe:.2f} s "
        f"({args.seconds / t_pipe:.1f}x real time per stream)")

    print(f"Machine: {machine()}; ONNX Runtime threads {args.threads}; medians of {args.repeats} runs\n")
    print("| stage | baseline | ms | livemod | ms | ratio |")
    print("|---|---|---:|---|---:|---:|")
    for stage, base, tb, ours, to in rows:
        ratio = f"{tb / to:.1f}x" if tb == tb else "-"
        tb_s = f"{tb:.1f}" if tb == tb else "-"
        print(f"| {stage} | {base} | {tb_s} | {ours} | {to:.1f} | {ratio} |")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comp = [r for r in rows if r[2] == r[2]]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    y = np.arange(len(comp))
    ax.barh(y + 0.2, [r[2] for r in comp], 0.4, label="baseline")
    ax.barh(y - 0.2, [r[4] for r in comp], 0.4, label="livemod")
    ax.set_yticks(y, [r[0] for r in comp])
    ax.set_xscale("log")
    ax.set_xlabel("ms (log scale), median")
    ax.set_title("Per-stage CPU time per frame")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "stages.png")
    say(f"plot: {out / 'stages.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
