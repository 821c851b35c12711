"""Cost and detection rates of the built-in signals (engines/signals.py): quality, QR codes, on-screen text.

    .venv/bin/python benchmarks/signals.py [--rounds 5] [--frames 8] [--skip-ocr] [--out out/bench]

1. quality: microseconds per decoded 1080p / 720p frame for the full-resolution grey
   (FFmpeg) and the quality maths, next to what every sampled frame already pays (FFmpeg's
   224x224 RGB working image), alternating round by round; medians.
2. blur: the variance of the Laplacian at the work width (640) and the ``blurred`` score of
   real photos (scikit-image, matplotlib) filling a 1080p frame, Gaussian-blurred and JPEG'd.
3. QR: cv2.QRCodeDetector vs cv2.QRCodeDetectorAruco on codes made with cv2.QRCodeEncoder,
   pasted into 1080p photos at several sizes, clean, JPEG-recompressed and blurred: the share
   decoded (with the right text), false codes on frames without one, median ms per frame.
4. text: RapidOCR (if installed) per frame at 640x360 and 1080p, and which rendered lines were read.

Tables go to stdout as Markdown; signals.png (QR decode rates) into --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from _common import machine

PAYLOAD = "https://win.scam.example/prize?id=1234"
QR_SIDES = (40, 60, 80, 100, 150, 250)  # px of the code (without its quiet zone) in a 1920x1080 frame
CONDITIONS = {  # name -> (Gaussian sigma in 1080p pixels, JPEG quality or None)
    "clean": (0.0, None),
    "jpeg q60": (0.0, 60),
    "blur 1 + jpeg q60": (1.0, 60),
    "blur 1.5 + jpeg q40": (1.5, 40),
}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def photos() -> dict[str, np.ndarray]:
    """Real photos shipped in wheels, grey uint8."""
    from skimage import data

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass", "gravel", "coins", "horse"):
        im = getattr(data, name)()
        if im.dtype == bool:  # the horse is a silhouette
            im = im.astype(np.uint8) * 255
        if im.ndim == 3:
            im = cv2.cvtColor(im[..., :3], cv2.COLOR_RGB2GRAY)
        out[name] = im.astype(np.uint8)
    import matplotlib

    hopper = Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg"
    out["grace_hopper"] = cv2.imread(str(hopper), cv2.IMREAD_GRAYSCALE)
    return out


def cover(img: np.ndarray, w: int = 1920, h: int = 1080) -> np.ndarray:
    """Scale (cubic) to cover w x h and crop the top-left w x h."""
    ih, iw = img.shape[:2]
    s = max(w / iw, h / ih)
    return cv2.resize(img, (round(iw * s) + 1, round(ih * s) + 1), interpolation=cv2.INTER_CUBIC)[:h, :w]


def degrade(img: np.ndarray, sigma: float, quality: int | None) -> np.ndarray:
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if quality is not None:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return img


def qr_image(text: str, side: int) -> np.ndarray:
    """The encoder's QR image (its own quiet zone included) scaled to ``side`` px, nearest neighbour."""
    return cv2.resize(cv2.QRCodeEncoder.create().encode(text), (side, side), interpolation=cv2.INTER_NEAREST)


# ---- 1. quality cost ---------------------------------------------------------------------


def quality_cost(rounds: int, bg: list[np.ndarray]) -> list[tuple[str, float, float, float]]:
    from livemod.engines.signals import QualityConfig, Signals, _Stream

    cfg = QualityConfig()
    rows = []
    for w, h in ((1920, 1080), (1280, 720)):
        frames = []
        for i in range(8):
            rgb = cv2.cvtColor(cover(bg[i % len(bg)], w, h), cv2.COLOR_GRAY2RGB)
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            f.time_base = Fraction(1, 30)
            frames.append(f)
        times: dict[str, list[float]] = {"gray": [], "maths": [], "work224": [], "full": []}
        st = _Stream()
        gh = round(h * cfg.work_width / w)
        for r in range(rounds):
            for f in frames:
                steps = ["work224", "gray", "full"]
                if r % 2:
                    steps.reverse()
                gray = None
                for step in steps:
                    t0 = time.perf_counter()
                    if step == "gray":  # what SampledFrame.gray(work_width) does
                        gray = f.to_ndarray(format="gray", width=cfg.work_width, height=gh, interpolation="AREA")
                    elif step == "full":  # SampledFrame.gray(): what a QR scan reads
                        f.to_ndarray(format="gray")
                    else:
                        f.to_ndarray(format="rgb24", width=224, height=224, interpolation="AREA")
                    times[step].append((time.perf_counter() - t0) * 1e6)
                t0 = time.perf_counter()
                Signals.quality(st, gray, 0.5, cfg)
                times["maths"].append((time.perf_counter() - t0) * 1e6)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((f"{w}x{h}", med["gray"], med["maths"], med["work224"], med["full"]))
    return rows


# ---- 2. blur calibration -------------------------------------------------------------------


def blur_table(bg: dict[str, np.ndarray]) -> tuple[list[float], list[tuple[str, list[tuple[float, float]]]]]:
    from livemod.engines.signals import QualityConfig, blur_score, laplacian_var, work_gray

    cfg = QualityConfig()
    sigmas = [0.0, 1.0, 2.0, 3.0, 5.0, 8.0]
    rows = []
    for name, img in bg.items():
        big = cover(img)
        cells = []
        for s in sigmas:
            work = work_gray(degrade(big, s, 75), cfg.work_width)
            v = laplacian_var(work)
            cells.append((v, blur_score(v, float(work.std()), cfg)))
        rows.append((name, cells))
    return sigmas, rows


# ---- 3. QR detection -----------------------------------------------------------------------


def qr_table(bg: list[np.ndarray], frames: int) -> tuple[dict, dict]:
    from livemod.engines.signals_qr import find_codes, make_detector

    rng = np.random.default_rng(7)
    detectors = {"classic": make_detector("classic"), "aruco": make_detector("aruco")}
    found: dict[tuple[str, str, int], list[bool]] = {}
    ms: dict[tuple[str, str, int], list[float]] = {}
    for ci, (cond, (sigma, q)) in enumerate(CONDITIONS.items()):
        for side in (0, *QR_SIDES):  # 0: no code in the frame
            for k in range(frames):
                img = cover(bg[k % len(bg)]).copy()
                if side:
                    code = qr_image(PAYLOAD, side)
                    y = int(rng.integers(0, 1080 - code.shape[0]))
                    x = int(rng.integers(0, 1920 - code.shape[1]))
                    img[y : y + code.shape[0], x : x + code.shape[1]] = code
                img = degrade(img, sigma, q)
                order = list(detectors.items())
                if k % 2:
                    order.reverse()
                for name, det in order:
                    t0 = time.perf_counter()
                    codes = find_codes(det, img)
                    ms.setdefault((name, cond, side), []).append((time.perf_counter() - t0) * 1000)
                    ok = any(c.text == PAYLOAD for c in codes) if side else bool(codes)
                    found.setdefault((name, cond, side), []).append(ok)
            say(f"  QR {cond}: side {side or 'none'} done")
    return found, ms


# ---- 4. OCR -------------------------------------------------------------------------------

LINES = ("Call +1 555 123 4567", "visit scam-site.example/win", "@freebies_now")


def text_frame(w: int, h: int, bg: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(cover(bg, w, h), cv2.COLOR_GRAY2RGB)
    scale = h / 360
    for i, line in enumerate(LINES):
        org = (round(20 * scale), round((80 + 100 * i) * scale))
        cv2.rectangle(rgb, (org[0] - 8, org[1] - round(36 * scale)), (org[0] + round(560 * scale), org[1] + round(12 * scale)),
                      (0, 0, 0), -1)
        cv2.putText(rgb, line, org, cv2.FONT_HERSHEY_SIMPLEX, 1.1 * scale, (255, 255, 255), max(1, round(2 * scale)),
                    cv2.LINE_AA)
    return rgb


def ocr_rows(rounds: int, bg: np.ndarray) -> list[tuple[str, int, float, str]]:
    from livemod.engines.signals_text import Reader, ocr_unavailable

    if ocr_unavailable():
        say(f"text: {ocr_unavailable()}")
        return []
    reader = Reader()
    rows = []
    for (w, h), max_side in (((640, 360), 960), ((1280, 720), 960), ((1920, 1080), 960), ((1920, 1080), 1280)):
        img = text_frame(w, h, bg)
        reader.read(img, max_side)  # first call per shape builds ONNX Runtime's buffers
        times, lines = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            lines = reader.read(img, max_side)
            times.append((time.perf_counter() - t0) * 1000)
        got = sum(any(want in f.text or f.text in want for f in lines) for want in LINES)
        rows.append((f"{w}x{h}", max_side, statistics.median(times), f"{got}/{len(LINES)}"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=8, help="frames per QR size and condition")
    ap.add_argument("--skip-ocr", action="store_true")
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args()
    say(f"machine: {machine()}")
    bg = photos()
    bgl = list(bg.values())
    threads = cv2.getNumThreads()

    say("quality cost ...")
    q = quality_cost(args.rounds, bgl)
    print(f"Machine: {machine()}; OpenCV {cv2.__version__} ({threads} threads); medians; the machine was shared\n")
    print("### quality: cost per decoded frame (microseconds)\n")
    print("| frame | 640-wide grey (FFmpeg) | quality maths | quality total | 224x224 RGB working image (paid already) "
          "| quality / working image | full-res grey (a QR scan's input) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size, g, m, w, full in q:
        print(f"| {size} | {g:.0f} | {m:.0f} | {g + m:.0f} | {w:.0f} | {(g + m) / w:.2f}x | {full:.0f} |")

    sigmas, rows = blur_table(bg)
    print("\n### blur: variance of the Laplacian at 640 px wide / `blurred` score (photos filling 1080p, JPEG q75)\n")
    print("| photo | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " |")
    print("|---|" + "---:|" * len(sigmas))
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(f"{v:.0f} / {b:.2f}" for v, b in cells) + " |")

    say("QR ...")
    found, ms = qr_table(bgl, args.frames)
    enc = cv2.QRCodeEncoder.create().encode(PAYLOAD)
    ys, _ = np.nonzero(enc == 0)
    modules = int(ys.max() - ys.min() + 1)
    print(f"\n### QR codes in 1080p photos: decoded share ({args.frames} frames per cell; payload {len(PAYLOAD)} characters, "
          f"{modules}x{modules} modules; the side is the encoder's image with its quiet zone) and median ms per frame\n")
    print("| condition | detector | " + " | ".join(f"{s} px" for s in QR_SIDES) + " | no code: false codes | ms (no code) | ms (code) |")
    print("|---|---|" + "---:|" * (len(QR_SIDES) + 3))
    for cond in CONDITIONS:
        for det in ("classic", "aruco"):
            rates = [sum(found[(det, cond, s)]) / len(found[(det, cond, s)]) for s in QR_SIDES]
            fp = sum(found[(det, cond, 0)])
            with_code = statistics.median([t for s in QR_SIDES for t in ms[(det, cond, s)]])
            print(f"| {cond} | {det} | " + " | ".join(f"{r:.0%}" for r in rates)
                  + f" | {fp}/{len(found[(det, cond, 0)])} | {statistics.median(ms[(det, cond, 0)]):.0f} | {with_code:.0f} |")

    if not args.skip_ocr:
        say("OCR ...")
        o = ocr_rows(args.rounds, bg["astronaut"])
        if o:
            print("\n### text: RapidOCR (PP-OCRv6 small, no angle classifier) per frame\n")
            print("| frame | max_side | ms per frame | rendered lines read |")
            print("|---|---:|---:|---|")
            for size, side, t, got in o:
                print(f"| {size} | {side} | {t:.0f} | {got} |")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(CONDITIONS), figsize=(3.2 * len(CONDITIONS), 3), sharey=True)
    for ax, cond in zip(axes, CONDITIONS):
        for det in ("classic", "aruco"):
            ax.plot(QR_SIDES, [sum(found[(det, cond, s)]) / len(found[(det, cond, s)]) for s in QR_SIDES], "o-", label=det)
        ax.set_title(cond, fontsize=9)
        ax.set_xlabel("code side (px of 1080p)")
    axes[0].set_ylabel("decoded share")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "signals.png", dpi=120)
    say(f"wrote {out / 'signals.png'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
