"""The LINE-style baseline: each clip's keyframes to JPEG files, then Open-NSFW on each file, one by one.

    .venv/bin/python benchmarks/baseline_line.py CLIP... [--model .cache/livemod/models/open-nsfw-cam.onnx]

Written the way a new user would write it, to be what `livemod moderate` is measured against
(benchmarks/run.py --only baseline runs both as whole processes, alternating): PyAV decodes
keyframes only (skip_frame="NONKEY") and writes every one as a JPEG; then each JPEG is read back
with cv2.imread, resized to 256x256, centre-cropped to 224, the BGR mean subtracted, and
classified alone by an onnxruntime InferenceSession with its default options (the same FP32
Open-NSFW model livemod prepares). One JSON line per frame on stdout, a summary on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import onnxruntime as ort


def extract_keyframes(clip: Path, out_dir: Path) -> list[Path]:
    """Write every keyframe of the clip as a JPEG file; return the files in order."""
    files = []
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        for i, frame in enumerate(container.decode(stream)):
            path = out_dir / f"{clip.stem}_{i:05d}.jpg"
            cv2.imwrite(str(path), frame.to_ndarray(format="bgr24"))
            files.append(path)
    return files


def load_image(path: Path) -> np.ndarray:
    """Yahoo's pre-processing, done plainly: (1, 224, 224, 3) float32 BGR minus the mean."""
    img = cv2.imread(str(path))
    img = cv2.resize(img, (256, 256))
    img = img[16:240, 16:240].astype(np.float32)
    img -= np.array([104.0, 117.0, 123.0], dtype=np.float32)
    return img[np.newaxis]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clips", nargs="+", type=Path)
    ap.add_argument("--model", default=".cache/livemod/models/open-nsfw-cam.onnx")
    ap.add_argument("--threshold", type=float, default=0.8, help="a frame at or above is flagged")
    args = ap.parse_args()

    t_load = time.perf_counter()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    t0 = time.perf_counter()  # like `livemod moderate`'s summary: the work after the model is loaded
    frames = flagged = 0
    with tempfile.TemporaryDirectory(prefix="line-baseline-") as tmp:
        for clip in args.clips:
            for path in extract_keyframes(clip, Path(tmp)):
                probs = session.run(["outputs"], {input_name: load_image(path)})[0]
                nsfw = float(probs[0, 1])
                frames += 1
                flagged += nsfw >= args.threshold
                print(json.dumps({"clip": str(clip), "frame": path.name, "nsfw": round(nsfw, 4)}))
    summary = {"clips": len(args.clips), "frames": frames, "flagged": flagged,
               "seconds": round(time.perf_counter() - t0, 3), "load_seconds": round(t0 - t_load, 3)}
    print(f"summary: {json.dumps(summary)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
