"""Cost per sampled video frame, stage by stage, and per still-image reference, each beside its baseline.

    .venv/bin/python benchmarks/frame_cost.py [--seconds 16] [--rounds 5] [--images 200] [--out out/bench]

Video: a 1080p30 H.264 clip (x264 "veryfast", so the deblocking loop filter is on as in real
broadcasts; 2 s GOP) made of the real photos installed packages ship, panning. Per sampled
keyframe, in the order the worker pays them:
  decode       keyframes only (skip_frame=NONKEY); loop filter on vs skip_loop_filter=all
  scale        to the demo policy's working sizes (224x224, 256x256): a new FFmpeg scaler per
               image (frame.to_ndarray) vs one kept scaler per size (VideoReformatter)
  thumb+hash   the 32x32 grey thumbnail and its dHash (sampler), same two ways
  preprocess   prepare_batch per model at batch 1 (engines/preprocess.py)
  inference    per model at batch 1 (ONNX Runtime, for scale only)
  score        Moderator.score: both models, CAM re-checks as the demo policy asks
  re-check     a full-resolution RGB + 2 crops through EfficientNet-Lite0 (a suspicious frame)
  rules        Moderator.judge: evaluate() and the records
Both decode variants' keyframes are scored with both real models: the largest probability
difference and top-class agreement say whether skipping the loop filter is safe.

Images: one reference = ``decoders.pyav.decode(...)`` to its one SampledFrame, in process, for
64x64 and 1280x720 JPEGs and a 1280x720 PNG, at the near-free model's 32x32 and the demo
policy's sizes: FFmpeg (PyAV) path vs the OpenCV still-image path.

Timings are process CPU time (all threads; the machine is shared), medians of alternating
rounds; ratios are baseline / livemod. Writes frame_cost.md and frame_cost.png into --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np

from _common import machine

say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731


def cpu_ms(fn: Callable[[], object], n: int) -> float:
    """Process CPU milliseconds per call of fn, over n calls."""
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e3


def ab(base: Callable[[], object], ours: Callable[[], object], n: int, rounds: int) -> tuple[float, float]:
    """Median CPU ms per call of two variants, measured in alternating rounds."""
    base(), ours()
    tb, to = [], []
    for _ in range(rounds):
        tb.append(cpu_ms(base, n))
        to.append(cpu_ms(ours, n))
    return statistics.median(tb), statistics.median(to)


def photos() -> list[np.ndarray]:
    """RGB photos shipped inside installed wheels (scikit-image, matplotlib)."""
    import matplotlib
    import skimage.data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "coins"):
        im = getattr(skimage.data, name)()
        if im.dtype == bool:
            im = (im * 255).astype(np.uint8)
        out.append(np.dstack([im] * 3) if im.ndim == 2 else im[..., :3])
    grace = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    out.append(cv2.imread(str(grace))[..., ::-1])
    return out


def clip_frames(seconds: float, fps: int = 30) -> list[np.ndarray]:
    """1080p frames: each photo for 2 s (one GOP), panning slowly, so every keyframe is a real photo."""
    pics = [cv2.resize(p, (2048, 1152), interpolation=cv2.INTER_CUBIC) for p in photos()]
    frames = []
    for i in range(int(seconds * fps)):
        pic = pics[(i // (2 * fps)) % len(pics)]
        dx = (i % (2 * fps)) * 2
        frames.append(np.ascontiguousarray(pic[36:1116, dx : dx + 1920]))
    return frames


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=16.0, help="clip length (one keyframe per 2 s)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=200, help="references per round for the 64x64 image")
    ap.add_argument("--models-dir", default=".cache/livemod/models")
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--skip-video", action="store_true")
    ap.add_argument("--skip-images", action="store_true")
    args = ap.parse_args()

    say(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="livemod-frame-cost-"))
    rows: list[tuple[str, str, float, str, float]] = []
    notes: list[str] = []
    models = None
    if not args.skip_video:
        models = video_rows(args, tmp, rows, notes)
    if not args.skip_images:
        image_rows(args, tmp, rows, notes, models)

    lines = [f"Machine: {machine()}; process CPU ms, medians of {args.rounds} alternating rounds "
             "(shared machine: other work ran)", "",
             "| stage | baseline | ms | livemod | ms | ratio |", "|---|---|---:|---|---:|---:|"]
    for stage, base, tb, ours, to in rows:
        ratio = f"{tb / to:.2f}x" if tb == tb and to > 0 else "-"
        lines.append(f"| {stage} | {base} | {'-' if tb != tb else f'{tb:.3f}'} | {ours} | {to:.3f} | {ratio} |")
    lines += [""] + notes
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frame_cost.md").write_text(text + "\n")
    plot(rows, out / "frame_cost.png")
    say(f"wrote {out / 'frame_cost.md'} and {out / 'frame_cost.png'}")
    return 0


def video_rows(args: argparse.Namespace, tmp: Path, rows: list, notes: list[str]) -> dict:
    from livemod.core.types import Resize, SampledFrame
    from livemod.decoders.sampling import thumb_hash
    from livemod.engines.preprocess import prepare_batch
    from livemod.rules.evaluate import StreamState
    from livemod.stream.pipeline import Moderator
    from livemod.stream.records import FrameRef
    from livemod.stream.settings import Settings
    from livemod.demo.synth import write_video

    clip = tmp / "photos_1080p.mp4"
    say(f"encoding a {args.seconds:.0f} s 1080p30 H.264 clip of photos (x264 veryfast, 2 s GOP) ...")
    write_video(clip, clip_frames(args.seconds), fps=30,
                options={"preset": "veryfast", "x264-params": "keyint=60:min-keyint=60:scenecut=0"})

    def keyframes(skip_lf: bool) -> list[av.VideoFrame]:
        with av.open(str(clip)) as c:
            s = c.streams.video[0]
            s.codec_context.skip_frame = "NONKEY"
            if skip_lf:
                s.codec_context.options = {"skip_loop_filter": "all"}
            return list(c.decode(s))

    n_key = len(keyframes(False))
    t_lf, t_nolf = ab(lambda: keyframes(False), lambda: keyframes(True), 1, args.rounds)
    rows.append(("decode keyframe 1080p", "loop filter on", t_lf / n_key, "skip_loop_filter=all", t_nolf / n_key))
    say(f"decode: {n_key} keyframes, {t_lf / n_key:.1f} vs {t_nolf / n_key:.1f} ms each")

    s = Settings()
    s = s.model_copy(update={
        "engines": s.engines.model_copy(update={"models_dir": Path(args.models_dir), "threads": 1}),
        "rules": s.rules.model_copy(update={"default_policy": "demo", "write_evidence": False}),
        "decoder": s.decoder.model_copy(update={"file_roots": (tmp,)}),
    })
    mod = Moderator(s)
    policy = mod.policy("demo")
    sizes = mod.sizes(policy)
    say(f"working sizes: {[(z.width, z.height) for z in sizes]}; precision: "
        f"{ {m: c.card.version for m, c in mod.scorer.classifiers.items()} }")

    # scores with and without the loop filter, on every keyframe, with both real models
    a_frames, b_frames = keyframes(False), keyframes(True)
    diffs: dict[str, list[float]] = {}
    same: dict[str, int] = {}
    for fa, fb in zip(a_frames, b_frames):
        for name, clf in mod.scorer.classifiers.items():
            ws = clf.card.working_size
            ia = fa.to_ndarray(format="rgb24", width=ws.width, height=ws.height, interpolation="AREA")
            ib = fb.to_ndarray(format="rgb24", width=ws.width, height=ws.height, interpolation="AREA")
            pa, pb = (clf.infer(prepare_batch(clf.card, [im])).probs[0] for im in (ia, ib))
            diffs.setdefault(name, []).append(float(np.abs(pa - pb).max()))
            same[name] = same.get(name, 0) + int(pa.argmax() == pb.argmax())
    psnr = [cv2.PSNR(fa.to_ndarray(format="rgb24"), fb.to_ndarray(format="rgb24")) for fa, fb in zip(a_frames, b_frames)]
    for name in diffs:
        notes.append(f"- skip_loop_filter=all vs on, {name}: same top class on {same[name]}/{len(a_frames)} keyframes, "
                     f"largest probability difference {max(diffs[name]):.4f} (median {statistics.median(diffs[name]):.4f})")
    notes.append(f"- full-frame PSNR of skip_loop_filter=all against the filtered keyframe: median "
                 f"{statistics.median(psnr):.1f} dB, lowest {min(psnr):.1f} dB")

    frame = a_frames[len(a_frames) // 2]
    from av.video.reformatter import VideoReformatter

    kept = {z: VideoReformatter() for z in sizes}
    kept_thumb = VideoReformatter()

    def scale_new() -> object:
        return [frame.to_ndarray(format="rgb24", width=z.width, height=z.height, interpolation="AREA") for z in sizes]

    def scale_kept() -> object:
        return [kept[z].reformat(frame, format="rgb24", width=z.width, height=z.height, interpolation="AREA").to_ndarray()
                for z in sizes]

    n = 20
    tb, to = ab(scale_new, scale_kept, n, args.rounds)
    rows.append(("scale to " + "+".join(f"{z.width}" for z in sizes), "new scaler per image", tb,
                 "kept scaler per size", to))

    def thumb_new() -> object:
        return thumb_hash(frame.to_ndarray(format="gray", width=32, height=32, interpolation="AREA"))

    def thumb_kept() -> object:
        return thumb_hash(kept_thumb.reformat(frame, format="gray", width=32, height=32, interpolation="AREA").to_ndarray())

    tb, to = ab(thumb_new, thumb_kept, n * 2, args.rounds)
    rows.append(("thumb 32x32 + dHash", "new scaler", tb, "kept scaler", to))

    images = {z: im for z, im in zip(sizes, scale_new())}
    sf = SampledFrame(stream_id="bench", index=0, pts=0.0, wall_clock=0.0, keyframe=True, reason="keyframe",
                      width=frame.width, height=frame.height, images=images,
                      full_rgb=lambda: frame.to_ndarray(format="rgb24"))
    for name, clf in sorted(mod.scorer.classifiers.items()):
        im = images[clf.card.working_size]
        batch = prepare_batch(clf.card, [im])
        tp = statistics.median(cpu_ms(lambda: prepare_batch(clf.card, [im]), n * 5) for _ in range(args.rounds))
        ti = statistics.median(cpu_ms(lambda: clf.infer(batch), 3) for _ in range(args.rounds))
        rows.append((f"preprocess {name}", "-", float("nan"), "prepare_batch, batch 1", tp))
        rows.append((f"inference {name}", "-", float("nan"), "ONNX Runtime, 1 thread, batch 1", ti))
    t_score = statistics.median(cpu_ms(lambda: mod.score([(sf, policy)]), 3) for _ in range(args.rounds))
    rows.append(("score (both models + re-checks)", "-", float("nan"), "Moderator.score", t_score))

    lite = mod.scorer.classifiers.get("efficientnet-lite0")
    if lite is not None:
        from livemod.engines.cam import expand_box

        box = expand_box((1300, 650, 1800, 950), 1.5, 1920, 1080)

        def recheck() -> None:
            f = frame.to_ndarray(format="rgb24")
            lite.infer(prepare_batch(lite.card, [f[box[1]:box[3], box[0]:box[2]]] * 2))

        t_full = statistics.median(cpu_ms(lambda: frame.to_ndarray(format="rgb24"), 10) for _ in range(args.rounds))
        t_rc = statistics.median(cpu_ms(recheck, 3) for _ in range(args.rounds))
        rows.append(("full-res RGB (re-check, evidence)", "-", float("nan"), "frame.to_ndarray rgb24", t_full))
        rows.append(("re-check, suspicious frame", "-", float("nan"), "full-res + 2 crops", t_rc))

    ref = FrameRef(stream_id="bench", uri=str(clip), wall_start=0.0)
    scores = mod.score([(sf, policy)])[0]
    state = StreamState()

    def judge() -> None:
        nonlocal state, sf
        sf = SampledFrame(**{**sf.__dict__, "index": sf.index + 1, "pts": sf.pts + 2.0, "wall_clock": sf.wall_clock + 2.0})
        state, _ = mod.judge(state, ref, sf, scores, policy)

    t_rules = statistics.median(cpu_ms(judge, 200) for _ in range(args.rounds))
    rows.append(("rules (judge)", "-", float("nan"), "evaluate + records", t_rules))

    from livemod.decoders.pyav import decode

    def whole_decode() -> int:
        return sum(1 for _ in decode(str(clip), stream_id="b", sizes=sizes, config=s.decoder))

    from livemod.decoders import pyav

    def before() -> int:  # this change undone: keyframes held back by B-frame reordering, loop filter on
        saved = pyav._REORDERING, pyav.KEYFRAME_OPTIONS, _Run.scaled
        pyav._REORDERING, pyav.KEYFRAME_OPTIONS = frozenset(), {}
        _Run.scaled = lambda self, f, w, h, fmt="rgb24": f.to_ndarray(format=fmt, width=w, height=h, interpolation="AREA")
        try:
            return whole_decode()
        finally:
            pyav._REORDERING, pyav.KEYFRAME_OPTIONS, _Run.scaled = saved

    from livemod.decoders.pyav import _Run

    n_b, n_s = before(), whole_decode()
    tb = statistics.median(cpu_ms(before, 1) for _ in range(args.rounds)) / n_b
    to = statistics.median(cpu_ms(whole_decode, 1) for _ in range(args.rounds)) / n_s
    rows.append(("decoders.pyav.decode per sampled frame", f"before ({n_b} samples)", tb, f"after ({n_s} samples)", to))
    return mod.scorer.classifiers


def image_rows(args: argparse.Namespace, tmp: Path, rows: list, notes: list[str], models: dict | None) -> None:
    import skimage.data

    from livemod.engines.preprocess import prepare_batch

    from livemod.core.types import Resize
    from livemod.decoders import pyav
    from livemod.decoders.config import DecoderConfig

    cfg = DecoderConfig(file_roots=(tmp,))
    astronaut = skimage.data.astronaut()
    files = []
    for (w, h), ext in (((64, 64), ".jpg"), ((1280, 720), ".jpg"), ((1280, 720), ".png")):
        p = tmp / f"snap_{w}x{h}{ext}"
        cv2.imwrite(str(p), cv2.resize(astronaut, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        files.append((p, w, h, ext))
    ffmpeg_only = lambda *a, **k: None  # noqa: E731
    fast = pyav._still
    if models is not None:  # do the models score the OpenCV path's working images as they scored FFmpeg's?
        diffs: dict[str, list[float]] = {}
        same: dict[str, int] = {}
        pics = photos()
        for i, pic in enumerate(pics):
            p = tmp / f"photo_{i}.jpg"
            cv2.imwrite(str(p), pic[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            sizes = sorted({c.card.working_size for c in models.values()}, key=lambda z: z.width)
            (a,) = pyav.decode(str(p), stream_id="s", sizes=sizes, config=cfg)
            pyav._still = ffmpeg_only
            try:
                (b,) = pyav.decode(str(p), stream_id="s", sizes=sizes, config=cfg)
            finally:
                pyav._still = fast
            for name, clf in models.items():
                ws = clf.card.working_size
                pa, pb = (clf.infer(prepare_batch(clf.card, [f.images[ws]])).probs[0] for f in (a, b))
                diffs.setdefault(name, []).append(float(np.abs(pa - pb).max()))
                same[name] = same.get(name, 0) + int(pa.argmax() == pb.argmax())
        for name in diffs:
            notes.append(f"- OpenCV vs PyAV still path, {name}, {len(pics)} photos as JPEG at their own size: same top class "
                         f"on {same[name]}/{len(pics)}, largest probability difference {max(diffs[name]):.4f} "
                         f"(median {statistics.median(diffs[name]):.4f})")

    for p, w, h, ext in files:
        for sizes in ([Resize(32, 32)], [Resize(224, 224), Resize(256, 256)]):
            n = max(5, args.images * 64 * 64 // (w * h) if w * h > 64 * 64 else args.images)

            def one() -> None:
                for _f in pyav.decode(str(p), stream_id="s", sizes=sizes, config=cfg):
                    pass

            def base() -> None:
                pyav._still = ffmpeg_only
                try:
                    one()
                finally:
                    pyav._still = fast

            tb, to = ab(base, one, n, args.rounds)
            label = f"image ref {w}x{h} {ext[1:].upper()} -> " + "+".join(f"{z.width}" for z in sizes)
            rows.append((label, "PyAV path", tb, "OpenCV still path", to))
            say(f"{label}: {tb:.2f} -> {to:.2f} ms")


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5), dpi=100)
    y = np.arange(len(rows))
    ax.barh(y + 0.2, [r[2] if r[2] == r[2] else 0 for r in rows], 0.4, label="baseline")
    ax.barh(y - 0.2, [r[4] for r in rows], 0.4, label="livemod")
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("CPU ms per frame / reference (log scale), median")
    ax.set_title("Cost per sampled frame and per image reference")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
