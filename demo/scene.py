"""A sample broadcast built from real photos that installed packages ship, and the demo run without a broker.

The scene: a presenter shot (matplotlib's Grace Hopper photo, scikit-image's astronaut)
cross-fading with b-roll (rocket, coffee), slowly panning so frames are not duplicates. For
a while a small picture-in-picture window shows a real cat photo (scikit-image's "chelsea"):
about 6% of the frame, small enough that a whole-frame classifier mostly averages it away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np


def _photos() -> dict[str, np.ndarray]:
    import matplotlib
    import skimage.data as data

    hopper = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))[..., ::-1]
    return {
        "hopper": np.ascontiguousarray(hopper),
        "astronaut": data.astronaut(),
        "rocket": data.rocket(),
        "coffee": data.coffee(),
        "cat": data.chelsea(),
    }


def _cover(img: np.ndarray, w: int, h: int, zoom: float, shift: float) -> np.ndarray:
    """Scale ``img`` to cover w x h at ``zoom`` and crop, panning horizontally by ``shift`` in [0, 1]."""
    ih, iw = img.shape[:2]
    s = max(w / iw, h / ih) * zoom
    rs = cv2.resize(img, (max(w, round(iw * s)), max(h, round(ih * s))), interpolation=cv2.INTER_AREA)
    x0 = int((rs.shape[1] - w) * shift)
    y0 = (rs.shape[0] - h) // 2
    return rs[y0 : y0 + h, x0 : x0 + w]


@dataclass(frozen=True)
class Scene:
    """What the sample broadcast shows.

    Attributes:
        width, height: frame size.
        fps: frames per second.
        seconds: length.
        cat_from, cat_to: when the picture-in-picture cat is on screen (seconds).
        cat_share: the cat window's share of the frame area.
        background: which photo fills the frame.
    """

    width: int = 1280
    height: int = 720
    fps: int = 15
    seconds: float = 12.0
    cat_from: float = 4.0
    cat_to: float = 9.0
    cat_share: float = 0.06
    background: str = "hopper"

    def cat_box(self) -> tuple[int, int, int, int]:
        """Where the cat window sits (x0, y0, x1, y1): lower right, like a PiP inset."""
        ch, cw = 300, 451
        area = self.cat_share * self.width * self.height
        s = math.sqrt(area / (ch * cw))
        w, h = round(cw * s), round(ch * s)
        x1, y1 = self.width - self.width // 20, self.height - self.height // 10
        return (x1 - w, y1 - h, x1, y1)


def broadcast_frames(scene: Scene = Scene()) -> Iterator[np.ndarray]:
    """Yield the scene's frames, RGB uint8 (height, width, 3)."""
    photos = _photos()
    bg = photos[scene.background]
    x0, y0, x1, y1 = scene.cat_box()
    cat = cv2.resize(photos["cat"], (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    n = int(scene.seconds * scene.fps)
    for i in range(n):
        t = i / scene.fps
        frame = _cover(bg, scene.width, scene.height, 1.15, 0.5 + 0.4 * math.sin(t / 3.0)).copy()
        # a lower-third banner, as news channels have
        band = frame[int(scene.height * 0.82) : int(scene.height * 0.92)]
        band[:] = (band * 0.3 + np.array([20, 40, 120]) * 0.7).astype(np.uint8)
        cv2.putText(frame, f"LIVE  {t:05.1f}s", (40, int(scene.height * 0.89)), cv2.FONT_HERSHEY_SIMPLEX,
                    1.0, (255, 255, 255), 2, cv2.LINE_AA)
        if scene.cat_from <= t < scene.cat_to:
            frame[y0:y1, x0:x1] = cat
            cv2.rectangle(frame, (x0 - 2, y0 - 2), (x1 + 1, y1 + 1), (255, 255, 255), 2)
        yield frame


def write_demo_media(directory: Path, seconds: float = 12.0) -> list[Path]:
    """Encode the sample broadcasts (H.264 in MPEG-TS, 1 s GOP) and return their paths.

    Two streams: "studio" shows the picture-in-picture cat for a while, "newsroom" never does.
    """
    from livemod.demo.synth import write_video

    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, scene in (
        ("studio", Scene(seconds=seconds, background="hopper")),
        ("newsroom", Scene(seconds=seconds, background="astronaut", cat_from=1e9, cat_to=1e9)),
    ):
        path = directory / f"{name}.ts"
        if not path.exists():
            write_video(path, broadcast_frames(scene), fps=scene.fps, codec="libx264", gop=scene.fps, container="mpegts")
        out.append(path)
    return out


def run_no_broker_demo(settings, out: Path, *, seconds: float = 12.0) -> int:  # noqa: ANN001 - Settings
    """Prepare models, build the sample broadcasts and moderate them in-process with the demo policy."""
    import json
    import sys

    from livemod.engines.prepare import prepare_models
    from livemod.stream.cli import moderate_uris

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rules = settings.rules.model_copy(
        update={"default_policy": "demo", "evidence_dir": out / "evidence", "review_dir": out / "review"}
    )
    settings = settings.model_copy(update={"rules": rules})
    say("== livemod demo (embedded, no broker) ==")
    prepare_models(settings.engines.models_dir, log=say)
    say(f"writing sample broadcasts into {out / 'media'} ...")
    media = write_demo_media(out / "media", seconds)
    summary, code = moderate_uris(settings, [str(p) for p in media])
    say("summary: " + json.dumps(summary, sort_keys=True))
    if summary["alerts"]:
        say(f"{summary['alerts']} alert(s); {summary['alerts_needing_recheck']} needed the Grad-CAM re-check "
            f"(the whole frame alone stayed under the alert threshold). Evidence: {out / 'evidence'}")
    return code
