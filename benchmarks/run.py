"""One entry point for livemod's benchmarks: a Markdown table and PNG plots in one results folder.

    .venv/bin/python benchmarks/run.py [--out out/bench] [--only SECTION ...] [--quick] [--rounds 5]

Sections (each a function below; `--only NAME` runs one, and may be repeated):
  baseline  the LINE-style baseline (benchmarks/baseline_line.py: keyframes -> JPEG files -> Open-NSFW
            one by one) beside `livemod moderate` with an Open-NSFW-only policy, whole processes on
            the same five clips, alternating, medians of --rounds rounds, ratio (target >= 3x)
  stages    CPU time per sampled frame of each stage (decode, scale, hash, pre-processing, inference,
            re-check, rules, whole pipeline), FP32 and INT8 (`engines.precision`)
  service   one worker on the bundled broker (benchmarks/service_load.py's run) in a backlog and at
            live pacing, against the isolated capacity of its stages measured in the same run
            (target >= 85%)
  ceiling   one worker with near-free decode and inference (64x64 JPEG snapshots, a 32x32 one-conv
            model): references/s, CPU per reference, frames/s of a many-frame segment
            (targets >= 1,000 refs/s, >= 2,000 frames/s), then one worker process per core
  rules     livemod.rules.evaluate.evaluate() alone on synthetic scores (target >= 100,000 frames/s)
The default size finishes in about 5-7 minutes on 2 cores; --quick is a smoke size (about a minute).
Progress goes to stderr (a status line at least every 15 s); results.md and <section>.png go to --out.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # run as a script or imported by path: the sibling modules import alike
    sys.path.insert(0, str(HERE))

SECTIONS = ("baseline", "stages", "service", "ceiling", "rules")
NSFW_ONLY_POLICY = """\
name: nsfw-only
version: "1"
description: The LINE-style comparison - Open-NSFW alone, no re-check.
audit_fraction: 0.0
rules:
  - name: adult-content
    model: open-nsfw
    label: nsfw
    review: 0.5
    alert: 0.8
    window: {k: 2, n: 3}
    recheck: null
"""


def machine_facts() -> dict[str, str]:
    """CPU model, cores, Python and the versions that matter for these numbers."""
    import av
    import onnxruntime

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(), "av": av.__version__,
            "onnxruntime": onnxruntime.__version__, "host": platform.node()}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


@dataclass
class Row:
    section: str
    measure: str
    value: str
    target: str = "-"
    met: str = "-"


@dataclass
class Bench:
    """What the sections share: options, the results so far, progress, and set-up made once per run."""

    out: Path
    quick: bool
    rounds: int
    models_dir: Path
    tmp: Path
    facts: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    load_at_start: str = "?"
    _step: str = "starting"
    _step_since: float = field(default_factory=time.monotonic)
    _broker: object | None = None
    _clips: list[Path] | None = None

    # ---- progress --------------------------------------------------------------------

    def stamp(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"[bench {s // 60:02d}:{s % 60:02d}]"

    def say(self, msg: str) -> None:
        print(f"{self.stamp()} {msg}", file=sys.stderr, flush=True)

    def step(self, text: str) -> None:
        self._step, self._step_since = text, time.monotonic()
        self.say(text)

    def heartbeat(self, stop: threading.Event, every: float = 15.0) -> None:
        while not stop.wait(every):
            print(f"{self.stamp()} still working: {self._step} ({time.monotonic() - self._step_since:.0f} s so far; "
                  f"load average {load_average()})", file=sys.stderr, flush=True)

    # ---- results ---------------------------------------------------------------------

    def add(self, section: str, measure: str, value: str, target: str = "-", met: bool | None = None) -> None:
        self.rows.append(Row(section, measure, value, target, "-" if met is None else ("yes" if met else "**no**")))

    def command(self, section: str) -> str:
        return f"`python benchmarks/run.py --only {section}{' --quick' if self.quick else ''}`"

    def write(self) -> Path:
        """results.md with everything measured so far (rewritten after each section)."""
        f = self.facts
        lines = [
            "# livemod benchmarks",
            "",
            f"Machine: {f['cpu']}, {f['cores']} cores, Python {f['python']}, av {f['av']}, "
            f"onnxruntime {f['onnxruntime']} (host {f['host']}).",
            f"Size: {'--quick (smoke size: not for quoting)' if self.quick else 'default'}; "
            f"written {time.strftime('%Y-%m-%d %H:%M:%S')}; whole run so far {time.monotonic() - self.started:.0f} s.",
            "",
            "Numbers from a shared machine are noisy: other work may have run at the same time (the load "
            "average at the start of each section is given below). Medians and same-run ratios are "
            "reported so that both sides of a comparison saw the same conditions.",
            "",
            "| section | measure | value | target | met | reproduce |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(f"| {r.section} | {r.measure} | {r.value} | {r.target} | {r.met} | {self.command(r.section)} |")
        for name, err in self.failed.items():
            lines.append(f"| {name} | FAILED | {err} | - | - | {self.command(name)} |")
        for name in SECTIONS:
            if name in self.details or name in self.plots:
                lines += ["", f"## {name}", ""]
                if name in self.details:
                    lines.append(self.details[name].rstrip())
                if name in self.plots:
                    lines += ["", f"![{name}]({self.plots[name].name})"]
        path = self.out / "results.md"
        path.write_text("\n".join(lines) + "\n")
        return path

    # ---- shared set-up ---------------------------------------------------------------

    def broker(self):  # noqa: ANN201 - EmbeddedBroker, imported lazily
        if self._broker is None:
            from livemod.demo.broker import EmbeddedBroker

            self._broker = EmbeddedBroker(log_file=self.tmp / "broker.log").start()
            self.say(f"embedded broker (Tansu) on {self._broker.bootstrap}")
        return self._broker

    def clips(self) -> list[Path]:
        """The five clips of the baseline comparison (two in --quick), made once per run."""
        if self._clips is None:
            from livemod.demo.synth import write_video

            if self.quick:
                specs = [("q1", 320, 180, 4.0, "hopper", False), ("q2", 320, 180, 4.0, "astronaut", True)]
                fps = 10
            else:
                specs = [("c1_1080p", 1920, 1080, 25.0, "hopper", False),
                         ("c2_1080p", 1920, 1080, 25.0, "astronaut", True),
                         ("c3_1080p", 1920, 1080, 20.0, "rocket", False),
                         ("c4_720p", 1280, 720, 30.0, "coffee", True),
                         ("c5_720p", 1280, 720, 30.0, "chelsea", False)]
                fps = 30
            d = self.tmp / "clips"
            d.mkdir(parents=True, exist_ok=True)
            self._clips = []
            for name, w, h, secs, bg, pip in specs:
                self.step(f"set-up: encoding {name} ({w}x{h}, {secs:.0f} s, {fps} fps, H.264, 2 s GOP)")
                self._clips.append(write_video(d / f"{name}.mp4", broadcast(w, h, fps, secs, bg, pip), fps=fps,
                                               codec="libx264", gop=2 * fps))
        return self._clips

    def close(self) -> None:
        if self._broker is not None:
            self._broker.stop()  # type: ignore[attr-defined]
            self._broker = None


def _photo(name: str) -> np.ndarray:
    import cv2
    import matplotlib
    import skimage.data

    if name == "hopper":
        return np.ascontiguousarray(cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))[..., ::-1])
    return getattr(skimage.data, name)()


def broadcast(width: int, height: int, fps: int, seconds: float, background: str, pip: bool):  # noqa: ANN201
    """A cheap broadcast-like scene: a photo panning behind a lower-third banner with a clock, and
    (``pip``) a picture-in-picture photo; the background is scaled once, not per frame."""
    import cv2

    bg = _photo(background)
    s = max(width * 1.3 / bg.shape[1], height / bg.shape[0])
    big = cv2.resize(bg, (math.ceil(bg.shape[1] * s), math.ceil(bg.shape[0] * s)), interpolation=cv2.INTER_AREA)
    inset = cv2.resize(_photo("chelsea"), (width // 4, height // 4), interpolation=cv2.INTER_AREA) if pip else None
    y0 = (big.shape[0] - height) // 2
    for i in range(int(seconds * fps)):
        t = i / fps
        x0 = int((big.shape[1] - width) * (0.5 + 0.45 * math.sin(t / 3.0)))
        frame = big[y0:y0 + height, x0:x0 + width].copy()
        band = frame[int(height * 0.82):int(height * 0.92)]
        band[:] = (band * 0.3 + np.array([20, 40, 120]) * 0.7).astype(np.uint8)
        cv2.putText(frame, f"LIVE  {t:05.1f}s", (width // 40, int(height * 0.89)), cv2.FONT_HERSHEY_SIMPLEX,
                    height / 1080, (255, 255, 255), max(1, height // 540), cv2.LINE_AA)
        if inset is not None and (t // 5) % 2 == 1:
            ih, iw = inset.shape[:2]
            frame[height // 20:height // 20 + ih, width - width // 20 - iw:width - width // 20] = inset
        yield frame


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _summary(stderr: str) -> dict:
    import json

    for line in stderr.splitlines():
        if line.startswith("summary: "):
            return json.loads(line[len("summary: "):])
    return {}


# ---- sections ------------------------------------------------------------------------------


def baseline(b: Bench) -> None:
    """The LINE-style baseline beside `livemod moderate`: whole processes, alternating, medians."""
    clips = b.clips()
    pol = b.tmp / "baseline-policies"
    pol.mkdir(exist_ok=True)
    (pol / "nsfw-only.yaml").write_text(NSFW_ONLY_POLICY)
    script = Path(sys.executable).parent / "livemod"
    livemod = [str(script)] if script.exists() else [sys.executable, "-m", "livemod.stream.cli"]
    cmds = {
        "baseline": [sys.executable, str(HERE / "baseline_line.py"), *map(str, clips),
                     "--model", str(b.models_dir / "open-nsfw-cam.onnx")],
        "livemod": [*livemod, "moderate", *map(str, clips), "--policies-dir", str(pol), "--policy", "nsfw-only",
                    "--no-evidence", "--out", str(b.tmp / "baseline-out"), "--models-dir", str(b.models_dir)],
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEMOD_")}  # the product's defaults

    def once(which: str) -> dict[str, float]:
        c0, t0 = _children_cpu(), time.perf_counter()
        r = subprocess.run(cmds[which], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
        if r.returncode != 0:
            raise RuntimeError(f"{which} exited {r.returncode}: {r.stderr[-1500:]}")
        s = _summary(r.stderr)
        return {"wall": wall, "cpu": cpu, "frames": float(s.get("frames", float("nan"))),
                "work": float(s.get("seconds", float("nan")))}

    if not b.quick:
        b.step("baseline: one warm-up run of each (page cache, lazy imports), not counted")
        once("baseline"), once("livemod")
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "livemod": []}
    for r in range(b.rounds):
        order = ("baseline", "livemod") if r % 2 == 0 else ("livemod", "baseline")
        for which in order:
            b.step(f"baseline: round {r + 1}/{b.rounds}, {which}")
            runs[which].append(once(which))
        b.say("  " + ", ".join(f"{w} {runs[w][-1]['wall']:.2f} s wall / {runs[w][-1]['cpu']:.2f} s CPU" for w in runs))
    med = {w: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for w, rs in runs.items()}
    bl, lm = med["baseline"], med["livemod"]
    ratio_wall, ratio_cpu = bl["wall"] / lm["wall"], bl["cpu"] / lm["cpu"]
    n = b.rounds
    b.add("baseline", f"LINE-style baseline, {len(clips)} clips, whole process (median of {n})",
          f"{bl['wall']:.2f} s wall, {bl['cpu']:.2f} s CPU, {bl['frames']:.0f} frames")
    b.add("baseline", f"`livemod moderate`, Open-NSFW rule only, product defaults (median of {n})",
          f"{lm['wall']:.2f} s wall, {lm['cpu']:.2f} s CPU, {lm['frames']:.0f} frames")
    b.add("baseline", "ratio baseline / livemod, wall time", f"{ratio_wall:.2f}x", ">= 3x", ratio_wall >= 3)
    b.add("baseline", "ratio baseline / livemod, CPU time", f"{ratio_cpu:.2f}x", ">= 3x", ratio_cpu >= 3)
    start_bl, start_lm = bl["wall"] - bl["work"], lm["wall"] - lm["work"]
    b.add("baseline", "ratio of the work alone (each side's own timer, after imports and model loading)",
          f"{bl['work'] / lm['work']:.2f}x ({bl['work']:.2f} s / {lm['work']:.2f} s; start-up and model loading "
          f"{start_bl:.2f} s / {start_lm:.2f} s)")
    secs = sum(_duration(c) for c in clips)
    b.details["baseline"] = "\n".join([
        f"Load average at start: {b.load_at_start}. Clips: " + ", ".join(c.name for c in clips)
        + f" ({secs:.0f} s of video, H.264, 2 s GOP). Both sides decode keyframes only; the baseline writes each "
        "as a JPEG, reads it back and classifies it alone with the FP32 model and onnxruntime's defaults; "
        "livemod runs with its defaults (`engines.precision: auto`, near-duplicate skip on). Wall and CPU "
        "time of the whole child process (resource.getrusage(RUSAGE_CHILDREN) deltas), rounds alternating.",
        "",
        "| round | baseline wall s | baseline CPU s | livemod wall s | livemod CPU s |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {i + 1} | {x['wall']:.2f} | {x['cpu']:.2f} | {y['wall']:.2f} | {y['cpu']:.2f} |"
          for i, (x, y) in enumerate(zip(runs["baseline"], runs["livemod"]))),
        "",
        f"Command lines: `{' '.join(Path(c).name if c.startswith('/') else c for c in cmds['baseline'][:2])} CLIPS "
        f"--model MODELS/open-nsfw-cam.onnx`; `livemod moderate CLIPS --policies-dir POL --policy nsfw-only "
        f"--no-evidence`.",
    ])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    x = np.arange(2)
    for i, (w, color) in enumerate((("baseline", "tab:gray"), ("livemod", "tab:blue"))):
        vals = [med[w]["wall"], med[w]["cpu"]]
        ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=w, color=color)
        for j, k in enumerate(("wall", "cpu")):
            ax.plot([x[j] + (i - 0.5) * 0.38] * len(runs[w]), [r[k] for r in runs[w]], "k.", ms=4)
    ax.set_xticks(x, ["wall time", "CPU time"])
    ax.set_ylabel("seconds (bars: medians, dots: rounds)")
    ax.set_title(f"LINE-style baseline vs livemod moderate ({len(clips)} clips): {ratio_wall:.2f}x wall")
    ax.legend()
    fig.tight_layout()
    b.plots["baseline"] = b.out / "baseline.png"
    fig.savefig(b.plots["baseline"])
    plt.close(fig)


def _duration(clip: Path) -> float:
    import av

    with av.open(str(clip)) as c:
        return float(c.duration or 0) / 1e6


def _cpu_per_call(fn: Callable[[], object], repeats: int) -> float:
    """Median process CPU seconds of one call (all threads of this process)."""
    times = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return statistics.median(times)


def stages(b: Bench) -> None:
    """CPU time per sampled frame of each stage, FP32 and INT8, one ONNX Runtime thread."""
    import av

    from livemod.decoders.sampling import thumb_hash
    from livemod.engines.preprocess import prepare_batch
    from livemod.engines.recheck import RecheckSpec, ScoreRequest, Watch
    from livemod.rules.evaluate import StreamState, evaluate
    from livemod.rules.types import Observation
    from livemod.stream.pipeline import Moderator
    from livemod.stream.records import FrameRef
    from livemod.stream.settings import Settings

    clip = b.clips()[0]
    reps = 1 if b.quick else 3
    base = Settings()
    stage_ms: dict[str, dict[str, float]] = {}

    def put(stage: str, prec: str, seconds: float) -> None:
        stage_ms.setdefault(stage, {})[prec] = seconds * 1e3

    for prec in ("fp32", "int8"):
        b.step(f"stages: loading the default policy's models at {prec.upper()} (one ONNX Runtime thread)")
        s = base.model_copy(update={
            "engines": base.engines.model_copy(update={"models_dir": b.models_dir.resolve(), "threads": 1,
                                                       "precision": prec, "max_batch": 1}),
            "rules": base.rules.model_copy(update={"default_policy": "default", "write_evidence": False}),
            "decoder": base.decoder.model_copy(update={"file_roots": (clip.parent.resolve(),)}),
        })
        mod = Moderator(s)
        policy = mod.policy("default")
        ref = FrameRef(stream_id="bench", uri=str(clip.resolve()), wall_start=0.0)
        decoded: list = []
        b.step(f"stages [{prec}]: the product decoder (keyframes, FFmpeg scaling, dHash) on {clip.name}")
        t = _cpu_per_call(lambda: decoded.__setitem__(slice(None), list(mod.decode(ref))), reps)
        frames = decoded
        n = len(frames)
        put("decoder total (keyframe decode + scale + hash + sampling)", prec, t / n)
        watches = mod.watches(policy)
        if prec == "fp32":
            b.step("stages: raw PyAV keyframe decode, FFmpeg scaling, thumbnail hash (precision-independent)")

            def raw_decode() -> int:
                with av.open(str(clip)) as c:
                    vs = c.streams.video[0]
                    vs.codec_context.skip_frame = "NONKEY"
                    return sum(1 for _ in c.decode(vs))

            keys = raw_decode()
            put("keyframe decode (PyAV, skip_frame=NONKEY)", prec, _cpu_per_call(raw_decode, reps) / keys)
            with av.open(str(clip)) as c:
                vf = next(c.decode(video=0))
            sizes = mod.sizes(policy)
            put("scale to the models' working sizes (FFmpeg AREA)", prec, _cpu_per_call(
                lambda: [vf.to_ndarray(format="rgb24", width=z.width, height=z.height, interpolation="AREA")
                         for z in sizes], reps * 20))
            put("near-duplicate hash (32x32 grey thumbnail + dHash)", prec, _cpu_per_call(
                lambda: thumb_hash(vf.to_ndarray(format="gray", width=32, height=32, interpolation="AREA")),
                reps * 50))
        imgs = {m: [f.images[mod.cards[m].working_size] for f in frames] for m in watches}
        put("pre-processing (both models)", prec, _cpu_per_call(
            lambda: [prepare_batch(mod.cards[m], [im]) for m in watches for im in imgs[m]], reps) / n)
        for m in watches:
            clf = mod.scorer.classifiers[m]
            batches = [prepare_batch(mod.cards[m], [im]) for im in imgs[m]]
            clf.infer(batches[0])
            put(f"inference {m} (batch 1)", prec, _cpu_per_call(lambda: [clf.infer(x) for x in batches], reps) / n)
        b.step(f"stages [{prec}]: engine stage (pre-processing + both models + class maps), then with a forced re-check")
        plain = {m: [Watch(w.label, None) for w in ws] for m, ws in watches.items()}
        put("engine: both models + class maps, no re-check", prec, _cpu_per_call(
            lambda: [mod.scorer.score([ScoreRequest(f, plain)]) for f in frames], reps) / n)
        forced = {m: [Watch(w.label, RecheckSpec(band=(0.0, 1.01), max_boxes=2, expand=1.5)) for w in ws]
                  for m, ws in watches.items()}
        rc_times = []
        for _ in range(reps):  # fresh frames: the full-resolution conversion is cached per frame
            fresh = list(mod.decode(ref))
            c0 = time.process_time()
            for f in fresh:
                mod.scorer.score([ScoreRequest(f, forced)])
            rc_times.append(time.process_time() - c0)
        put("engine with a re-check of every frame (2 CAM boxes per model)", prec, statistics.median(rc_times) / n)
        scored = [mod.scorer.score([ScoreRequest(f, plain)])[0] for f in frames]
        obs = [Observation("bench", f"bench/0@{i}", f.pts, f.wall_clock, sc) for i, (f, sc) in enumerate(zip(frames, scored))]

        def judge() -> None:
            st = StreamState()
            for o in obs:
                st, _v = evaluate(st, o, policy)

        put("rules (evaluate, default policy)", prec, _cpu_per_call(judge, reps * 20) / n)
        b.step(f"stages [{prec}]: the whole in-process pipeline (Moderator.moderate, default policy)")
        got: list = []
        t = _cpu_per_call(lambda: got.__setitem__(slice(None), list(mod.moderate(ref, StreamState()))), reps)
        put("whole pipeline (decode + engine + re-check where due + rules)", prec, t / max(len(got), 1))
        b.say(f"  [{prec}] {n} sampled frames; whole pipeline {t / max(len(got), 1) * 1e3:.1f} ms CPU per frame")

    w, h = _frame_size(clip)
    for stage, v in stage_ms.items():
        fp, i8 = v.get("fp32"), v.get("int8", v.get("fp32"))
        if stage.startswith(("keyframe decode", "scale", "near-duplicate")):
            b.add("stages", f"{stage}, ms CPU per sampled frame", f"{fp:.2f} (same at both precisions)")
        else:
            b.add("stages", f"{stage}, ms CPU per sampled frame", f"FP32 {fp:.2f}, INT8 {i8:.2f} ({fp / i8:.2f}x)")
    b.details["stages"] = (
        f"Load average at start: {b.load_at_start}. Clip {clip.name} ({w}x{h}, H.264, 2 s GOP); the `default` "
        "policy's models (Open-NSFW and EfficientNet-Lite0); one ONNX Runtime thread, batch 1; CPU time of this "
        f"process (time.process_time) per sampled frame, median of {reps} runs. `engines.precision` fp32 vs int8 "
        "(`auto` picks INT8 only where the prepare check holds; see `livemod check-config`).")
    plt = _plt()
    names = list(stage_ms)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5), dpi=100)
    y = np.arange(len(names))
    ax.barh(y + 0.2, [stage_ms[k]["fp32"] for k in names], 0.4, label="FP32")
    ax.barh(y - 0.2, [stage_ms[k].get("int8", stage_ms[k]["fp32"]) for k in names], 0.4, label="INT8")
    ax.set_yticks(y, [k if len(k) < 48 else k[:46] + "..." for k in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms CPU per sampled frame (log scale), median")
    ax.set_title(f"Per-stage CPU time per sampled frame ({w}x{h} H.264)")
    ax.legend()
    fig.tight_layout()
    b.plots["stages"] = b.out / "stages.png"
    fig.savefig(b.plots["stages"])
    plt.close(fig)


def _frame_size(clip: Path) -> tuple[int, int]:
    import av

    with av.open(str(clip)) as c:
        vs = c.streams.video[0]
        return vs.codec_context.width, vs.codec_context.height


class WorkerWatch(threading.Thread):
    """Samples this process's `livemod worker` child: its CPU time (/proc) and its counters (/metrics on the
    port its LIVEMOD_WORKER settings name), so that the worker's own CPU per frame can be set beside the
    isolated stages' even when other work on the machine takes cores away from it."""

    def __init__(self, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.every, self.halt = every, threading.Event()
        self.samples: list[tuple[float, float, float]] = []  # (time, worker CPU s, frames sampled)

    def _find(self) -> tuple[int, int] | None:
        import json

        me = str(os.getpid())
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[1] != me:
                    continue
                if b"livemod.stream.cli\0worker" not in (d / "cmdline").read_bytes():
                    continue
                env = dict(x.split(b"=", 1) for x in (d / "environ").read_bytes().split(b"\0") if b"=" in x)
                return int(d.name), int(json.loads(env[b"LIVEMOD_WORKER"])["web_port"])
            except (OSError, IndexError, KeyError, ValueError):
                continue
        return None

    def run(self) -> None:
        from ceiling import counters, proc_cpu_s

        found = None
        while not self.halt.wait(self.every):
            if found is None:
                found = self._find()
                continue
            pid, port = found
            frames = counters(f"http://127.0.0.1:{port}/metrics").get("livemod_frames_sampled_total")
            cpu = proc_cpu_s(pid)
            if frames is None or cpu != cpu:
                found = None  # gone (or not serving yet)
                continue
            self.samples.append((time.perf_counter(), cpu, frames))

    def busy(self) -> dict[str, float]:
        """From the first to the last sample where the frame count moved: CPU per frame and cores used."""
        moving = [i for i in range(1, len(self.samples)) if self.samples[i][2] > self.samples[i - 1][2]]
        if not moving:
            return {"cpu_per_frame": float("nan"), "cores": float("nan")}
        a, z = self.samples[moving[0] - 1], self.samples[moving[-1]]
        return {"cpu_per_frame": (z[1] - a[1]) / max(z[2] - a[2], 1), "cores": (z[1] - a[1]) / max(z[0] - a[0], 1e-9)}


def service(b: Bench) -> None:
    """One worker on the bundled broker (service_load.run_once) against its stages' isolated capacity."""
    import service_load as sl

    from livemod.decoders.sampling import SamplerState
    from livemod.demo.synth import write_hls
    from livemod.rules.evaluate import StreamState
    from livemod.stream.pipeline import Moderator
    from livemod.stream.records import FrameRef
    from livemod.stream.settings import Settings

    streams, segments = (2, 2) if b.quick else (8, 6)
    w, h = (320, 180) if b.quick else (1280, 720)
    tmp = b.tmp / "service"
    segs: dict[str, list[Path]] = {}
    bgs = ["hopper", "astronaut", "rocket", "coffee"]
    for i in range(streams):
        b.step(f"service: encoding stream {i + 1}/{streams} ({segments} x 2 s MPEG-TS segments, {w}x{h}, 15 fps)")
        pl = write_hls(tmp / f"s{i}", broadcast(w, h, 15, 2.0 * segments, bgs[i % 4], i % 3 == 0), fps=15,
                       segment_seconds=2.0)
        segs[f"s{i}"] = sorted(pl.parent.glob("seg*.ts"))
    base = Settings()
    base = base.model_copy(update={"decoder": base.decoder.model_copy(update={
        "sampling": base.decoder.sampling.model_copy(update={"mode": "interval", "interval_s": 1.0})})})

    # the isolated capacity: the same stages in this process, no broker, one thread, CPU time per frame
    b.step("service: isolated stage capacity (the in-process pipeline over the same segments, one thread)")
    s = base.model_copy(update={
        "engines": base.engines.model_copy(update={"models_dir": b.models_dir.resolve(), "threads": 1}),
        "rules": base.rules.model_copy(update={"default_policy": "demo", "write_evidence": False}),
        "decoder": base.decoder.model_copy(update={"file_roots": (tmp.resolve(),)}),
    })
    mod = Moderator(s)
    warm = FrameRef(stream_id="warm", uri=str(segs["s0"][0].resolve()), wall_start=0.0)
    list(mod.moderate(warm, StreamState()))
    frames, c0, t0 = 0, time.process_time(), time.perf_counter()
    for sid, files in segs.items():
        st, sampler = StreamState(), SamplerState()
        for i, f in enumerate(files):
            for _f, _sc, _d, st in mod.moderate(FrameRef(stream_id=sid, uri=str(f.resolve()), seq=i,
                                                         wall_start=2.0 * i, duration=2.0), st, sampler):
                frames += 1
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    cores = os.cpu_count() or 1
    capacity = cores * frames / cpu
    b.say(f"  isolated: {frames} sampled frames, {cpu / frames * 1e3:.1f} ms CPU per frame -> "
          f"capacity {capacity:.1f} frames/s on {cores} cores")
    del mod

    broker = b.broker()
    b.step(f"service: backlog run, {streams * segments} references published at once, one worker")
    watch = WorkerWatch()
    watch.start()
    try:
        backlog = sl.run_once(broker, base, segs, 16, 10.0, tmp, b.models_dir, paced=False)
    finally:
        watch.halt.set()
        watch.join()
    wk = watch.busy()
    paced = None
    if not b.quick:
        sub = dict(list(segs.items())[:4])
        b.step(f"service: live pacing, {len(sub)} streams x {segments} segments published as recorded")
        paced = sl.run_once(broker, base, sub, 16, 10.0, tmp, b.models_dir, paced=True)
    share = backlog["steady_frames_per_s"] / capacity
    share_all = backlog["frames_per_s"] / capacity
    b.add("service", f"isolated stage capacity (decode + engine + rules, demo policy; {cores} cores x 1 / CPU per frame)",
          f"{capacity:.1f} frames/s ({cpu / frames * 1e3:.1f} ms CPU per frame)")
    b.add("service", f"one worker, backlog of {backlog['refs']:.0f} references",
          f"{backlog['steady_frames_per_s']:.1f} frames/s steady ({backlog['frames_per_s']:.1f} frames/s, "
          f"{backlog['refs_per_s']:.2f} refs/s from the first publish to the last reference handled); "
          f"p50/p99 {backlog['p50']:.2f}/{backlog['p99']:.2f} s")
    b.add("service", "worker throughput / stage capacity, steady state (whole window incl. start)",
          f"{share:.0%} ({share_all:.0%})", ">= 85%", share >= 0.85)
    b.add("service", "worker CPU per sampled frame (backlog) vs the isolated stages'",
          f"{wk['cpu_per_frame'] * 1e3:.1f} ms vs {cpu / frames * 1e3:.1f} ms; the worker got {wk['cores']:.2f} "
          f"of {cores} cores")
    if paced is not None:
        b.add("service", f"one worker, live pacing ({paced['refs']:.0f} references)",
              f"{paced['frames_per_s']:.1f} frames/s, segment->decision p50/p99 {paced['p50']:.2f}/{paced['p99']:.2f} s")
    b.details["service"] = (
        f"Load average at start: {b.load_at_start}. {streams} streams x {segments} segments of 2 s ({w}x{h}, 15 fps, "
        "MPEG-TS), sampled once a second (interval mode), the `demo` policy (both models, re-check on), the "
        "default batcher (max 16, 10 ms). Capacity: the in-process pipeline (Moderator) over the same segments "
        f"with one ONNX Runtime thread took {cpu / frames * 1e3:.1f} ms of CPU per sampled frame ({wall:.1f} s wall "
        f"for {frames} frames), so the machine's {cores} cores could do {capacity:.1f} frames/s if nothing else ran. "
        "The worker (benchmarks/service_load.py's run_once: Tansu, one `livemod worker`, threads = all cores) "
        "is timed from publishing to the last reference handled (the whole window, which includes the first "
        "fetch and the first inferences' warm-up) and in steady state, from a tenth of the references handled to "
        "the last (the figure compared with the target); latency is segment wall clock -> decision from "
        "the worker's histogram. Other work on a shared machine takes cores from the worker but not from the "
        "CPU-time capacity, so the share reads low when the machine is busy; the worker's own CPU per frame "
        "(from /proc while its frame count moved) and the cores it got are given beside it for that reason.")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    labels = ["stage capacity", "worker: backlog (steady)"] + (["worker: live pacing"] if paced else [])
    vals = [capacity, backlog["steady_frames_per_s"]] + ([paced["frames_per_s"]] if paced else [])
    ax.bar(labels, vals, color=["tab:gray", "tab:blue", "tab:green"][: len(vals)])
    ax.axhline(0.85 * capacity, color="red", ls="--", label="85% of capacity (target)")
    ax.set_ylabel("sampled frames/s")
    ax.set_title(f"Service vs stage capacity: {share:.0%} (backlog)")
    ax.legend()
    fig.tight_layout()
    b.plots["service"] = b.out / "service.png"
    fig.savefig(b.plots["service"])
    plt.close(fig)


def ceiling(b: Bench) -> None:
    """Orchestration ceiling: one worker, then one per core, near-free decode and inference."""
    from ceiling import run_ceiling

    refs, clip_refs, clip_frames = (300, 2, 120) if b.quick else (5000, 12, 600)
    cores = os.cpu_count() or 1
    runs = {}
    for procs in sorted({1, cores}):
        b.step(f"ceiling: {procs} worker process(es) with the 32x32 one-conv model on the bundled broker")
        runs[procs] = run_ceiling(b.broker(), b.tmp / f"ceiling-{procs}", refs=refs, clip_refs=clip_refs,
                                  clip_frames=clip_frames, say=b.say, processes=procs)
        for name, r in runs[procs].items():
            if r["ok"] < r["refs"]:
                b.say(f"  WARNING: ceiling {name}: only {r['ok']:.0f} of {r['refs']} references were handled")
    im, fr = runs[1]["images"], runs[1]["frames"]
    b.add("ceiling", f"image references (64x64 JPEG), one worker process ({im['refs']} refs, {im['ok']:.0f} handled)",
          f"{im['refs_per_s']:.0f} refs/s", ">= 1,000 refs/s", im["refs_per_s"] >= 1000)
    b.add("ceiling", "worker CPU per image reference (broker CPU apart)",
          f"{im['worker_cpu_ms_per_ref']:.2f} ms (broker {im['broker_cpu_s'] / im['refs'] * 1e3:.2f} ms)")
    b.add("ceiling", f"sampled frames/s, {fr['refs']} segments of {clip_frames} frames (64x64, interval mode), "
          "one worker process",
          f"{fr['frames_per_s']:.0f} frames/s ({fr['worker_cpu_ms_per_frame']:.2f} ms worker CPU per frame)",
          ">= 2,000 frames/s", fr["frames_per_s"] >= 2000)
    if cores > 1:
        imn, frn = runs[cores]["images"], runs[cores]["frames"]
        b.add("ceiling", f"the node: `livemod worker --processes {cores}` (one per core, one consumer group), "
              "image references", f"{imn['refs_per_s']:.0f} refs/s ({imn['worker_cpu_ms_per_ref']:.2f} ms CPU each)",
              ">= 1,000 refs/s per node", imn["refs_per_s"] >= 1000)
        b.add("ceiling", f"the node: {cores} worker processes, sampled frames/s",
              f"{frn['frames_per_s']:.0f} frames/s", ">= 2,000 frames/s per node", frn["frames_per_s"] >= 2000)
    b.details["ceiling"] = (
        f"Load average at start: {b.load_at_start}. The bundled broker (Tansu) and `livemod worker` processes "
        "(defaults: ONNX Runtime on all cores, max batch 16, 10 ms batcher wait, max 8 references in flight) whose "
        "only model is tests/tinymodels.py's 32x32 one-conv model with a `cams` output, behind a one-rule policy "
        "that raises nothing; first one process, then one per core in one consumer group (8 partitions shared). "
        "Image phase: 64x64 JPEG snapshots as `image` references over 64 streams, all "
        "published at once after a warm-up; timed from the first publish to the last reference handled. Frame "
        f"phase: a 64x64 H.264 clip of {clip_frames} frames, every frame sampled (interval 1 ms), one reference "
        "per stream. CPU from /proc/<pid>/stat of the workers and of the broker. One process is bound by its "
        "global interpreter lock: the event loop (Faust, aiokafka, our handling) and the decoder threads' Python "
        "share it, so one process uses about one core whatever the machine has (py-spy: the loop thread idles "
        "in select while the decoder threads wait for the lock). "
        + "; ".join(f"{p} process(es): images {r['images']['seconds']:.2f} s for {r['images']['refs']} refs, frames "
                    f"{r['frames']['frames']:.0f} in {r['frames']['seconds']:.2f} s" for p, r in runs.items()) + ".")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), dpi=100)
    names = [f"{p} process" + ("es" if p > 1 else "") for p in runs]
    for ax, key, unit, target, label in ((axes[0], "images", "refs_per_s", 1000, "image references/s"),
                                         (axes[1], "frames", "frames_per_s", 2000, "sampled frames/s")):
        ax.bar(names, [r[key][unit] for r in runs.values()], color=["tab:blue", "tab:cyan"][: len(runs)])
        ax.axhline(target, color="red", ls="--", label=f"target {target:,}")
        ax.set_ylabel(label)
        ax.legend(loc="upper left")
    fig.suptitle("Orchestration ceiling (near-free decode and model)")
    fig.tight_layout()
    b.plots["ceiling"] = b.out / "ceiling.png"
    fig.savefig(b.plots["ceiling"])
    plt.close(fig)


def rules(b: Bench) -> None:
    """The rule stage alone: evaluate() on synthetic FrameScores, scored frames/s."""
    from livemod.engines.types import FrameScores
    from livemod.rules.evaluate import StreamState, evaluate
    from livemod.rules.policy import Policy
    from livemod.rules.types import Observation

    policy = Policy.model_validate({"name": "bench", "audit_fraction": 0.0, "rules": [
        {"name": "adult", "model": "m1", "label": "nsfw", "review": 0.5, "alert": 0.8, "window": {"k": 2, "n": 3},
         "close_below": 0.4, "close_after": 5, "cooldown_s": 60, "recheck": None},
        {"name": "firearm", "model": "m2", "label": "firearm", "review": 0.3, "alert": 0.6,
         "window": {"k": 2, "n": 4}, "close_after": 6, "cooldown_s": 120},
        {"name": "cat", "model": "m2", "label": "cat", "review": 0.3, "alert": 0.6, "window": {"k": 3, "n": 5},
         "cooldown_s": 30, "recheck": None},
        {"name": "knife", "model": "m3", "label": "knife", "review": 0.4, "alert": 0.7, "window": {"k": 1, "n": 1},
         "cooldown_s": 10, "recheck": None},
    ]})
    n = 10_000 if b.quick else 60_000
    streams = 16
    b.step(f"rules: building {n:,} synthetic observations over {streams} streams (4 rules, 3 models)")
    rng = np.random.default_rng(0)
    # mostly quiet frames with bursts above the thresholds, so windows fill, incidents open and close
    base = rng.beta(0.6, 6.0, size=(n, 4))
    burst = (np.arange(n) // (streams * 40)) % 7 == 3
    base[burst] = np.clip(base[burst] + 0.7, 0, 1)
    obs = []
    for i in range(n):
        p = base[i]
        scores = {
            "m1": FrameScores("m1", "1", {"nsfw": float(p[0])}, {}, {}),
            "m2": FrameScores("m2", "1", {"firearm": float(p[1]), "cat": float(p[2])}, {}, {}),
            "m3": FrameScores("m3", "1", {"knife": float(p[3])}, {}, {}),
        }
        sid = f"s{i % streams}"
        t = 1.7e9 + (i // streams) * 0.5
        obs.append(Observation(sid, f"{sid}/{i // streams}@0", (i // streams) * 0.5, t, scores))
    reps = 1 if b.quick else 5
    rates, walls, verdicts = [], [], 0
    for r in range(reps):
        b.step(f"rules: evaluate() pass {r + 1}/{reps} over {n:,} frames")
        states = {f"s{i}": StreamState() for i in range(streams)}
        verdicts = 0
        t0, c0 = time.perf_counter(), time.thread_time()
        for o in obs:
            st, v = evaluate(states[o.stream_id], o, policy)
            states[o.stream_id] = st
            verdicts += len(v)
        rates.append(n / (time.thread_time() - c0))
        walls.append(n / (time.perf_counter() - t0))
    rate = statistics.median(rates)
    b.add("rules", f"evaluate() alone, 4 rules over 3 models, {streams} streams ({verdicts:,} verdicts per pass)",
          f"{rate:,.0f} scored frames/s per CPU second ({1e6 / rate:.1f} us per frame; "
          f"{statistics.median(walls):,.0f}/s by the wall clock)", ">= 100,000 frames/s", rate >= 100_000)
    b.details["rules"] = (
        f"Load average at start: {b.load_at_start}. One Python thread; {n:,} pre-built observations (Beta-distributed "
        "scores with bursts over the thresholds so that windows fill and incidents open and close), "
        f"median of {reps} passes, counted on the thread's CPU clock (the machine is shared, so the wall clock "
        "also counts time the thread was not running): " + ", ".join(f"{x:,.0f}" for x in rates)
        + " frames/s; by the wall clock: " + ", ".join(f"{x:,.0f}" for x in walls) + " frames/s.")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar([f"pass {i + 1}" for i in range(len(rates))], rates, color="tab:blue")
    ax.axhline(100_000, color="red", ls="--", label="target 100,000")
    ax.set_ylabel("scored frames/s")
    ax.set_title("Rule stage alone (evaluate)")
    ax.legend()
    fig.tight_layout()
    b.plots["rules"] = b.out / "rules.png"
    fig.savefig(b.plots["rules"])
    plt.close(fig)


RUNNERS: dict[str, Callable[[Bench], None]] = {
    "baseline": baseline, "stages": stages, "service": service, "ceiling": ceiling, "rules": rules}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench"), help="results folder (default out/bench)")
    ap.add_argument("--only", action="append", choices=SECTIONS, help="run this section only (repeatable)")
    ap.add_argument("--quick", action="store_true", help="smoke size (for the test; numbers not for quoting)")
    ap.add_argument("--rounds", type=int, default=None, help="baseline rounds (default 5, 1 with --quick)")
    ap.add_argument("--models-dir", type=Path, default=Path(".cache/livemod/models"))
    ap.add_argument("--keep", action="store_true", help="keep the generated media and logs (temp folder named on stderr)")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    models_dir = args.models_dir.resolve()
    if not (models_dir / "open-nsfw-cam.onnx").exists():
        print(f"no prepared models in {models_dir}: run `livemod models prepare` first", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="livemod-bench-"))
    b = Bench(out=args.out.resolve(), quick=args.quick, rounds=args.rounds or (1 if args.quick else 5),
              models_dir=models_dir, tmp=tmp, facts=machine_facts())
    f = b.facts
    b.say(f"machine: {f['cpu']}, {f['cores']} cores, Python {f['python']}, av {f['av']}, onnxruntime {f['onnxruntime']}; "
          f"load average {load_average()}; results into {b.out}; work folder {tmp}")
    stop = threading.Event()
    beat = threading.Thread(target=b.heartbeat, args=(stop, 5.0 if args.quick else 15.0), daemon=True)
    beat.start()
    try:
        for name in args.only or SECTIONS:
            b.load_at_start = load_average()
            t0 = time.monotonic()
            b.step(f"== {name} ==")
            try:
                RUNNERS[name](b)
            except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others' results
                traceback.print_exc()
                b.failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            b.say(f"{name} done in {time.monotonic() - t0:.0f} s")
            b.write()
    finally:
        stop.set()
        b.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    path = b.write()
    b.say(f"results: {path} (plots: {', '.join(p.name for p in b.plots.values()) or 'none'}); "
          f"total {time.monotonic() - b.started:.0f} s")
    print(path.read_text())
    return 1 if b.failed else 0


if __name__ == "__main__":
    sys.exit(main())
