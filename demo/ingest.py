"""A simulated ingest: HLS-style segments of sample broadcasts written to a folder, their references published."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from aiokafka import AIOKafkaProducer

from livemod.demo.synth import write_hls
from livemod.demo.scene import Scene, broadcast_frames
from livemod.stream.records import FrameRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimStream:
    """One simulated broadcast."""

    stream_id: str
    scene: Scene
    policy: str | None = None


def default_streams(seconds: float, n: int = 3) -> list[SimStream]:
    """Sample broadcasts: the first shows the small PiP cat for a while, the others never do."""
    backgrounds = ["hopper", "astronaut", "rocket", "coffee"]
    out = []
    for i in range(n):
        bg = backgrounds[i % len(backgrounds)]
        cat = (seconds * 0.3, seconds * 0.75) if i == 0 else (1e9, 1e9)
        out.append(SimStream(f"{['studio', 'newsroom', 'launch', 'cafe'][i % 4]}-{i}",
                             Scene(seconds=seconds, background=bg, cat_from=cat[0], cat_to=cat[1])))
    return out


def write_segments(directory: Path, stream: SimStream, segment_s: float = 2.0) -> list[Path]:
    """Encode one stream as MPEG-TS segments (one keyframe at the start of each) and return them in order."""
    target = directory / stream.stream_id
    if not (target / "index.m3u8").exists():
        write_hls(target, broadcast_frames(stream.scene), fps=stream.scene.fps, segment_seconds=segment_s)
    return sorted(target.glob("seg*.ts"))


async def publish_refs(
    bootstrap: str,
    topic: str,
    plan: Sequence[tuple[SimStream, Sequence[Path]]],
    *,
    segment_s: float = 2.0,
    pace: float = 1.0,
    extra: Sequence[tuple[bytes, bytes]] = (),
    on_publish: Callable[[FrameRef], None] | None = None,
    end: bool = True,
) -> list[FrameRef]:
    """Publish each segment's reference when it would have finished recording (``pace`` x real time).

    ``extra`` (key, raw value) messages, e.g. malformed ones, are published first; with ``end``,
    an "end" reference per stream follows its last segment.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    published: list[FrameRef] = []

    async def emit(ref: FrameRef) -> None:
        await producer.send_and_wait(topic, ref.to_bytes(), key=ref.stream_id.encode())
        published.append(ref)
        if on_publish:
            on_publish(ref)

    try:
        for key, value in extra:
            await producer.send_and_wait(topic, value, key=key)
        t0 = time.time()
        rounds = max(len(segs) for _s, segs in plan)
        for i in range(rounds):
            due = t0 + (i + 1) * segment_s * pace
            await asyncio.sleep(max(0.0, due - time.time()))
            for stream, segs in plan:
                if i >= len(segs):
                    continue
                now = time.time()
                ref = FrameRef(stream_id=stream.stream_id, uri=str(segs[i].resolve()), kind="segment", seq=i,
                               wall_start=round(now - segment_s, 3), duration=segment_s, policy=stream.policy,
                               metadata={"source": "simulated-ingest"})
                await emit(ref)
        if end:  # the broadcasts are over: their open incidents close
            for stream, segs in plan:
                await emit(FrameRef(stream_id=stream.stream_id, kind="end", seq=len(segs),
                                    wall_start=round(time.time(), 3), policy=stream.policy,
                                    metadata={"source": "simulated-ingest"}))
    finally:
        await producer.stop()
    return published
