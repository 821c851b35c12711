"""The pure rules step: evaluate(state, observation, policy) -> (state, verdicts). No I/O, no clock."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from livemod.core.errors import MessageError
from livemod.engines.types import Recheck
from livemod.rules.policy import Policy, Rule
from livemod.rules.types import Alert, FrameEvidence, Observation, Verdict

RECENT_FRAMES = 256  # frame ids remembered per stream to recognise replays (at least this many)
_GENERATION = 32  # ids are kept in generations of this size, so remembering one is O(1) amortised
STATE_VERSION = 1


def alert_id(stream_id: str, policy: str, rule: str, start_wall_clock: float) -> str:
    """Idempotent alert id: the same incident start gives the same id on every replay."""
    key = f"{stream_id}\x1f{policy}\x1f{rule}\x1f{round(start_wall_clock * 1000)}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Entry(NamedTuple):
    """One frame in a rule's window (a named tuple: the rule stage builds one per rule and frame).

    Attributes:
        score: decision score (whole frame or re-check, the higher); ``whole``: whole frame only.
        hit: score >= the rule's alert threshold.
    """

    frame_id: str
    pts: float
    wall_clock: float
    score: float
    whole: float
    hit: bool
    recheck: Recheck | None = None


class Incident(NamedTuple):
    """An open incident: its alert, its first hit, the peak score, and frames below so far."""

    alert_id: str
    start_frame_id: str
    start_wall_clock: float
    peak: float
    below: int = 0


class RuleState(NamedTuple):
    """One rule on one stream: the last n frames with data, the open incident, the last close time."""

    window: tuple[Entry, ...] = ()
    incident: Incident | None = None
    last_close: float | None = None


@dataclass(frozen=True)
class StreamState:
    """Per-stream rule state: windows, open incidents, cooldowns, and recently seen frames.

    Immutable; ``evaluate`` returns a new one. ``to_dict``/``from_dict`` give a JSON-safe form
    for a changelog-backed table.

    The recently seen frame ids (at least the last ``RECENT_FRAMES``, ``recent``) are held as
    the newest ``tail`` plus older generations with one set for look-ups, so that remembering a
    frame does not copy the whole history on every frame.
    """

    rules: dict[str, RuleState] = field(default_factory=dict)
    tail: tuple[str, ...] = ()
    past: tuple[tuple[str, ...], ...] = ()
    past_ids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, rules: dict[str, RuleState], recent: tuple[str, ...] = ()) -> "StreamState":
        """A state whose recently seen ids are ``recent`` (oldest first; only the last RECENT_FRAMES are kept)."""
        recent = tuple(recent)[-RECENT_FRAMES:]
        cut = len(recent) - len(recent) % _GENERATION
        past = tuple(recent[i : i + _GENERATION] for i in range(0, cut, _GENERATION))
        return cls(rules, recent[cut:], past, frozenset(recent[:cut]))

    @property
    def recent(self) -> tuple[str, ...]:
        """The remembered frame ids, oldest first."""
        return tuple(f for gen in self.past for f in gen) + self.tail

    def remember(self, rules: dict[str, RuleState], frame_id: str) -> "StreamState":
        """The next state: ``rules``, with ``frame_id`` remembered (the oldest generation is dropped past RECENT_FRAMES)."""
        tail = self.tail + (frame_id,)
        if len(tail) < _GENERATION:
            return StreamState(rules, tail, self.past, self.past_ids)
        past = (self.past + (tail,))[-(RECENT_FRAMES // _GENERATION) :]
        return StreamState(rules, (), past, frozenset().union(*past))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (floats, strings, lists, dicts only)."""
        return {
            "v": STATE_VERSION,
            "rules": {k: _rule_dict(v) for k, v in self.rules.items()},
            "recent": list(self.recent),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "StreamState":
        """Inverse of ``to_dict``; None or {} gives a fresh state.

        Raises:
            MessageError: (reason ``bad_rule_state``) an unknown version or a malformed record.
        """
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise MessageError(f"rule state is a {type(data).__name__}, not a mapping", reason="bad_rule_state")
        if data.get("v", STATE_VERSION) != STATE_VERSION:
            raise MessageError(f"rule state version {data.get('v')!r} is not {STATE_VERSION}", reason="bad_rule_state")
        try:
            rules = {name: _rule_state(rs) for name, rs in data.get("rules", {}).items()}
            recent = tuple(str(f) for f in data.get("recent", ()))
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise MessageError(f"malformed rule state: {exc!r}", reason="bad_rule_state") from exc
        return cls.of(rules, recent)

    def seen(self, frame_id: str) -> bool:
        """True when ``evaluate`` already took this frame (a replay: it will return no verdicts)."""
        return frame_id in self.past_ids or frame_id in self.tail

    def open_incidents(self) -> dict[str, str]:
        """rule name -> alert id of each open incident."""
        return {k: v.incident.alert_id for k, v in self.rules.items() if v.incident}


def _recheck(d: dict[str, Any] | None) -> Recheck | None:
    if not d:
        return None
    return Recheck(**{**d, "box": tuple(d["box"])})


def _rule_dict(rs: RuleState) -> dict[str, Any]:
    return {
        "window": [{**e._asdict(), "recheck": asdict(e.recheck) if e.recheck else None} for e in rs.window],
        "incident": rs.incident._asdict() if rs.incident else None,
        "last_close": rs.last_close,
    }


def _rule_state(rs: dict[str, Any]) -> RuleState:
    window = tuple(Entry(**{**e, "recheck": _recheck(e.get("recheck"))}) for e in rs.get("window", ()))
    inc = rs.get("incident")
    return RuleState(window, Incident(**inc) if inc else None, rs.get("last_close"))


_FRESH = RuleState()
_entry = tuple.__new__  # an Entry without the named tuple's argument handling: one per rule and frame


def _start_afresh(rule: str, rs: RuleState, frame_id: str, score: float, closed_at: float, reason: str,
                  verdicts: list[Verdict]) -> RuleState:
    """Close the rule's open incident, if any (a "close" verdict with ``reason``), and empty its window."""
    if rs.incident is None:
        return rs._replace(window=())
    verdicts.append(Verdict("close", rule, frame_id, score, alert_id=rs.incident.alert_id, reason=reason))
    return RuleState(window=(), incident=None, last_close=closed_at)


def _step(rule: Rule, policy: Policy, rs: RuleState, obs: Observation, verdicts: list[Verdict]) -> RuleState:
    fs = obs.scores.get(rule.model)
    if fs is None:
        return rs  # no data for this rule on this frame: the window does not move
    label = rule.label
    whole = fs.scores.get(label)
    if whole is None:
        return rs
    rc = fs.rechecks.get(label) if fs.rechecks else None
    score = float(max(whole, rc.after) if rc is not None else whole)
    window = rs.window
    if rule.stale_after_s is not None and window and obs.wall_clock - window[-1].wall_clock >= rule.stale_after_s:
        # the stream stopped and came back: what it showed before says nothing about now
        rs = _start_afresh(rule.name, rs, obs.frame_id, score, window[-1].wall_clock, "stale", verdicts)
        window = rs.window
    # scores are kept unrounded: hit, whole-frame hit and recheck_used must agree at the threshold
    alert = rule.alert
    hit = score >= alert
    entry = _entry(Entry, (obs.frame_id, obs.pts, obs.wall_clock, score, float(whole), hit, rc))
    n = rule.window.n
    window = window + (entry,) if len(window) < n else window[len(window) - n + 1 :] + (entry,)
    if rule.review <= score < alert:
        verdicts.append(Verdict("review", rule.name, obs.frame_id, score))
    inc = rs.incident
    if inc is not None:
        if score >= rule.close_threshold:
            return RuleState(window, Incident(inc.alert_id, inc.start_frame_id, inc.start_wall_clock,
                                              max(inc.peak, score), 0), rs.last_close)
        below = inc.below + 1
        if below >= rule.close_frames:
            return _start_afresh(rule.name, rs, obs.frame_id, score, obs.wall_clock, "below", verdicts)
        return RuleState(window, Incident(inc.alert_id, inc.start_frame_id, inc.start_wall_clock, inc.peak, below),
                         rs.last_close)
    if not hit:
        # No incident opens on a frame below the threshold: the window held fewer than k counted
        # hits after the previous frame (or it would have opened one then) and gained none now.
        return RuleState(window, None, rs.last_close)
    # Cooldown: hits inside it do not count, so a new incident never starts within cooldown_s
    # of the previous close (its start frame is the first counted hit).
    quiet_from = None if rs.last_close is None else rs.last_close + rule.cooldown_s
    counted = [e for e in window if quiet_from is None or e.wall_clock >= quiet_from]
    hits = [e for e in counted if e.hit]
    if len(hits) < rule.window.k:
        return RuleState(window, None, rs.last_close)
    start = hits[0]
    aid = alert_id(obs.stream_id, policy.name, rule.name, start.wall_clock)
    best = max(hits, key=lambda e: e.score)
    boxed = [e for e in hits if e.recheck is not None]
    box_from = max(boxed, key=lambda e: e.recheck.after) if boxed else None  # type: ignore[union-attr]
    alert = Alert(
        id=aid,
        stream_id=obs.stream_id,
        policy=policy.name,
        rule=rule.name,
        model=rule.model,
        label=rule.label,
        severity=rule.severity,
        action=rule.action,
        score=best.score,
        threshold=rule.alert,
        start_frame_id=start.frame_id,
        start_pts=start.pts,
        start_wall_clock=start.wall_clock,
        frames=tuple(FrameEvidence(e.frame_id, e.pts, e.wall_clock, e.score, e.whole, e.recheck) for e in hits),
        recheck_used=sum(e.whole >= rule.alert for e in counted) < rule.window.k,
        box=box_from.recheck.box if box_from and box_from.recheck else None,
        model_versions={m: s.version for m, s in obs.scores.items()},
    )
    verdicts.append(Verdict("alert", rule.name, obs.frame_id, score, alert=alert, alert_id=aid))
    return RuleState(window=window, incident=Incident(aid, start.frame_id, start.wall_clock, best.score), last_close=rs.last_close)


def evaluate(state: StreamState, obs: Observation, policy: Policy) -> tuple[StreamState, list[Verdict]]:
    """Apply every rule of the policy to one observation, in stream order.

    Pure: no I/O and no clock (time is ``obs.wall_clock``). Per rule: a frame in [review, alert)
    gives "review"; k hits (score >= alert) among the last n frames with data open an incident
    and give one "alert" (none while it is open, none within cooldown_s of the last close);
    close_after consecutive frames below close_below give "close", and so does the first frame
    after a silence of stale_after_s (the window restarts empty). A rule whose model (or label)
    is missing from ``obs.scores`` does not move. A frame already seen (a replay after a crash)
    returns the same state object and no verdicts.

    Args:
        state: the stream's state before this frame.
        obs: the frame's scores.
        policy: the stream's policy.

    Returns:
        The new state and the verdicts, in the policy's rule order.
    """
    frame_id = obs.frame_id
    if frame_id in state.past_ids or frame_id in state.tail:  # state.seen(), inlined
        return state, []
    verdicts: list[Verdict] = []
    rules = {}  # the state of a rule the policy no longer has is dropped
    for rule in policy.rules:
        rules[rule.name] = _step(rule, policy, state.rules.get(rule.name, _FRESH), obs, verdicts)
    return state.remember(rules, frame_id), verdicts


def end_stream(state: StreamState, frame_id: str, wall_clock: float) -> tuple[StreamState, list[Verdict]]:
    """The broadcast ended: close every open incident (reason "ended") and empty every window.

    Pure, like ``evaluate``: ``frame_id`` names the end marker (a replay of it is a no-op) and
    ``wall_clock`` is when the stream ended (it starts the cooldown).
    """
    if state.seen(frame_id):
        return state, []
    verdicts: list[Verdict] = []
    rules = {name: _start_afresh(name, rs, frame_id, 0.0, wall_clock, "ended", verdicts)
             for name, rs in state.rules.items()}
    return state.remember(rules, frame_id), verdicts
