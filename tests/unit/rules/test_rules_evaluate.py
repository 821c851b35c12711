"""The pure rules step: k-of-n, review band, hysteresis, cooldown, replays, ids, state round trip."""

from __future__ import annotations

import json

import pytest

from livemod.core.errors import MessageError
from livemod.engines.types import FrameScores, Recheck
from livemod.rules.evaluate import RuleState, StreamState, alert_id, end_stream, evaluate
from livemod.rules.policy import Policy, Rule, Window
from livemod.rules.types import Observation


def policy(**rule_kw) -> Policy:
    base = dict(name="r", model="m", label="x", review=0.3, alert=0.6, window=Window(k=2, n=3), close_after=2,
                cooldown_s=10.0, recheck=None)
    base.update(rule_kw)
    return Policy(name="p", rules=(Rule(**base),))


def obs(i: int, score: float | None, *, recheck_after: float | None = None, t0: float = 1000.0) -> Observation:
    scores = {}
    if score is not None:
        rc = {}
        if recheck_after is not None:
            rc["x"] = Recheck("x", score, recheck_after, (1, 2, 30, 40), "cam_box", 2)
        scores["m"] = FrameScores("m", "v1", {"x": score}, {}, rc)
    return Observation("s1", f"ref/{i}@0", 0.0, t0 + i, scores)


def run(p: Policy, seq, state: StreamState | None = None):
    state = state or StreamState()
    kinds = []
    alerts = []
    for i, item in enumerate(seq):
        o = item if isinstance(item, Observation) else obs(i, item)
        state, verdicts = evaluate(state, o, p)
        kinds.append("+".join(sorted(v.kind for v in verdicts)) or "-")
        alerts += [v.alert for v in verdicts if v.alert]
    return kinds, alerts, state


@pytest.mark.parametrize(
    "scores, expected",
    [
        ([0.1, 0.1, 0.1], ["-", "-", "-"]),
        ([0.7, 0.1, 0.1], ["-", "-", "-"]),                      # one hit is not k=2
        ([0.7, 0.7, 0.7, 0.7], ["-", "alert", "-", "-"]),         # one alert while it stays open: no flood
        ([0.7, 0.1, 0.7], ["-", "-", "alert"]),                   # 2 of the last 3
        ([0.7, 0.1, 0.1, 0.7], ["-", "-", "-", "-"]),             # the first hit fell out of the window
        ([0.4, 0.5, 0.1], ["review", "review", "-"]),             # review band, no alert
        ([0.7, 0.7, 0.1, 0.1], ["-", "alert", "-", "close"]),     # hysteresis: closes after 2 frames below
        ([0.7, 0.7, 0.1, 0.35, 0.1, 0.1], ["-", "alert", "-", "review", "-", "close"]),  # 0.35 >= close_below resets
        ([0.7, 0.7, 0.65, 0.9, 0.1, 0.1], ["-", "alert", "-", "-", "-", "close"]),  # hits while open: no flood
        ([0.3, 0.6, 0.6], ["review", "-", "alert"]),               # both thresholds are inclusive
        ([0.7, 0.7, 0.1, 0.1, 0.7, 0.7], ["-", "alert", "-", "close", "-", "alert"]),  # window restarts after close
    ],
)
def test_sequences(scores, expected):
    kinds, _alerts, _ = run(policy(cooldown_s=0.0), scores)
    assert kinds == expected


@pytest.mark.parametrize(
    "rule_kw, scores, expected",
    [
        # close_below defaults to review (0.3): 0.29 counts towards closing, close_after defaults to n=3
        (dict(close_after=None), [0.7, 0.7, 0.29, 0.29, 0.29], ["-", "alert", "-", "-", "close"]),
        # close_below 0.5 above review: a review-band 0.4 still counts towards closing
        (dict(close_below=0.5), [0.7, 0.7, 0.4, 0.4], ["-", "alert", "review", "close+review"]),
        # k=1 of n=1: every hit alone alerts
        (dict(window=Window(k=1, n=1), close_after=1), [0.7, 0.1, 0.7], ["alert", "close", "alert"]),
        # k=3 of n=5
        (dict(window=Window(k=3, n=5)), [0.7, 0.1, 0.7, 0.1, 0.7], ["-", "-", "-", "-", "alert"]),
        # review == alert: no review band at all
        (dict(review=0.6), [0.59, 0.6, 0.6], ["-", "-", "alert"]),
    ],
)
def test_rule_options(rule_kw, scores, expected):
    kinds, _alerts, _ = run(policy(cooldown_s=0.0, **rule_kw), scores)
    assert kinds == expected


@pytest.mark.parametrize(
    "scores, expected",
    [
        # alert at 1, close at 3 (t=1003), cooldown until t=1007: hits at 4, 5 do not count;
        # a fresh pair at 7, 8 opens the next incident, which starts at t=1007
        ([0.7, 0.7, 0.1, 0.1, 0.7, 0.7, 0.1, 0.7, 0.7], ["-", "alert", "-", "close", "-", "-", "-", "-", "alert"]),
        # a hit inside the cooldown (t=1006) never pairs with one after it (t=1007)
        ([0.7, 0.7, 0.1, 0.1, 0.1, 0.1, 0.7, 0.7], ["-", "alert", "-", "close", "-", "-", "-", "-"]),
        # review verdicts are not subject to the cooldown
        ([0.7, 0.7, 0.1, 0.1, 0.4], ["-", "alert", "-", "close", "review"]),
    ],
)
def test_cooldown(scores, expected):
    kinds, alerts, _ = run(policy(cooldown_s=4.0), scores)
    assert kinds == expected
    assert all(a.start_wall_clock >= 1007.0 for a in alerts[1:])
    assert len({a.id for a in alerts}) == len(alerts)


@pytest.mark.parametrize("score", [0.7, 0.4, 0.1])
def test_replayed_observation_is_a_no_op(score):
    p = policy()
    state = StreamState()
    state, _v1 = evaluate(state, obs(0, 0.7), p)
    state, v2 = evaluate(state, obs(1, score), p)
    assert state.seen("ref/1@0") and not state.seen("ref/2@0")
    again, v3 = evaluate(state, obs(1, score), p)
    assert v3 == [] and again is state
    assert [v.kind for v in v2] == {0.7: ["alert"], 0.4: ["review"], 0.1: []}[score]


def test_close_names_the_alert_it_ends():
    p = policy()
    state, verdicts = StreamState(), []
    for i, s in enumerate([0.7, 0.9, 0.1, 0.1]):
        state, v = evaluate(state, obs(i, s), p)
        verdicts += v
    opened, closed = verdicts
    assert opened.kind == "alert" and closed.kind == "close"
    assert closed.alert_id == opened.alert_id == opened.alert.id and closed.frame_id == "ref/3@0"
    assert opened.alert.score == pytest.approx(0.9) and state.open_incidents() == {}


def test_alert_id_is_stable_across_a_replay_from_saved_state():
    p = policy()
    _kinds, alerts, _ = run(p, [0.1, 0.7, 0.7])
    # crash before the second hit was saved: replay from the state after frame 1
    state = StreamState()
    for i, s in enumerate([0.1, 0.7]):
        state, _ = evaluate(state, obs(i, s), p)
    restored = StreamState.from_dict(json.loads(json.dumps(state.to_dict())))
    _state, verdicts = evaluate(restored, obs(2, 0.7), p)
    assert [v.alert.id for v in verdicts if v.alert] == [alerts[0].id]
    assert alerts[0].id == alert_id("s1", "p", "r", 1001.0)


def test_alert_contents_and_recheck_used():
    p = policy()
    seq = [obs(0, 0.05, recheck_after=0.9), obs(1, 0.04, recheck_after=0.8)]
    _kinds, alerts, _ = run(p, seq)
    (a,) = alerts
    assert a.recheck_used and a.box == (1, 2, 30, 40) and a.score == pytest.approx(0.9)
    assert [f.frame_id for f in a.frames] == ["ref/0@0", "ref/1@0"] and a.frames[0].whole_frame_score == pytest.approx(0.05)
    assert a.start_frame_id == "ref/0@0" and a.model_versions == {"m": "v1"}
    d = a.to_dict()
    assert json.loads(json.dumps(d))["box"] == [1, 2, 30, 40] and d["v"] == 1 and d["evidence"] == {}
    assert d["frames"][1]["recheck"]["after"] == pytest.approx(0.8)


def test_whole_frame_alert_does_not_claim_the_recheck():
    _k, alerts, _ = run(policy(), [0.9, 0.9])
    assert not alerts[0].recheck_used and alerts[0].box is None


def test_missing_model_leaves_the_window_alone():
    kinds, _a, _s = run(policy(), [0.7, None, None, 0.7])
    assert kinds == ["-", "-", "-", "alert"]


def test_missing_model_does_not_close_an_incident():
    kinds, _a, state = run(policy(), [0.7, 0.7, 0.1, None, None, None])
    assert kinds == ["-", "alert", "-", "-", "-", "-"] and state.open_incidents()


def test_a_label_the_model_did_not_score_is_no_data():
    o = Observation("s1", "ref/0@0", 0.0, 1000.0, {"m": FrameScores("m", "v1", {"other": 0.99}, {}, {})})
    state, verdicts = evaluate(StreamState(), o, policy())
    assert verdicts == [] and state.rules["r"].window == ()


def test_rules_are_independent():
    two = Policy(name="p", rules=(
        Rule(name="a", model="m", label="x", review=0.3, alert=0.6, window=Window(k=1, n=1), recheck=None),
        Rule(name="b", model="m", label="x", review=0.5, alert=0.9, window=Window(k=1, n=1), recheck=None),
    ))
    _state, verdicts = evaluate(StreamState(), obs(0, 0.7), two)
    assert [(v.rule, v.kind) for v in verdicts] == [("a", "alert"), ("b", "review")]
    assert verdicts[0].alert.id == alert_id("s1", "p", "a", 1000.0)


@pytest.mark.parametrize(
    "seq",
    [
        [],
        [0.1],
        [obs(0, 0.05, recheck_after=0.9), obs(1, 0.9)],          # open incident, a re-check in the window
        [0.7, 0.7, 0.1, 0.1, 0.7],                               # closed: last_close and cooldown
    ],
)
def test_state_round_trip(seq):
    _k, _a, state = run(policy(), seq)
    restored = StreamState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state and restored.open_incidents() == state.open_incidents()
    # and the restored state carries on exactly like the original
    nxt = obs(10, 0.7)
    assert evaluate(restored, nxt, policy()) == evaluate(state, nxt, policy())


@pytest.mark.parametrize(
    "data",
    [
        {"v": 2, "rules": {}},
        {"v": 1, "rules": {"r": {"window": [{"frame_id": "a"}]}}},
        {"v": 1, "rules": {"r": {"incident": {"nope": 1}}}},
        {"v": 1, "rules": ["not", "a", "dict"]},
        ["not", "a", "dict"],
    ],
)
def test_bad_saved_state_is_a_typed_error(data):
    with pytest.raises(MessageError) as info:
        StreamState.from_dict(data)
    assert info.value.reason == "bad_rule_state"


@pytest.mark.parametrize("data", [None, {}])
def test_no_saved_state_is_a_fresh_one(data):
    assert StreamState.from_dict(data) == StreamState()


# ---- replays, re-check attribution and missing data (parametrized tables) ------------------


def _pol(**kw) -> Policy:
    base = dict(name="r", model="m", label="x", review=0.3, alert=0.6, window=Window(k=2, n=3), close_after=2,
                cooldown_s=0.0, recheck=None)
    base.update(kw)
    return Policy(name="p", rules=(Rule(**base),))


def _o(i: int, whole: float | None, after: float | None = None, *, t: float | None = None,
       model: str = "m", label: str = "x") -> Observation:
    """Frame i at wall clock t (default 1000 + i); ``after`` adds a re-check of label x."""
    scores = {}
    if whole is not None:
        rc = {label: Recheck(label, whole, after, (10 + i, 20, 30, 40), "cam_box", 2)} if after is not None else {}
        scores[model] = FrameScores(model, "v1", {label: whole}, {}, rc)
    return Observation("s1", f"ref/{i}@0", float(i), 1000.0 + i if t is None else t, scores)


def _kinds(p: Policy, observations, state: StreamState | None = None):
    state = state or StreamState()
    kinds, alerts = [], []
    for o in observations:
        state, verdicts = evaluate(state, o, p)
        kinds.append("+".join(sorted(v.kind for v in verdicts)) or "-")
        alerts += [v.alert for v in verdicts if v.alert is not None]
    return kinds, alerts, state


# A run with two incidents (alerts at 1 and 6, closes at 3 and 8) and review frames in between.
REPLAY_SEQ = [0.7, 0.7, 0.1, 0.1, 0.4, 0.8, 0.9, 0.1, 0.1, 0.5]


@pytest.mark.parametrize("saved_after", range(len(REPLAY_SEQ) + 1))
@pytest.mark.parametrize("overlap", [0, 1, 3])
def test_crash_and_replay_from_saved_state_gives_the_same_verdicts_and_ids(saved_after, overlap):
    """State saved after `saved_after` frames; the worker replays from `overlap` frames earlier."""
    p = _pol()
    frames = [_o(i, s) for i, s in enumerate(REPLAY_SEQ)]
    kinds, alerts, final = _kinds(p, frames)
    assert kinds == ["-", "alert", "-", "close", "review", "-", "alert", "-", "close", "review"]

    _k, _a, saved = _kinds(p, frames[:saved_after])
    restored = StreamState.from_dict(json.loads(json.dumps(saved.to_dict())))
    start = max(0, saved_after - overlap)
    replay_kinds, replay_alerts, replay_final = _kinds(p, frames[start:], restored)
    # frames already in the saved state are no-ops; the rest give exactly what the first run gave
    assert replay_kinds == ["-"] * (saved_after - start) + kinds[saved_after:]
    at = [i for i, k in enumerate(kinds) if "alert" in k]
    expected_alerts = [a for a, i in zip(alerts, at) if i >= saved_after]
    assert [a.id for a in replay_alerts] == [a.id for a in expected_alerts]
    assert replay_alerts == expected_alerts  # same contents too (ids, frames, scores)
    assert replay_final == final


@pytest.mark.parametrize("replayed", [0, 1, 2, 3])
def test_replaying_any_recent_frame_is_a_no_op(replayed):
    p = _pol()
    frames = [_o(i, s) for i, s in enumerate([0.7, 0.7, 0.1, 0.1])]  # alert at 1, close at 3
    _k, _a, state = _kinds(p, frames)
    again, verdicts = evaluate(state, frames[replayed], p)
    assert verdicts == [] and again is state
    # even with different scores: the frame id alone decides
    again, verdicts = evaluate(state, _o(replayed, 0.99), p)
    assert verdicts == [] and again is state


def test_alert_id_depends_on_the_first_hit_time_only():
    p = _pol(window=Window(k=2, n=4))
    # the same incident start (t=1001) reached through different frames gives the same id
    _k1, (a1,), _ = _kinds(p, [_o(0, 0.1), _o(1, 0.7), _o(2, 0.7)])
    _k2, (a2,), _ = _kinds(p, [_o(0, 0.2), _o(1, 0.9), _o(2, 0.1), _o(3, 0.8)])
    assert a1.start_wall_clock == a2.start_wall_clock == 1001.0
    assert a1.id == a2.id == alert_id("s1", "p", "r", 1001.0)
    # a different stream, policy, rule or start gives another id
    others = {alert_id("s2", "p", "r", 1001.0), alert_id("s1", "q", "r", 1001.0),
              alert_id("s1", "p", "r2", 1001.0), alert_id("s1", "p", "r", 1001.001)}
    assert a1.id not in others and len(others) == 4


@pytest.mark.parametrize(
    "frames, recheck_used, box",
    [
        # (whole, re-check after) per frame; k=2 of n=3, alert 0.6
        ([(0.7, None), (0.8, None)], False, None),                       # whole frames alone
        ([(0.05, 0.9), (0.04, 0.8)], True, (10, 20, 30, 40)),            # re-check alone (best after: frame 0)
        ([(0.05, 0.7), (0.04, 0.8)], True, (11, 20, 30, 40)),            # best after is frame 1
        ([(0.7, None), (0.05, 0.9)], True, (11, 20, 30, 40)),            # one whole hit + one re-check hit
        ([(0.7, 0.65), (0.8, None)], False, ...),                        # a re-check ran but was not needed
        ([(0.05, 0.5), (0.7, None), (0.8, None)], False, None),          # a re-check below alert is no hit
        ([(0.5, 0.59), (0.7, None), (0.5, 0.6)], True, ...),             # re-check exactly at alert counts
    ],
)
def test_recheck_used_and_box(frames, recheck_used, box):
    # box ... = not checked: the best hit has no re-check but another hit has one; Alert.box is documented
    # as "the re-check crop of the best hit" while _step takes the hit with the highest re-check score
    kinds, alerts, _ = _kinds(_pol(), [_o(i, w, a) for i, (w, a) in enumerate(frames)])
    assert kinds[-1] == "alert" and kinds.count("alert") == 1
    (a,) = alerts
    assert a.recheck_used is recheck_used
    if box is not ...:
        assert a.box == box
    assert a.score == pytest.approx(max(max(w, a_ or 0.0) for w, a_ in frames))
    assert all(f.score >= 0.6 for f in a.frames)  # frames lists the hits only


def test_recheck_used_when_whole_scores_are_just_below_the_threshold():
    _k, (a,), _ = _kinds(_pol(), [_o(0, 0.5999996, 0.7), _o(1, 0.5999996, 0.7)])
    assert a.recheck_used


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param({"whole": None}, id="no-scores"),
        pytest.param({"model": "other"}, id="other-model"),
        pytest.param({"label": "y"}, id="other-label"),
    ],
)
@pytest.mark.parametrize(
    "scores, expected",
    [
        # M = a frame without this rule's model/label: the window does not move
        ([0.7, "M", "M", "M", 0.7], ["-", "-", "-", "-", "alert"]),      # 2 of the last 3 frames *with data*
        ([0.7, 0.1, "M", 0.1, 0.7], ["-", "-", "-", "-", "-"]),          # the first hit still falls out
        ([0.7, 0.7, 0.1, "M", "M", 0.1], ["-", "alert", "-", "-", "-", "close"]),  # closing counts data frames
        (["M", 0.4, "M"], ["-", "review", "-"]),
    ],
)
def test_missing_model_leaves_the_window_unchanged(missing, scores, expected):
    p = _pol()
    observations = []
    for i, s in enumerate(scores):
        if s == "M":
            observations.append(_o(i, **({"whole": 0.99} | missing)))
        else:
            observations.append(_o(i, s))
    state, kinds = StreamState(), []
    for o, s in zip(observations, scores):
        before = state
        state, verdicts = evaluate(state, o, p)
        kinds.append("+".join(sorted(v.kind for v in verdicts)) or "-")
        if s == "M":
            # the rule's state is untouched; the frame is still remembered (a replay of it is a no-op)
            assert state.rules["r"] == before.rules.get("r", RuleState()) and state.recent[-1] == o.frame_id
    assert kinds == expected


@pytest.mark.parametrize(
    "times, expected",
    [
        # wall clocks, not frame counts: alert at t=1, close at t=3 (cooldown 10 s, until t=13)
        ([0, 1, 2, 3, 4, 5, 6], ["-", "alert", "-", "close", "-", "-", "-"]),      # frames 4..6 at t=4..6
        ([0, 1, 2, 3, 13, 14, 15], ["-", "alert", "-", "close", "-", "alert", "-"]),  # a sparse stream: t>=13
        ([0, 1, 2, 3, 12.9, 13, 14], ["-", "alert", "-", "close", "-", "-", "alert"]),  # t=12.9 is still inside
    ],
)
def test_cooldown_is_measured_on_the_observation_wall_clock(times, expected):
    p = _pol(cooldown_s=10.0)
    scores = [0.7, 0.7, 0.1, 0.1, 0.7, 0.7, 0.7]
    kinds, alerts, _ = _kinds(p, [_o(i, s, t=1000.0 + t) for i, (s, t) in enumerate(zip(scores, times))])
    assert kinds == expected
    assert all(a.start_wall_clock >= 1013.0 for a in alerts[1:])


@pytest.mark.parametrize(
    "times, scores, stale, expected",
    [
        # an incident open when the stream stopped closes on the first frame after the silence,
        # and the violation going on after it is a new incident with a new id
        ([0, 1, 2, 400, 401], [0.7, 0.7, 0.7, 0.7, 0.7], 300.0, ["-", "alert", "-", "close", "alert"]),
        # a silence just short of stale_after_s changes nothing: no second alert while it is open
        ([0, 1, 2, 299, 300], [0.7, 0.7, 0.7, 0.7, 0.7], 300.0, ["-", "alert", "-", "-", "-"]),
        # hits from before the silence do not count towards k of n after it
        ([0, 400, 401], [0.7, 0.7, 0.1], 300.0, ["-", "-", "-"]),
        ([0, 200, 201], [0.7, 0.7, 0.1], 300.0, ["-", "alert", "-"]),
        # switched off: the incident stays open across any silence
        ([0, 1, 2, 4000, 4001], [0.7, 0.7, 0.7, 0.7, 0.7], None, ["-", "alert", "-", "-", "-"]),
    ],
)
def test_a_stream_that_stops_and_comes_back_starts_afresh(times, scores, stale, expected):
    p = _pol(stale_after_s=stale, cooldown_s=60.0)
    kinds, alerts, _ = _kinds(p, [_o(i, s, t=1000.0 + t) for i, (s, t) in enumerate(zip(scores, times))])
    assert kinds == expected
    assert len({a.id for a in alerts}) == len(alerts), "a new incident gets a new id"


def test_a_stale_close_says_so_and_names_the_incident():
    p = _pol(stale_after_s=300.0)
    state = StreamState()
    for i, t in enumerate((0, 1)):
        state, verdicts = evaluate(state, _o(i, 0.7, t=1000.0 + t), p)
    opened = verdicts[0].alert_id
    state, verdicts = evaluate(state, _o(2, 0.1, t=1500.0), p)
    assert [(v.kind, v.alert_id, v.reason) for v in verdicts] == [("close", opened, "stale")]
    assert state.rules["r"].incident is None and state.rules["r"].last_close == 1001.0
    state, verdicts = evaluate(state, _o(3, 0.1, t=1501.0), p)
    assert verdicts == []


def test_the_state_of_a_rule_removed_from_the_policy_is_dropped():
    two = Policy(name="p", rules=(Rule(name="a", model="m", label="x", review=0.3, alert=0.6, recheck=None),
                                  Rule(name="b", model="m", label="x", review=0.3, alert=0.6, recheck=None)))
    one = Policy(name="p", rules=(two.rules[0],))
    state, _ = evaluate(StreamState(), _o(0, 0.7), two)
    assert set(state.rules) == {"a", "b"}
    state, _ = evaluate(state, _o(1, 0.7), one)
    assert set(state.rules) == {"a"} and len(state.rules["a"].window) == 2


def test_the_end_of_a_broadcast_closes_its_incidents_and_empties_its_windows():
    two = Policy(name="p", rules=(Rule(name="a", model="m", label="x", review=0.3, alert=0.6, recheck=None,
                                       window=Window(k=1, n=3)),
                                  Rule(name="b", model="m", label="x", review=0.3, alert=0.9, recheck=None,
                                       window=Window(k=2, n=3))))
    state, verdicts = evaluate(StreamState(), _o(0, 0.7), two)
    opened = [v.alert_id for v in verdicts if v.kind == "alert"]
    assert len(opened) == 1
    state, verdicts = end_stream(state, "s1/9@end", 1010.0)
    assert [(v.kind, v.rule, v.alert_id, v.reason) for v in verdicts] == [("close", "a", opened[0], "ended")]
    assert all(rs.window == () and rs.incident is None for rs in state.rules.values())
    assert state.rules["a"].last_close == 1010.0
    again, verdicts = end_stream(state, "s1/9@end", 1010.0)
    assert verdicts == [] and again is state, "a replayed end marker is a no-op"


@pytest.mark.parametrize("frames", [1, 31, 32, 33, 255, 256, 257, 300, 1000])
def test_at_least_the_last_recent_frames_are_remembered_across_generations_and_a_round_trip(frames):
    from livemod.rules.evaluate import RECENT_FRAMES

    p = policy()
    state = StreamState()
    for i in range(frames):
        state, _v = evaluate(state, obs(i, 0.1), p)
    kept = min(frames, RECENT_FRAMES)
    for restored in (state, StreamState.from_dict(json.loads(json.dumps(state.to_dict())))):
        assert all(restored.seen(f"ref/{i}@0") for i in range(frames - kept, frames))
        assert len(restored.recent) >= kept and restored.recent[-1] == f"ref/{frames - 1}@0"
        assert not restored.seen(f"ref/{frames}@0")
    if frames >= 2 * RECENT_FRAMES:  # memory is bounded: the oldest frames are forgotten
        assert not state.seen("ref/0@0") and len(state.recent) <= RECENT_FRAMES + 32
