"""`livemod evaluate`'s metric maths and labels parsing, as tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from livemod.rules.policy import Policy
from livemod.stream.evaluate import (
    AlertSeen,
    Interval,
    LabelsError,
    Series,
    VideoResult,
    average_precision,
    covered_seconds,
    frame_counts,
    in_intervals,
    label_metrics,
    markdown,
    max_gap,
    parse_labels,
    parse_thresholds,
    pr_curve,
    recheck_share,
    resolve_targets,
    shot_result,
)


def series(pts, score, whole=None, crops=None) -> Series:
    n = len(pts)
    return Series(np.array(pts, float), np.array(whole if whole is not None else score, float),
                  np.array(score, float), np.array(crops if crops is not None else [0] * n, np.int64))


@pytest.mark.parametrize(("pts", "spans", "slack", "want"), [
    ([0, 1, 2, 3], [(1, 3)], 0.0, [False, True, True, False]),  # half-open: PTS 3 is after [1, 3)
    ([0, 1, 2, 3], [(1, 3)], 0.5, [False, True, True, True]),
    ([0, 1, 2, 3], [], 0.0, [False] * 4),
    ([0.5, 2.5, 4.5], [(0, 1), (4, 5)], 0.0, [True, False, True]),
    ([], [(0, 1)], 0.0, []),
])
def test_in_intervals(pts, spans, slack, want):
    assert in_intervals(np.array(pts, float), spans, slack).tolist() == want


@pytest.mark.parametrize(("spans", "duration", "want"), [
    ([], 10.0, 0.0),
    ([(2, 4)], 10.0, 2.0),
    ([(2, 4), (3, 6)], 10.0, 4.0),  # overlapping shots count once
    ([(2, 4), (4, 6)], 10.0, 4.0),
    ([(1, 2), (5, 7)], 10.0, 3.0),
    ([(8, 12)], 10.0, 2.0),  # clipped to the video
    ([(0, 3), (1, 2)], 10.0, 3.0),  # nested
])
def test_covered_seconds(spans, duration, want):
    assert covered_seconds(spans, duration) == pytest.approx(want)


@pytest.mark.parametrize(("pts", "duration", "want"), [
    ([0, 1, 2, 3], 4.0, (1.0, 0.0, 1.0)),  # the end counts: last frame 3, video ends at 4
    ([1, 2], 3.0, (1.0, 0.0, 1.0)),
    ([0, 5, 6], 6.5, (5.0, 0.0, 5.0)),
    ([0, 1, 7], 8.0, (6.0, 1.0, 7.0)),
    ([0, 1], 10.0, (9.0, 1.0, 10.0)),  # nothing sampled after 1 s
    ([], 12.0, (12.0, 0.0, 12.0)),  # no frame at all: the whole video
    ([2, 0, 1], 3.0, (1.0, 0.0, 1.0)),  # order does not matter
    ([0, 4.2], 4.0, (4.2, 0.0, 4.2)),  # a frame past a probed length moves the end
])
def test_max_gap(pts, duration, want):
    assert max_gap(pts, duration) == pytest.approx(want)


@pytest.mark.parametrize(("truth", "scores", "thr", "want"), [
    # tp fp fn tn precision recall f1
    ([1, 1, 0, 0], [0.9, 0.4, 0.7, 0.1], 0.5, (1, 1, 1, 1, 0.5, 0.5, 0.5)),
    ([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], 0.5, (2, 0, 0, 2, 1.0, 1.0, 1.0)),
    ([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], 0.8, (2, 0, 0, 2, 1.0, 1.0, 1.0)),  # at the threshold is positive
    ([1, 0, 0, 0], [0.9, 0.8, 0.7, 0.1], 0.5, (1, 2, 0, 1, 1 / 3, 1.0, 0.5)),
    ([0, 0], [0.9, 0.1], 0.5, (0, 1, 0, 1, 0.0, None, None)),  # no positives: recall undefined
    ([1, 1], [0.1, 0.2], 0.5, (0, 0, 2, 0, None, 0.0, None)),  # nothing predicted: precision undefined
    ([1, 0], [0.1, 0.9], 0.5, (0, 1, 1, 0, 0.0, 0.0, 0.0)),
])
def test_frame_counts(truth, scores, thr, want):
    got = frame_counts(np.array(truth, bool), np.array(scores), thr)
    tp, fp, fn, tn, p, r, f1 = want
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (tp, fp, fn, tn)
    for key, value in (("precision", p), ("recall", r), ("f1", f1)):
        assert got[key] == (pytest.approx(value) if value is not None else None), key


@pytest.mark.parametrize(("truth", "scores", "ap", "curve"), [
    ([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], 1.0, [(0.9, 1.0, 0.5), (0.8, 1.0, 1.0), (0.2, 2 / 3, 1.0), (0.1, 0.5, 1.0)]),
    ([0, 1], [0.9, 0.8], 0.5, [(0.9, 0.0, 0.0), (0.8, 0.5, 1.0)]),
    ([1, 0, 1], [0.9, 0.5, 0.5], 1 / 2 + 1 / 2 * 2 / 3, [(0.9, 1.0, 0.5), (0.5, 2 / 3, 1.0)]),  # tied scores: one step
    ([0, 0], [0.9, 0.8], None, []),  # no positives: no curve
    ([1, 0], [float("nan"), 0.3], 0.0, [(0.3, 0.0, 0.0)]),  # a frame without a score is never predicted...
    ([1, 1], [float("nan"), 0.3], 0.5, [(0.3, 1.0, 0.5)]),  # ...but a positive one still counts for recall
])
def test_pr_curve_and_average_precision(truth, scores, ap, curve):
    t, p, r = pr_curve(np.array(truth, bool), np.array(scores))
    assert np.allclose(np.array([t, p, r]).T.reshape(-1, 3), np.array(curve, float).reshape(-1, 3))
    got = average_precision(np.array(truth, bool), np.array(scores))
    assert got == (pytest.approx(ap) if ap is not None else None)


@pytest.mark.parametrize(("whole", "score", "thr", "want"), [
    ([0.1, 0.7, 0.2], [0.8, 0.7, 0.3], 0.6, (2, 1)),  # frame 0 only by the re-check
    ([0.1, 0.2], [0.1, 0.2], 0.6, (0, 0)),
    ([0.6, 0.59], [0.6, 0.6], 0.6, (2, 1)),  # whole at the threshold needs no re-check
    ([float("nan")], [float("nan")], 0.6, (0, 0)),
])
def test_recheck_share(whole, score, thr, want):
    assert recheck_share(np.array(whole), np.array(score), thr) == want


def alert(start_pts, raised_pts, rule="r"):
    return AlertSeen(rule, start_pts, raised_pts, 0.9, False)


@pytest.mark.parametrize(("shot", "pts", "score", "whole", "alerts", "want"), [
    # found by a frame inside at or over 0.6; alerted 1 s after the start
    ((3, 7), [2, 3, 4, 5, 7], [0.9, 0.7, 0.8, 0.1, 0.9], [0.9, 0.1, 0.8, 0.1, 0.9], [alert(3, 4)],
     dict(sampled_frames=3, found=True, first_hit_pts=3.0, found_by_recheck=True, alerted=True, time_to_alert_s=1.0)),
    # hits only outside (2 and 7 are not in [3, 7)): not found; an alert raised before the shot does not count
    ((3, 7), [2, 3, 7], [0.9, 0.1, 0.9], None, [alert(1, 2)],
     dict(sampled_frames=1, found=False, first_hit_pts=None, found_by_recheck=False, alerted=False, time_to_alert_s=None)),
    # no sampled frame inside (a coverage miss)
    ((3.2, 3.8), [3, 4], [0.9, 0.9], None, [],
     dict(sampled_frames=0, found=False, alerted=False, time_to_alert_s=None)),
    # an incident that started after the shot ended is not the shot's alert; the first fitting one is
    ((3, 7), [3, 4, 8, 9], [0.9, 0.9, 0.9, 0.9], None, [alert(8, 9), alert(3, 4.5)],
     dict(found=True, alerted=True, alert_raised_pts=4.5, time_to_alert_s=1.5)),
    # exactly at the threshold is a hit
    ((0, 2), [0, 1], [0.6, 0.1], None, [],
     dict(found=True, first_hit_pts=0.0, found_by_recheck=False)),
])
def test_shot_result(shot, pts, score, whole, alerts, want):
    got = shot_result(shot[0], shot[1], series(pts, score, whole), 0.6, alerts)
    assert {k: got[k] for k in want} == want


POLICY = Policy.model_validate({
    "name": "p",
    "rules": [
        {"name": "cat-on-air", "model": "m", "label": "cat", "review": 0.3, "alert": 0.6},
        {"name": "nsfw", "model": "n", "label": "nsfw", "review": 0.5, "alert": 0.8},
    ],
})


def video(path, duration, intervals, cat, alerts=(), *, crops=None):
    pts = [p for p, _w, _s in cat]
    s = series(pts, [x for _p, _w, x in cat], [w for _p, w, _s in cat], crops)
    zero = series(pts, [0.0] * len(pts))
    return VideoResult(path, duration, tuple(Interval(**iv) for iv in intervals), np.array(pts, float),
                       {"cat-on-air": s, "nsfw": zero}, list(alerts))


def test_label_metrics_pool_videos():
    """Two videos, one shot each, one clean video with a false alert: every figure by hand."""
    a = video("a.ts", 10.0, [{"label": "cat-on-air", "start": 2, "end": 5}],
              [(0, 0.0, 0.0), (2, 0.1, 0.7), (3, 0.1, 0.9), (4, 0.7, 0.7), (6, 0.0, 0.0)],
              [AlertSeen("cat-on-air", 2, 3, 0.9, True)], crops=[0, 2, 2, 0, 0])
    b = video("b.ts", 8.0, [{"label": "cat-on-air", "start": 1, "end": 3}],
              [(0, 0.0, 0.0), (4, 0.0, 0.0)])  # the shot is never sampled
    c = video("c.ts", 3600.0, [], [(0, 0.0, 0.0), (1, 0.65, 0.65)], [AlertSeen("cat-on-air", 1, 1, 0.65, False)])
    target = resolve_targets(parse_labels('{"videos": [{"path": "a.ts", "intervals": '
                                          '[{"label": "cat-on-air", "start": 2, "end": 5}]}]}'), POLICY)[0]
    m = label_metrics(target, [a, b, c], [0.5, 0.8])
    assert (m["shots"], m["shots_sampled"], m["shots_found"], m["shot_recall"]) == (2, 1, 1, 0.5)
    assert (m["frames"], m["positive_frames"]) == (9, 3)
    by = {fm["threshold"]: fm for fm in m["frame_metrics"]}
    assert sorted(by) == [0.5, 0.6, 0.8]  # the rule's alert threshold is always there
    assert (by[0.6]["tp"], by[0.6]["fp"], by[0.6]["fn"]) == (3, 1, 0)
    assert (by[0.8]["tp"], by[0.8]["fp"], by[0.8]["recall"]) == (1, 0, pytest.approx(1 / 3, abs=1e-4))
    # clean time: 10 - 3 + 8 - 2 + 3600 s; one alert started outside every shot
    assert m["clean_seconds"] == pytest.approx(3613.0)
    assert (m["alerts"], m["alerts_clean"]) == (2, 1)
    assert m["alerts_per_clean_hour"] == pytest.approx(3600 / 3613, abs=0.01)
    assert m["time_to_alert_s"] == {"median": 1.0, "max": 1.0, "values": [1.0]}
    # detections at 0.6: frames 2, 3, 4 of a and 1 of c; 2 and 3 only by the re-check
    assert (m["detections"], m["detections_by_recheck"], m["recheck_share"]) == (4, 2, 0.5)
    assert (m["recheck_crops"], m["rechecked_frames"]) == (4, 2)
    assert m["recheck_crops_per_frame"] == pytest.approx(4 / 9, abs=1e-4)
    assert m["max_gap_s"] == pytest.approx(3599.0)  # c: nothing after 1 s of an hour
    # the rule no interval names: every second is clean, nothing positive
    other = resolve_targets(parse_labels('{"videos": [{"path": "a.ts"}]}'), POLICY)
    assert [t.key for t in other] == ["cat-on-air", "nsfw"]
    n = label_metrics(other[1], [a, b, c], [0.5])
    assert (n["shots"], n["shot_recall"], n["positive_frames"], n["alerts_per_clean_hour"]) == (0, None, 0, 0.0)
    assert n["clean_seconds"] == pytest.approx(3618.0)
    report = {"policy": "p", "videos_total": 3, "video_seconds": 3618.0, "sampled_frames": 9, "backend": "x",
              "labels": [m, n], "videos": [], "inference": {}}
    text = markdown(report)
    assert "| cat-on-air | cat-on-air | 0.60 | 2 | 0.50 (1/2) |" in text and "| nsfw |" in text


def test_a_failed_video_is_left_out_of_the_metrics():
    ok = video("a.ts", 10.0, [{"label": "cat-on-air", "start": 2, "end": 5}], [(3, 0.9, 0.9)])
    bad = video("b.ts", 10.0, [{"label": "cat-on-air", "start": 2, "end": 5}], [])
    bad.error = {"error": "CorruptMediaError", "reason": "corrupt_media", "message": "x"}
    target = resolve_targets(parse_labels('{"videos": [{"path": "a.ts"}]}'), POLICY)[0]
    m = label_metrics(target, [ok, bad], [0.5])
    assert (m["videos"], m["shots"], m["shot_recall"]) == (1, 1, 1.0)


@pytest.mark.parametrize(("text", "csv_format", "want"), [
    ('{"videos": [{"path": "a.ts", "intervals": [{"label": "cat-on-air", "start": 1, "end": 2.5}]}]}', False,
     [("a.ts", None, [("cat-on-air", 1.0, 2.5, None)])]),
    ('[{"path": "a.ts", "duration": 9}, {"path": "b.ts", "intervals": '
     '[{"label": "m:cat", "start": 0, "end": 1, "box": [1, 2, 3, 4]}]}]', False,
     [("a.ts", 9.0, []), ("b.ts", None, [("m:cat", 0.0, 1.0, (1, 2, 3, 4))])]),
    ("video,label,start,end\na.ts,cat-on-air,1,2\na.ts,nsfw,3,4\nb.ts,,,\n", True,
     [("a.ts", None, [("cat-on-air", 1.0, 2.0, None), ("nsfw", 3.0, 4.0, None)]), ("b.ts", None, [])]),
    ("video,label,start,end,x0,y0,x1,y1,duration\na.ts,m:cat,1,2,10,20,30,40,12.5\n", True,
     [("a.ts", 12.5, [("m:cat", 1.0, 2.0, (10, 20, 30, 40))])]),
])
def test_parse_labels(text, csv_format, want):
    got = parse_labels(text, csv_format=csv_format)
    assert [(v.path, v.duration, [(i.label, i.start, i.end, i.box) for i in v.intervals]) for v in got.videos] == want


@pytest.mark.parametrize(("text", "csv_format", "message"), [
    ("not json", False, "not JSON"),
    ('{"videos": []}', False, "videos: Tuple should have at least 1 item"),
    ('{"videos": [{"path": "a.ts", "intervals": [{"label": "x", "start": 5, "end": 2}]}]}', False,
     "videos.0.intervals.0: end 2.0 must be after start 5.0"),
    ('{"videos": [{"path": "a.ts", "intervals": [{"label": "x", "start": -1, "end": 2}]}]}', False,
     "videos.0.intervals.0.start: Input should be greater than or equal to 0"),
    ('{"videos": [{"path": "a.ts", "intervals": [{"label": "x", "start": 0, "end": 2, "box": [5, 5, 1, 1]}]}]}',
     False, "box [5, 5, 1, 1] must be"),
    ('{"videos": [{"path": "a.ts", "intervals": [{"lable": "x", "start": 0, "end": 2}]}]}', False,
     "videos.0.intervals.0.lable: Extra inputs are not permitted"),
    ('{"videos": [{"path": "a.ts"}, {"path": "a.ts"}]}', False, "videos listed twice: ['a.ts']"),
    ('{"videos": [{"path": "a.ts", "duration": 0}]}', False, "videos.0.duration"),
    ("video,start,end\na.ts,1,2\n", True, "CSV header lacks ['label']"),
    ("video,label,start,end,colour\na.ts,x,1,2,red\n", True, "unknown columns ['colour']"),
    ("video,label,start,end,x0\na.ts,x,1,2,5\n", True, "line 2: a box needs all of x0, y0, x1, y1"),
    ("video,label,start,end\na.ts,,1,2\n", True, "line 2: start/end without a label"),
    ("video,label,start,end\na.ts,x,one,2\n", True, "videos.0.intervals.0.start: Input should be a valid number"),
])
def test_parse_labels_rejects(text, csv_format, message):
    with pytest.raises(LabelsError) as info:
        parse_labels(text, csv_format=csv_format, source="labels f")
    assert str(info.value).startswith("labels f: ") and message in str(info.value)
    assert info.value.reason == "bad_labels"


@pytest.mark.parametrize(("labels", "want"), [
    (["cat-on-air"], [("cat-on-air", "cat-on-air"), ("nsfw", "nsfw")]),
    (["m:cat"], [("m:cat", "cat-on-air"), ("nsfw", "nsfw")]),
    (["n:nsfw", "cat-on-air", "n:nsfw"], [("n:nsfw", "nsfw"), ("cat-on-air", "cat-on-air")]),
    ([], [("cat-on-air", "cat-on-air"), ("nsfw", "nsfw")]),
])
def test_resolve_targets(labels, want):
    ivs = ",".join(f'{{"label": "{lb}", "start": {i}, "end": {i + 1}}}' for i, lb in enumerate(labels))
    got = resolve_targets(parse_labels(f'{{"videos": [{{"path": "a.ts", "intervals": [{ivs}]}}]}}'), POLICY)
    assert [(t.key, t.rule) for t in got] == want


@pytest.mark.parametrize("label", ["dog", "m:dog", "x:cat", "cat"])
def test_resolve_targets_rejects_labels_the_policy_lacks(label):
    labels = parse_labels(f'[{{"path": "a.ts", "intervals": [{{"label": "{label}", "start": 0, "end": 1}}]}}]')
    with pytest.raises(LabelsError, match=f"label '{label}' .* not a rule of policy 'p'.*'m:cat'"):
        resolve_targets(labels, POLICY)


@pytest.mark.parametrize(("text", "want"), [
    ("0.5", (0.5,)),
    ("0.1,0.5, 0.9", (0.1, 0.5, 0.9)),
    ("0,1", (0.0, 1.0)),
    ("1.5", ValueError),
    ("a", ValueError),
    ("", ValueError),
])
def test_parse_thresholds(text, want):
    if want is ValueError:
        with pytest.raises(ValueError):
            parse_thresholds(text)
    else:
        assert parse_thresholds(text) == want
        assert all(not math.isnan(t) for t in want)
