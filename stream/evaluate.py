"""`livemod evaluate`: run a policy over labelled videos and report what a reviewer needs to choose thresholds.

Labels file
-----------
JSON (any extension but ``.csv``)::

    {"videos": [
      {"path": "studio.ts",
       "intervals": [{"label": "cat-on-air", "start": 3.0, "end": 7.0, "box": [760, 330, 912, 431]}]},
      {"path": "newsroom.ts", "duration": 10.0, "intervals": []}
    ]}

- ``path``: a video file (relative paths are taken from the labels file's folder) or any URI
  ``livemod moderate`` accepts. Each listed video's folder is added to the decoder's file roots.
- ``duration`` (optional, seconds): the video's length; read from a local file's headers when
  left out, else (a network URI, a playlist) taken as the last sampled frame's PTS, which
  hides a gap at the end (the report's ``duration_from`` says which).
- ``intervals``: what is on screen and when. ``label`` is a rule name of the policy
  (``cat-on-air``) or a ``model:label`` pair that a rule watches (``efficientnet-lite0:cat``).
  ``start`` < ``end`` in seconds of stream time (PTS from the start of the video, as alerts'
  ``start_pts``). ``box`` (optional) is ``[x0, y0, x1, y1]`` in full-resolution pixels.
  A video with no intervals is clean for every label.

CSV (extension ``.csv``), with a header row, one interval per row; a row with an empty label
declares a clean video (and can carry its duration)::

    video,label,start,end,x0,y0,x1,y1,duration
    studio.ts,cat-on-air,3.0,7.0,760,330,912,431,
    newsroom.ts,,,,,,,,10.0

Report, per label (and per policy rule no interval names: for those every second is clean)
-------------------------------------------------------------------------------------------
- shot recall: a shot (one interval) is found when a sampled frame inside it (start <= PTS <
  end) scores at or over the rule's alert threshold (the decision score: whole frame or
  re-check, the higher). ``shots_sampled`` counts shots with any sampled frame inside.
- frame-level precision, recall and F1 at several thresholds: a sampled frame is positive when
  it lies inside an interval of the label, predicted positive when its score reaches the
  threshold. Also the average precision over all thresholds.
- alerts per hour of clean video: alerts of the rule whose incident started (``start_pts``)
  outside every interval of the label (widened by ``slack_s``), per hour of video time outside
  those intervals.
- time to alert: from a shot's start to the first alert of the rule raised at or after it
  (the PTS of the frame whose decision carried the alert) whose incident started before the
  shot's end (+ ``slack_s``); median and max over the shots that got one.
- the re-check's share of detections: frames at or over the alert threshold only because of
  the re-check (whole-frame score below, decision score at or above), over all frames at or
  over it; and its extra inference: re-check crops classified for the label per sampled frame.
  Per model, the engine's images by stage (``frame``, ``recheck``, ...) and the extra
  inference ratio (images of other stages / whole-frame images).
- the max sampling gap: the largest PTS difference between consecutive sampled frames,
  counting the video's start (0) and end (its duration), per video and overall.

Output: a Markdown table on stdout, the full report as JSON (``--json``), PNG plots
(``--plots``): a PR curve per label and the scores over time per video with the truth shaded.
Exit 0 when every video was evaluated, 2 for a bad labels file or a video that failed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from livemod.core.errors import ConfigError, LivemodError
from livemod.rules.policy import Policy, Rule
from livemod.stream.settings import Settings

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
WALL_START = 1_700_000_000.0  # a fixed wall clock per video start: rules' cooldowns run on stream time


class LabelsError(ConfigError):
    """The labels file cannot be read, does not validate, or names something the policy lacks."""

    reason = "bad_labels"


# ---- the labels file -------------------------------------------------------------------------


class Interval(BaseModel):
    """One labelled shot: ``label`` on screen from ``start`` to ``end`` (seconds of stream time)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1)
    start: float = Field(ge=0)
    end: float
    box: tuple[int, int, int, int] | None = None

    @model_validator(mode="after")
    def _order(self) -> "Interval":
        if not self.end > self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        if self.box is not None and not (self.box[2] > self.box[0] >= 0 and self.box[3] > self.box[1] >= 0):
            raise ValueError(f"box {list(self.box)} must be [x0, y0, x1, y1] with x1 > x0 >= 0 and y1 > y0 >= 0")
        return self


class VideoLabels(BaseModel):
    """One video and its labelled shots (none: a clean video)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    duration: float | None = Field(default=None, gt=0)
    intervals: tuple[Interval, ...] = ()


class LabelSet(BaseModel):
    """A labels file: the videos to evaluate on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    videos: tuple[VideoLabels, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "LabelSet":
        paths = [v.path for v in self.videos]
        dup = sorted({p for p in paths if paths.count(p) > 1})
        if dup:
            raise ValueError(f"videos listed twice: {dup}")
        return self


def _describe(exc: ValidationError) -> str:
    """One clause per problem, located (``videos.0.intervals.1: end 2.0 must be after start 5.0``).

    A length complaint about a container whose items already failed only repeats the item's
    error (pydantic counts only the valid items): it is left out.
    """
    errors = exc.errors(include_url=False)
    failed = {tuple(e["loc"][:-1]) for e in errors if e["loc"]}
    clauses = []
    for e in errors:
        loc = tuple(e["loc"])
        if e["type"] == "too_short" and any(f[: len(loc)] == loc and len(f) > len(loc) for f in failed):
            continue
        msg = str(e["msg"]).removeprefix("Value error, ")
        clauses.append(f"{'.'.join(str(p) for p in loc) or '(top level)'}: {msg}")
    return "; ".join(clauses)


CSV_COLUMNS = ("video", "label", "start", "end", "x0", "y0", "x1", "y1", "duration")


def _from_csv(text: str) -> dict[str, Any]:
    """The CSV form as the JSON form's dict (validated afterwards)."""
    reader = csv.DictReader(io.StringIO(text))
    cols = reader.fieldnames or []
    missing = [c for c in ("video", "label", "start", "end") if c not in cols]
    if missing:
        raise LabelsError(f"CSV header lacks {missing} (columns: {', '.join(CSV_COLUMNS)}; x0..y1, duration optional)")
    unknown = [c for c in cols if c not in CSV_COLUMNS]
    if unknown:
        raise LabelsError(f"CSV header has unknown columns {unknown} (known: {', '.join(CSV_COLUMNS)})")
    videos: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(reader, start=2):
        if None in row:
            raise LabelsError(f"CSV line {n}: more fields than the header has")
        cell = {k: (v or "").strip() for k, v in row.items()}
        if not cell["video"]:
            raise LabelsError(f"CSV line {n}: empty video")
        v = videos.setdefault(cell["video"], {"path": cell["video"], "intervals": []})
        if cell.get("duration"):
            v["duration"] = cell["duration"]
        if not cell["label"]:
            if cell["start"] or cell["end"]:
                raise LabelsError(f"CSV line {n}: start/end without a label")
            continue
        box = [cell.get(k, "") for k in ("x0", "y0", "x1", "y1")]
        if any(box) and not all(box):
            raise LabelsError(f"CSV line {n}: a box needs all of x0, y0, x1, y1")
        iv: dict[str, Any] = {"label": cell["label"], "start": cell["start"], "end": cell["end"]}
        if all(box):
            iv["box"] = box
        v["intervals"].append(iv)
    return {"videos": list(videos.values())}


def parse_labels(text: str, *, csv_format: bool = False, source: str = "labels") -> LabelSet:
    """Validate a labels file's text (JSON, or CSV when ``csv_format``).

    Raises:
        LabelsError: naming ``source`` and each offending field.
    """
    try:
        if csv_format:
            data = _from_csv(text)
        else:
            data = json.loads(text)
    except LabelsError as exc:
        raise LabelsError(f"{source}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise LabelsError(f"{source}: not JSON: {exc}") from exc
    if isinstance(data, list):  # a bare list of videos is accepted too
        data = {"videos": data}
    try:
        return LabelSet.model_validate(data)
    except ValidationError as exc:
        raise LabelsError(f"{source}: {_describe(exc)}") from exc


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def load_labels(path: Path | str) -> LabelSet:
    """Read a labels file; relative video paths become absolute (from the file's folder).

    Raises:
        LabelsError: unreadable, invalid, or a local video that does not exist.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"labels {path}: {exc}") from exc
    labels = parse_labels(text, csv_format=path.suffix.lower() == ".csv", source=f"labels {path}")
    videos = []
    for v in labels.videos:
        if _is_local(v.path):
            p = Path(v.path.removeprefix("file://")).expanduser()
            p = (path.parent / p if not p.is_absolute() else p).resolve()
            if not p.is_file():
                raise LabelsError(f"labels {path}: video {v.path!r} not found ({p})")
            v = v.model_copy(update={"path": str(p)})
        videos.append(v)
    return LabelSet(videos=tuple(videos))


# ---- what is evaluated -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A label of the report and the policy rule it is judged by.

    Attributes:
        key: the label as the labels file writes it (a rule name or ``model:label``), or the
            rule's name for rules no interval names.
        rule, model, label: the rule and what it watches.
        threshold: the rule's alert threshold.
    """

    key: str
    rule: str
    model: str
    label: str
    threshold: float


def _target(key: str, rule: Rule) -> Target:
    return Target(key, rule.name, rule.model, rule.label, float(rule.alert))


def resolve_targets(labels: LabelSet, policy: Policy) -> list[Target]:
    """One target per distinct label in the file, then one per policy rule none of them names.

    Raises:
        LabelsError: a label that is neither a rule name nor a ``model:label`` a rule watches.
    """
    by_name = {r.name: r for r in policy.rules}
    targets: list[Target] = []
    seen: set[str] = set()
    for v in labels.videos:
        for iv in v.intervals:
            if iv.label in seen:
                continue
            seen.add(iv.label)
            rule = by_name.get(iv.label)
            if rule is None and ":" in iv.label:
                model, label = iv.label.split(":", 1)
                rule = next((r for r in policy.rules if r.model == model and r.label == label), None)
            if rule is None:
                options = sorted(by_name) + sorted(f"{r.model}:{r.label}" for r in policy.rules)
                raise LabelsError(
                    f"label {iv.label!r} (video {v.path}) is not a rule of policy {policy.name!r} nor a "
                    f"model:label it watches; use one of {options}"
                )
            targets.append(_target(iv.label, rule))
    named = {t.rule for t in targets}
    targets += [_target(r.name, r) for r in policy.rules if r.name not in named]
    return targets


@dataclass(frozen=True)
class Series:
    """One rule's scores on one video's sampled frames, in PTS order.

    Attributes:
        pts: float64 (n,), seconds of stream time.
        whole: float64 (n,), whole-frame probability (NaN where the model gave none).
        score: float64 (n,), decision score: max of whole frame and re-check.
        crops: int64 (n,), re-check crops classified for the label on that frame (0 where a
            near-duplicate frame repeated the previous result without inference).
    """

    pts: np.ndarray
    whole: np.ndarray
    score: np.ndarray
    crops: np.ndarray


@dataclass(frozen=True)
class AlertSeen:
    """An alert the policy raised: its incident's first hit and the frame that raised it."""

    rule: str
    start_pts: float
    raised_pts: float
    score: float
    recheck_used: bool


@dataclass
class VideoResult:
    """What running the policy over one video produced."""

    path: str
    duration: float
    intervals: tuple[Interval, ...]
    pts: np.ndarray
    series: dict[str, Series]
    alerts: list[AlertSeen]
    seconds: float = 0.0
    error: dict[str, str] | None = None
    inference: dict[str, dict[str, int]] = field(default_factory=dict)
    duration_from: str = "labels"


# ---- metric maths (pure) ---------------------------------------------------------------------


def in_intervals(pts: np.ndarray, intervals: Sequence[tuple[float, float]], slack: float = 0.0) -> np.ndarray:
    """bool (n,): each PTS inside any interval [start - slack, end + slack).

    Half-open: a frame shown from PTS ``end`` on is after the shot.
    """
    pts = np.asarray(pts, dtype=np.float64)
    out = np.zeros(pts.shape, dtype=bool)
    for a, b in intervals:
        out |= (pts >= a - slack) & (pts < b + slack)
    return out


def covered_seconds(intervals: Sequence[tuple[float, float]], duration: float) -> float:
    """Length of the union of the intervals, clipped to [0, duration]."""
    spans = sorted((max(0.0, a), min(duration, b)) for a, b in intervals)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if b <= a:
            continue
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a  # type: ignore[operator]
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a  # type: ignore[operator]
    return total


def max_gap(pts: Sequence[float] | np.ndarray, duration: float) -> tuple[float, float, float]:
    """The largest stretch of stream time without a sampled frame, counting from 0 to ``duration``.

    Returns:
        (gap, from, to) in seconds; with no frames, the whole video.
    """
    inner = np.sort(np.asarray(pts, dtype=np.float64))
    end = max(duration, float(inner[-1]) if len(inner) else 0.0, 0.0)  # a frame past a probed length moves the end
    edges = np.concatenate([[0.0], np.clip(inner, 0.0, None), [end]])
    diffs = np.diff(edges)
    i = int(np.argmax(diffs))
    return float(diffs[i]), float(edges[i]), float(edges[i + 1])


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def frame_counts(truth: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Frame-level confusion counts, precision, recall and F1 at ``threshold`` (score >= it is positive).

    Precision is None with no predicted positives, recall None with no true positives, F1
    None when either is None (0.0 when both are 0).
    """
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    tn = int(np.sum(~pred & ~truth))
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = None if p is None or r is None else (2 * p * r / (p + r) if p + r else 0.0)
    return {"threshold": threshold, "tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": p, "recall": r, "f1": f1}


def pr_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score used as the threshold (score >= t).

    Frames without a score (NaN) are never predicted positive, but a positive one still counts
    in the recall's denominator.

    Returns:
        (thresholds, precision, recall), float64 (k,), thresholds descending. Empty when
        there are no positive frames.
    """
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(truth.sum())
    keep = ~np.isnan(scores)
    truth, scores = truth[keep], scores[keep]
    if not positives or not len(scores):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(t)[last].astype(np.float64)
    fp = (last + 1) - tp
    return s[last], tp / (tp + fp), tp / positives


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """Sum over thresholds of (recall step) x precision, as scikit-learn's; None without positives."""
    if not np.asarray(truth, dtype=bool).any():
        return None
    _t, precision, recall = pr_curve(truth, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def median(values: Sequence[float]) -> float | None:
    """The median, None for no values."""
    return float(np.median(values)) if len(values) else None


def recheck_share(whole: np.ndarray, score: np.ndarray, threshold: float) -> tuple[int, int]:
    """(frames at or over ``threshold``, of them those under it on the whole frame alone)."""
    whole = np.nan_to_num(np.asarray(whole, dtype=np.float64), nan=0.0)
    hit = np.asarray(score, dtype=np.float64) >= threshold
    return int(hit.sum()), int((hit & (whole < threshold)).sum())


def shot_result(start: float, end: float, series: Series, threshold: float, alerts: Sequence[AlertSeen],
                slack: float = 0.0) -> dict[str, Any]:
    """One shot: was it sampled, found (a frame inside at or over the threshold), alerted, and how fast.

    ``alerts`` are the shot's rule's alerts on the same video.
    """
    inside = in_intervals(series.pts, [(start, end)])
    hits = inside & (series.score >= threshold)
    first_hit = float(series.pts[hits][0]) if hits.any() else None
    by_recheck = bool(hits.any() and np.nan_to_num(series.whole[hits][0], nan=0.0) < threshold)
    alert = next((a for a in sorted(alerts, key=lambda a: a.raised_pts)
                  if a.raised_pts >= start and a.start_pts < end + slack), None)
    return {
        "start": start,
        "end": end,
        "sampled_frames": int(inside.sum()),
        "found": first_hit is not None,
        "first_hit_pts": first_hit,
        "found_by_recheck": by_recheck,
        "alerted": alert is not None,
        "alert_raised_pts": alert.raised_pts if alert else None,
        "time_to_alert_s": (alert.raised_pts - start) if alert else None,
    }


def _r(x: float | None, nd: int = 4) -> float | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return round(float(x), nd)


def label_metrics(target: Target, videos: Sequence[VideoResult], thresholds: Sequence[float],
                  slack: float = 0.0) -> dict[str, Any]:
    """Everything the report says about one label, over every video that ran.

    Frames of all videos are pooled; shots are each video's intervals of ``target.key``.
    """
    ok = [v for v in videos if v.error is None and target.rule in v.series]
    truth_all, score_all, whole_all, crops_all = [], [], [], []
    shots: list[dict[str, Any]] = []
    clean_s = 0.0
    alerts_total = alerts_clean = 0
    for v in ok:
        s = v.series[target.rule]
        spans = [(iv.start, iv.end) for iv in v.intervals if iv.label == target.key]
        truth_all.append(in_intervals(s.pts, spans))
        score_all.append(s.score)
        whole_all.append(s.whole)
        crops_all.append(s.crops)
        clean_s += v.duration - covered_seconds(spans, v.duration)
        mine = [a for a in v.alerts if a.rule == target.rule]
        alerts_total += len(mine)
        alerts_clean += int((~in_intervals(np.array([a.start_pts for a in mine]), spans, slack)).sum()) if mine else 0
        for iv in v.intervals:
            if iv.label == target.key:
                shot = shot_result(iv.start, iv.end, s, target.threshold, mine, slack)
                shots.append({"video": v.path, **shot, "box": list(iv.box) if iv.box else None})
    truth = np.concatenate(truth_all) if truth_all else np.zeros(0, bool)
    score = np.concatenate(score_all) if score_all else np.zeros(0)
    whole = np.concatenate(whole_all) if whole_all else np.zeros(0)
    crops = np.concatenate(crops_all) if crops_all else np.zeros(0, np.int64)
    ths = sorted({round(float(t), 6) for t in (*thresholds, target.threshold)})
    detections, by_recheck = recheck_share(whole, score, target.threshold)
    delays = [s["time_to_alert_s"] for s in shots if s["time_to_alert_s"] is not None]
    gaps = [max_gap(v.pts, v.duration)[0] for v in ok]
    at_alert = frame_counts(truth, score, target.threshold)
    found = sum(s["found"] for s in shots)
    return {
        "label": target.key,
        "rule": target.rule,
        "model": target.model,
        "model_label": target.label,
        "alert_threshold": target.threshold,
        "videos": len(ok),
        "frames": int(len(truth)),
        "positive_frames": int(truth.sum()),
        "shots": len(shots),
        "shots_sampled": sum(s["sampled_frames"] > 0 for s in shots),
        "shots_found": found,
        "shot_recall": _r(_ratio(found, len(shots))),
        "shots_alerted": sum(s["alerted"] for s in shots),
        "time_to_alert_s": {"median": _r(median(delays), 3), "max": _r(max(delays) if delays else None, 3),
                            "values": [round(d, 3) for d in delays]},
        "frame_metrics": [{k: _r(v) if isinstance(v, float) else v for k, v in frame_counts(truth, score, t).items()}
                          for t in ths],
        "at_alert_threshold": {k: _r(v) if isinstance(v, float) else v for k, v in at_alert.items()},
        "average_precision": _r(average_precision(truth, score)),
        "alerts": alerts_total,
        "alerts_clean": alerts_clean,
        "clean_seconds": round(clean_s, 3),
        "alerts_per_clean_hour": _r(_ratio(alerts_clean, clean_s / 3600.0), 2),
        "detections": detections,
        "detections_by_recheck": by_recheck,
        "recheck_share": _r(_ratio(by_recheck, detections)),
        "recheck_crops": int(crops.sum()),
        "rechecked_frames": int((crops > 0).sum()),
        "recheck_crops_per_frame": _r(_ratio(float(crops.sum()), len(crops))),
        "max_gap_s": _r(max(gaps) if gaps else None, 3),
        "shots_detail": shots,
    }


# ---- running the policy ----------------------------------------------------------------------


def probe_duration(uri: str) -> float | None:
    """A local media file's length in seconds from its headers (video stream, else container).

    None when unknown, and for network URIs: only the decoder, with its URI checks, opens those.
    """
    import av  # the decoders room owns decoding; this only reads a local file's headers

    from livemod.decoders.config import DEMUXERS

    if not _is_local(uri):
        return None
    try:  # the decoder's demuxer allow-list: no demuxer (HLS, concat) that opens further URLs
        with av.open(uri.removeprefix("file://"), metadata_errors="ignore",
                     options={"format_whitelist": ",".join(DEMUXERS)}) as c:
            if not c.streams.video:
                return None
            vs = c.streams.video[0]
            if vs.duration and vs.time_base:
                return float(vs.duration * vs.time_base)
            if c.duration:
                return c.duration / 1_000_000
    except (av.error.FFmpegError, OSError):
        return None
    return None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _field(record: Any, name: str) -> Any:
    """A field of an alert record, whether the pipeline hands dicts or record objects."""
    return record[name] if isinstance(record, dict) else getattr(record, name)


def run_video(moderator: Any, policy: Policy, video: VideoLabels, n: int, *,
              progress: Callable[[str], None] = _say, every_s: float = 2.0) -> VideoResult:
    """Moderate one video with a fresh rule state and record every rule's scores and alerts."""
    from livemod.rules.evaluate import StreamState
    from livemod.stream.records import FrameRef

    counts: dict[str, dict[str, int]] = {}

    def on_batch(model: str, size: int, stage: str) -> None:
        counts.setdefault(model, {}).setdefault(stage, 0)
        counts[model][stage] += size

    hook, moderator.on_batch = moderator.on_batch, on_batch
    name = Path(video.path).name
    sid = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(video.path).stem) or f"video-{n}"
    ref = FrameRef(stream_id=sid, uri=video.path, kind="segment", seq=n, wall_start=WALL_START, policy=policy.name)
    duration = video.duration or probe_duration(video.path)
    duration_from = "labels" if video.duration else "headers"
    pts: list[float] = []
    cols: dict[str, tuple[list[float], list[float], list[int]]] = {r.name: ([], [], []) for r in policy.rules}
    alerts: list[AlertSeen] = []
    t0 = last = time.monotonic()
    prev: Any = None
    error = None
    try:
        for frame, scores, decision, _state in moderator.moderate(ref, StreamState()):
            pts.append(float(frame.pts))
            repeated = scores is prev  # a near-duplicate that reused the last result: no inference
            prev = scores
            for rule in policy.rules:
                whole, final, crops = cols[rule.name]
                fs = scores.get(rule.model)
                if fs is None or rule.label not in fs.scores:
                    whole.append(math.nan)
                    final.append(math.nan)
                    crops.append(0)
                    continue
                rc = fs.rechecks.get(rule.label)
                whole.append(float(fs.scores[rule.label]))
                final.append(float(fs.score(rule.label)))
                crops.append(0 if repeated or rc is None else int(rc.crops))
            for a in decision.alerts:
                alerts.append(AlertSeen(str(_field(a, "rule")), float(_field(a, "start_pts")), float(frame.pts),
                                        float(_field(a, "score")), bool(_field(a, "recheck_used"))))
            now = time.monotonic()
            if now - last >= every_s:
                last = now
                of = f"/{duration:.1f}" if duration else ""
                progress(f"[{now - t0:6.1f}s] {name}: {len(pts)} frames, at {frame.pts:.1f}{of} s, {len(alerts)} alerts")
    except LivemodError as exc:
        error = {"error": type(exc).__name__, "reason": exc.reason, "message": str(exc)}
        progress(f"error: {video.path}: {type(exc).__name__} [{exc.reason}]: {exc}")
    finally:
        moderator.on_batch = hook
    if duration is None:  # not in the labels, not in the headers: the last sampled frame is all we know
        duration, duration_from = (max(pts) if pts else 0.0), "last_frame"
    series = {
        r.name: Series(np.array(pts, np.float64), np.array(cols[r.name][0], np.float64),
                       np.array(cols[r.name][1], np.float64), np.array(cols[r.name][2], np.int64))
        for r in policy.rules
    }
    res = VideoResult(video.path, float(duration), video.intervals, np.array(pts, np.float64), series, alerts,
                      seconds=round(time.monotonic() - t0, 2), error=error, inference=counts,
                      duration_from=duration_from)
    progress(f"[{res.seconds:6.1f}s] {name}: done, {len(pts)} frames over {duration:.1f} s, {len(alerts)} alerts, "
             f"max gap {max_gap(res.pts, res.duration)[0]:.2f} s")
    return res


def _video_report(v: VideoResult, policy: Policy) -> dict[str, Any]:
    gap, a, b = max_gap(v.pts, v.duration)
    return {
        "path": v.path,
        "duration_s": round(v.duration, 3),
        "duration_from": v.duration_from,
        "sampled_frames": int(len(v.pts)),
        "max_gap_s": round(gap, 3),
        "max_gap_at": [round(a, 3), round(b, 3)],
        "alerts": [{"rule": x.rule, "start_pts": round(x.start_pts, 3), "raised_pts": round(x.raised_pts, 3),
                    "score": round(x.score, 4), "recheck_used": x.recheck_used} for x in v.alerts],
        "intervals": [iv.model_dump() for iv in v.intervals],
        "inference": v.inference,
        "seconds": v.seconds,
        "error": v.error,
        "series": {r: {"pts": [round(float(x), 3) for x in s.pts],
                       "whole": [_r(float(x)) for x in s.whole],
                       "score": [_r(float(x)) for x in s.score],
                       "threshold": next(float(rr.alert) for rr in policy.rules if rr.name == r)}
                   for r, s in v.series.items()},
    }


def _inference(videos: Sequence[VideoResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in videos:
        for model, stages in v.inference.items():
            m = out.setdefault(model, {"stages": {}})
            for stage, k in stages.items():
                m["stages"][stage] = m["stages"].get(stage, 0) + k
    for m in out.values():
        base = m["stages"].get("frame", 0)
        m["extra_images"] = sum(k for s, k in m["stages"].items() if s != "frame")
        m["extra_ratio"] = _r(_ratio(m["extra_images"], base))
    return out


def evaluate_labels(settings: Settings, labels: LabelSet, *, policy: str | None = None,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, slack_s: float = 0.0,
                    progress: Callable[[str], None] = _say,
                    labels_file: str | None = None) -> dict[str, Any]:
    """Run ``policy`` over every labelled video and compute the report (JSON-safe dict).

    Each local video's folder is added to the decoder's file roots; evidence images are not
    written.

    Raises:
        LabelsError: a label the policy does not have.
        ConfigError: unknown policy, models not prepared, ...
    """
    from livemod.rules.policy import load_policies
    from livemod.stream.pipeline import Moderator

    # the labels are checked against the policy before any model is loaded: a bad label fails fast
    policies = load_policies(settings.rules.policies_dir)
    name = policy or settings.rules.default_policy
    if name not in policies:
        raise ConfigError(f"unknown policy {name!r} (have {sorted(policies)})", reason="unknown_policy")
    targets = resolve_targets(labels, policies[name])
    roots = tuple(settings.decoder.file_roots) + tuple(
        sorted({Path(v.path).parent for v in labels.videos if _is_local(v.path)}))
    settings = settings.model_copy(update={
        "decoder": settings.decoder.model_copy(update={"file_roots": roots}),
        "rules": settings.rules.model_copy(update={"write_evidence": False}),
    })
    moderator = Moderator(settings)
    pol = moderator.policy(name)
    progress(f"evaluate: policy {pol.name}, {len(labels.videos)} videos, labels "
             f"{', '.join(t.key for t in targets)}; backend {moderator.choice.backend}")
    t0 = time.monotonic()
    runs = []
    for n, video in enumerate(labels.videos):
        progress(f"[{n + 1}/{len(labels.videos)}] {video.path}")
        runs.append(run_video(moderator, pol, video, n, progress=progress))
    ok = [v for v in runs if v.error is None]
    overall_gap = max((max_gap(v.pts, v.duration)[0] for v in ok), default=None)
    return {
        "v": 1,
        "policy": pol.name,
        "policy_version": pol.version,
        "labels_file": labels_file,
        "backend": moderator.choice.backend,
        "thresholds": [float(t) for t in thresholds],
        "slack_s": slack_s,
        "videos_total": len(runs),
        "videos_failed": [{"path": v.path, **(v.error or {})} for v in runs if v.error],
        "video_seconds": round(sum(v.duration for v in ok), 3),
        "sampled_frames": int(sum(len(v.pts) for v in ok)),
        "max_gap_s": _r(overall_gap, 3),
        "seconds": round(time.monotonic() - t0, 2),
        "inference": _inference(ok),
        "labels": [label_metrics(t, runs, thresholds, slack_s) for t in targets],
        "videos": [_video_report(v, pol) for v in runs],
    }


# ---- output ----------------------------------------------------------------------------------


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables: per label, frame-level metrics per threshold, per video, inference."""
    lines = [
        f"## livemod evaluate: policy `{report['policy']}`, {report['videos_total']} videos, "
        f"{report['video_seconds']:.1f} s, {report['sampled_frames']} sampled frames ({report['backend']})",
        "",
        "| label | rule | alert thr | shots | shot recall | P / R / F1 at thr | AP | alerts / h clean | "
        "time to alert med / max (s) | re-check share | re-check crops / frame | max gap (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in report["labels"]:
        a = m["at_alert_threshold"]
        lines.append(
            f"| {m['label']} | {m['rule']} | {m['alert_threshold']:.2f} | {m['shots']} | "
            f"{_f(m['shot_recall'])} ({m['shots_found']}/{m['shots']}) | "
            f"{_f(a['precision'])} / {_f(a['recall'])} / {_f(a['f1'])} | {_f(m['average_precision'])} | "
            f"{_f(m['alerts_per_clean_hour'], 1)} ({m['alerts_clean']} in {m['clean_seconds'] / 3600:.3f} h) | "
            f"{_f(m['time_to_alert_s']['median'])} / {_f(m['time_to_alert_s']['max'])} | "
            f"{_f(m['recheck_share'])} ({m['detections_by_recheck']}/{m['detections']}) | "
            f"{_f(m['recheck_crops_per_frame'])} | {_f(m['max_gap_s'])} |"
        )
    labelled = [m for m in report["labels"] if m["positive_frames"]]
    if labelled:
        lines += ["", "Frame-level precision / recall / F1 (frames inside a labelled interval are positive):", ""]
        ths = sorted({fm["threshold"] for m in labelled for fm in m["frame_metrics"]})
        lines.append("| label | " + " | ".join(f"{t:g}" for t in ths) + " |")
        lines.append("|---|" + "---|" * len(ths))
        for m in labelled:
            by = {fm["threshold"]: fm for fm in m["frame_metrics"]}
            cells = [f"{_f(by[t]['precision'])} / {_f(by[t]['recall'])} / {_f(by[t]['f1'])}" if t in by else ""
                     for t in ths]
            lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    lines += ["", "| video | duration (s) | sampled frames | max gap (s) | alerts | error |", "|---|---|---|---|---|---|"]
    for v in report["videos"]:
        err = f"{v['error']['error']}: {v['error']['reason']}" if v["error"] else ""
        lines.append(f"| {Path(v['path']).name} | {v['duration_s']:.1f} | {v['sampled_frames']} | "
                     f"{v['max_gap_s']:.2f} ({v['max_gap_at'][0]:.1f}-{v['max_gap_at'][1]:.1f}) | "
                     f"{len(v['alerts'])} | {err} |")
    if report["inference"]:
        lines += ["", "| model | images by stage | extra inference (other stages / whole frames) |", "|---|---|---|"]
        for model, m in report["inference"].items():
            stages = ", ".join(f"{s} {k}" for s, k in sorted(m["stages"].items()))
            lines.append(f"| {model} | {stages} | {_f(m['extra_ratio'])} |")
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


def require_matplotlib() -> None:
    """Fail early, before any video is decoded, when plots are asked for and matplotlib is missing.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError("--plots needs matplotlib: pip install 'livemod[demo]'", reason="missing_dependency") from exc


def write_plots(report: dict[str, Any], directory: Path | str) -> list[Path]:
    """PNG plots: a PR curve per label with labelled frames, the scores over time per video.

    Returns:
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ok = [v for v in report["videos"] if not v["error"]]
    for m in report["labels"]:
        if not m["positive_frames"]:
            continue
        truth, scores = [], []
        for v in ok:
            s = v["series"][m["rule"]]
            spans = [(iv["start"], iv["end"]) for iv in v["intervals"] if iv["label"] == m["label"]]
            truth.append(in_intervals(np.array(s["pts"]), spans))
            scores.append(np.array([np.nan if x is None else x for x in s["score"]], np.float64))
        _t, prec, rec = pr_curve(np.concatenate(truth), np.concatenate(scores))
        fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
        ax.step(np.r_[0.0, rec], np.r_[prec[0] if len(prec) else 1.0, prec], where="post", color="tab:blue")
        points: dict[tuple[float, float], list[float]] = {}  # thresholds that give the same point share a label
        for fm in m["frame_metrics"]:
            if fm["precision"] is not None and fm["recall"] is not None:
                points.setdefault((fm["recall"], fm["precision"]), []).append(fm["threshold"])
        for (r, p), ts in points.items():
            at = m["alert_threshold"] in ts
            ax.plot(r, p, "o", color="tab:red" if at else "tab:gray", ms=7 if at else 4)
            text = f"{min(ts):g}" if len(ts) == 1 else f"{min(ts):g}-{max(ts):g}"
            ax.annotate(text, (r, p), fontsize=7, xytext=(-4, -10), textcoords="offset points", ha="right")
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall (frames)", ylabel="precision (frames)",
               title=f"{m['label']} ({m['rule']}), AP {_f(m['average_precision'])}")
        ax.grid(alpha=0.3)
        path = directory / f"pr_{_safe(m['label'])}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    rules = list(dict.fromkeys(m["rule"] for m in report["labels"]))
    for i, v in enumerate(ok):
        fig, axes = plt.subplots(len(rules), 1, figsize=(9, 1.9 * len(rules) + 0.6), dpi=100, sharex=True,
                                 squeeze=False)
        for ax, rule in zip(axes[:, 0], rules):
            s = v["series"][rule]
            keys = [m["label"] for m in report["labels"] if m["rule"] == rule]
            for iv in v["intervals"]:
                if iv["label"] in keys:
                    ax.axvspan(iv["start"], iv["end"], color="tab:green", alpha=0.2, lw=0)
            pts = s["pts"]
            ax.plot(pts, [np.nan if x is None else x for x in s["whole"]], ".--", color="tab:gray", lw=0.8, ms=3,
                    label="whole frame")
            ax.plot(pts, [np.nan if x is None else x for x in s["score"]], ".-", color="tab:blue", lw=1.2, ms=4,
                    label="decision (re-check)")
            ax.axhline(s["threshold"], color="tab:red", lw=0.8, ls=":")
            for a in v["alerts"]:
                if a["rule"] == rule:
                    ax.axvline(a["raised_pts"], color="tab:red", lw=1.2)
            ax.set(ylim=(-0.02, 1.02), xlim=(0, max(v["duration_s"], 1e-3)), ylabel=rule)
            ax.grid(alpha=0.3)
        axes[0, 0].set_title(f"{Path(v['path']).name}: scores over time (green: labelled, red: alert threshold "
                             f"and alerts)", fontsize=9)
        axes[0, 0].legend(loc="upper left", fontsize=7)
        axes[-1, 0].set_xlabel("stream time (s)")
        path = directory / f"scores_{i:02d}_{_safe(Path(v['path']).stem)}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``"0.1,0.5,0.9"`` -> (0.1, 0.5, 0.9), each in [0, 1].

    Raises:
        ValueError: anything else.
    """
    out = []
    for part in text.split(","):
        t = float(part)  # ValueError for text that is not a number
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold {t} is outside [0, 1]")
        out.append(t)
    if not out:
        raise ValueError("no thresholds")
    return tuple(out)


def evaluate_command(settings: Settings, labels_path: str, *, policy: str | None = None,
                     json_path: str | None = None, plots_dir: str | None = None,
                     thresholds: Sequence[float] | str | None = None, slack_s: float = 0.0) -> int:
    """The ``livemod evaluate`` command: Markdown on stdout, progress on stderr; returns the exit code.

    Args:
        thresholds: frame-level thresholds, or their comma-separated text (default 0.1 .. 0.9);
            each rule's alert threshold is always added.

    Exit codes: 0 when every video was evaluated, 2 for a bad labels file or thresholds
    (message on stderr) or a video that failed. Other errors (settings, models) propagate to
    the CLI (exit 1).
    """
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLDS
    elif isinstance(thresholds, str):
        try:
            thresholds = parse_thresholds(thresholds)
        except ValueError as exc:
            _say(f"error: --thresholds {thresholds!r}: {exc}")
            return 2
    if slack_s < 0:
        _say(f"error: --slack {slack_s} is negative")
        return 2
    try:
        labels = load_labels(labels_path)
    except LabelsError as exc:
        _say(f"error: {exc}")
        return 2
    if plots_dir:
        require_matplotlib()
    try:
        report = evaluate_labels(settings, labels, policy=policy, thresholds=thresholds, slack_s=slack_s,
                                 labels_file=str(labels_path))
    except LabelsError as exc:
        _say(f"error: labels {labels_path}: {exc}")
        return 2
    sys.stdout.write(markdown(report))
    sys.stdout.flush()
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1, sort_keys=True), encoding="utf-8")
        _say(f"report: {json_path}")
    if plots_dir:
        files = write_plots(report, plots_dir)
        _say(f"plots: {len(files)} PNG files in {plots_dir}")
    return 2 if report["videos_failed"] else 0
