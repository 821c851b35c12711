"""Value types of the rules room: observations in, verdicts and alerts out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from livemod.engines.types import Box, FrameScores, Recheck


@dataclass(frozen=True)
class Observation:
    """One sampled frame of one stream, scored by every model its policy uses.

    Attributes:
        stream_id: the stream.
        frame_id: deterministic id of the frame (reference key + PTS), so a replay can be recognised.
        pts: seconds from the start of its source.
        wall_clock: Unix time of the frame; the rules' clock (cooldowns, alert ids).
        scores: model name -> FrameScores.
    """

    stream_id: str
    frame_id: str
    pts: float
    wall_clock: float
    scores: dict[str, FrameScores]


@dataclass(frozen=True)
class FrameEvidence:
    """A frame that counted towards an alert.

    Attributes:
        frame_id, pts, wall_clock: the frame, as in its Observation.
        score: decision score (max of the whole-frame and re-check probabilities).
        whole_frame_score: the whole-frame probability alone.
        recheck: the re-check run on this frame for the rule's label, if any.
    """

    frame_id: str
    pts: float
    wall_clock: float
    score: float
    whole_frame_score: float
    recheck: Recheck | None = None


@dataclass(frozen=True)
class Alert:
    """An incident opened by a rule; its id is the same whenever the same frames are replayed.

    Attributes:
        id: hex digest of (stream, policy, rule, incident start wall clock in ms).
        score: the highest decision score among the window's hits.
        threshold: the rule's alert threshold.
        frames: the window's hits, oldest first.
        recheck_used: True when the whole-frame scores alone would not have opened it.
        box: the re-check crop of the best hit, in full-resolution pixels, if any.
        model_versions: model name -> version.
        evidence: "frame"/"heatmap" -> path, filled by the pipeline after ``write_evidence``
            (``dataclasses.replace``); empty when evidence is off.

    The incident's first hit is ``start_frame_id``/``start_pts``/``start_wall_clock`` (flat, as
    the ``alerts`` topic carries them).
    """

    id: str
    stream_id: str
    policy: str
    rule: str
    model: str
    label: str
    severity: str
    action: str
    score: float
    threshold: float
    start_frame_id: str
    start_pts: float
    start_wall_clock: float
    frames: tuple[FrameEvidence, ...]
    recheck_used: bool
    box: Box | None
    model_versions: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (schema `alerts` v1)."""
        d = asdict(self)
        d["v"] = 1
        d["box"] = list(self.box) if self.box else None
        for f in d["frames"]:
            if f["recheck"] is not None:
                f["recheck"]["box"] = list(f["recheck"]["box"])
        return d


@dataclass(frozen=True)
class Verdict:
    """What a rule says about one frame.

    Attributes:
        kind: "review" (score in the review band), "alert" (an incident opened; ``alert`` and
            ``alert_id`` are set) or "close" (the open incident ``alert_id`` ended).
        rule: the rule's name.
        frame_id: the frame that produced the verdict.
        score: that frame's decision score for the rule's label.
        reason: for "close": "below" (hysteresis: frames below close_below), "stale" (the
            stream was silent for stale_after_s; the frame is the first one after the silence)
            or "ended" (ingest said the broadcast ended).
    """

    kind: Literal["review", "alert", "close"]
    rule: str
    frame_id: str
    score: float
    alert: Alert | None = None
    alert_id: str | None = None
    reason: str | None = None
