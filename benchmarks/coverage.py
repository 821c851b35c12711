"""The coverage guarantee: the longest stretch of stream time without a sampled frame, per clip, before and after.

    .venv/bin/python benchmarks/coverage.py [--seconds 16] [--max-gap 3] [--out out/bench]

Encodes every clip of ``livemod.demo.synth.COVERAGE_CASES`` (x264 periodic intra refresh in
MPEG-TS and in MP4, a keyframe every 10 s, open-GOP HEVC, VP9, AV1, keyframes that stop and come
back) with PyAV, then samples each with the decoder twice in one run: keyframes only with the
guarantee off (``max_gap_s`` larger than the clip: what sampling did before the guarantee), and
with the default settings (``max_gap_s`` 3 s). For each: the max gap (from the start, between
samples and to the last frame), the sampled frames, the frames the decoder produced and its CPU
time. A Markdown table on stdout, ``coverage.png`` into --out, progress on stderr.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from livemod.core.types import Resize
from livemod.decoders.config import DecoderConfig, SamplerConfig
from livemod.decoders.pyav import decode
from livemod.decoders.sampling import SamplerState
from livemod.demo.synth import COVERAGE_CASES, last_pts, write_coverage_clip


def measure(path: Path, max_gap_s: float) -> dict[str, float]:
    """Sample ``path`` with the given guarantee; max gap, samples, frames decoded, CPU seconds."""
    cfg = DecoderConfig(file_roots=(path.parent,), hwaccel="none",
                        sampling=SamplerConfig(max_gap_s=max_gap_s, scene_threshold=0))
    state = SamplerState()
    c0 = time.process_time()
    pts = [f.pts for f in decode(str(path), stream_id=path.stem, sizes=[Resize(224, 224)], config=cfg, state=state)]
    cpu = time.process_time() - c0
    end = last_pts(path)
    gaps = [pts[0], *np.diff(pts), end - pts[-1]] if pts else [end]
    return {"max_gap": float(max(gaps)), "samples": len(pts), "decoded": state.decoded, "cpu": cpu,
            "fallbacks": state.fallbacks}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=16.0, help="length of each clip")
    ap.add_argument("--max-gap", type=float, default=3.0, help="the guarantee (default: the product's 3 s)")
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"av {av.__version__}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="livemod-coverage-") as tmp:
        for case in COVERAGE_CASES:
            print(f"[coverage] {case}: encoding {args.seconds:.0f} s at 320x180 ...", file=sys.stderr, flush=True)
            path = write_coverage_clip(tmp, case, seconds=args.seconds)
            off = measure(path, max_gap_s=10 * args.seconds)
            on = measure(path, max_gap_s=args.max_gap)
            rows.append((case, off, on))
            print(f"[coverage] {case}: max gap {off['max_gap']:.2f} s -> {on['max_gap']:.2f} s", file=sys.stderr,
                  flush=True)
    print(f"Clips of {args.seconds:.0f} s (320x180, 25 fps, a moving pattern); max gap counts the start and the "
          f"end of the clip. Before: keyframes only, guarantee off. After: `max_gap_s: {args.max_gap:g}` (default), "
          "interval fallback at `interval_s: 1`.\n")
    print("| clip | max gap before (s) | samples before | max gap after (s) | samples after | interval fallback | "
          "frames decoded before / after | decoder CPU before / after (s) |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for case, off, on in rows:
        print(f"| {case} | {off['max_gap']:.2f} | {off['samples']} | {on['max_gap']:.2f} | {on['samples']} | "
              f"{'yes' if on['fallbacks'] else 'no'} | {off['decoded']} / {on['decoded']} | "
              f"{off['cpu']:.2f} / {on['cpu']:.2f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=100)
    y = np.arange(len(rows))
    ax.barh(y + 0.2, [r[1]["max_gap"] for r in rows], 0.4, label="keyframes only (before)", color="tab:gray")
    ax.barh(y - 0.2, [r[2]["max_gap"] for r in rows], 0.4, label=f"guarantee {args.max_gap:g} s (after)",
            color="tab:blue")
    ax.axvline(args.max_gap, color="red", ls="--", label="max_gap_s")
    ax.set_yticks(y, [r[0] for r in rows])
    ax.set_xlabel("longest stretch without a sampled frame (s)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out / "coverage.png")
    print(f"\n![coverage]({(args.out / 'coverage.png')})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
