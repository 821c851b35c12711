"""The pure rules step: k-of-n, review band, hysteresis, cooldown, replays, ids, state round trip."""

from __future__ import annotations

import json

import pytest

from livemod.engines.types import FrameScores, Recheck
from livemod.rules.engine import StreamState, alert_id, evaluate
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
    ],
)
def test_sequences(scores, expected):
    kinds, _alerts, _ = run(policy(), scores)
    assert kinds == expected


def test_cooldown_suppresses_a_new_incident_then_allows_it():
    p = policy(cooldown_s=4.0)
    # alert at 1, close at 3 (t=1003); hits at 4, 5 (t=1005 < 1007) suppressed; 2 of 3 at 7 (t=1007) alerts again
    kinds, alerts, _ = run(p, [0.7, 0.7, 0.1, 0.1, 0.7, 0.7, 0.1, 0.7])
    assert kinds == ["-", "alert", "-", "close", "-", "-", "-", "alert"]
    assert alerts[0].id != alerts[1].id


def test_replayed_observation_is_a_no_op():
    p = policy()
    state = StreamState()
    state, v1 = evaluate(state, obs(0, 0.7), p)
    state, v2 = evaluate(state, obs(1, 0.7), p)
    again, v3 = evaluate(state, obs(1, 0.7), p)
    assert [v.kind for v in v2] == ["alert"] and v3 == [] and again is state


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
    assert json.loads(json.dumps(d))["box"] == [1, 2, 30, 40] and d["v"] == 1


def test_whole_frame_alert_does_not_claim_the_recheck():
    _k, alerts, _ = run(policy(), [0.9, 0.9])
    assert not alerts[0].recheck_used and alerts[0].box is None


def test_missing_model_leaves_the_window_alone():
    kinds, _a, _s = run(policy(), [0.7, None, None, 0.7])
    assert kinds == ["-", "-", "-", "alert"]


def test_state_round_trip_with_open_incident_and_recheck():
    _k, _a, state = run(policy(), [obs(0, 0.05, recheck_after=0.9), obs(1, 0.9)])
    restored = StreamState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state and restored.open_incidents() == state.open_incidents() != {}
