"""Policies: which model labels matter, and how scores over time become review items and alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from livemod.core.errors import ConfigError
from livemod.core.yamlfile import safe_load
from livemod.engines.card import ModelCard
from livemod.engines.signals import SIGNAL_MODELS, SignalConfig

POLICIES_DIR = Path(__file__).parent / "policies"
DEFAULT_BAND_LO = 0.02  # lower edge of the default re-check band; the upper edge is the rule's alert threshold


class Window(BaseModel):
    """k-of-n: alert when at least k of the last n sampled frames reach the alert threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(default=2, ge=1)
    n: int = Field(default=3, ge=1, le=1000)

    @model_validator(mode="after")
    def _k_le_n(self) -> "Window":
        if self.k > self.n:
            raise ValueError(f"window k={self.k} is larger than n={self.n}")
        return self


class RecheckRule(BaseModel):
    """The Grad-CAM small-object re-check for one rule.

    Attributes:
        band: [lo, hi) whole-frame probability that triggers it; None means
            [DEFAULT_BAND_LO, the rule's alert threshold) (see ``Rule.recheck_band``).
        max_boxes: K boxes around the hottest regions of the class map.
        expand: box enlargement (1.5 in the YY method).
        cam_threshold: fraction of the map's max a region must reach. 0.8, the engines'
            ``RecheckSpec`` default that the re-check benchmarks were measured with: at 0.5 a
            small object's region tends to merge with the background's warm cells.
        tiles: grid for the tile pass (objects smaller than one CAM cell); 0 disables it.
        spot_threshold: below the band, a cell of the whole frame whose own probability of the
            label reaches this is cropped and classified (engines' ``RecheckSpec.spot_threshold``);
            0 disables it. Paid from the stream's budget for speculative work.
        sweep_share: the smallest object, as a share of the frame's area, that the budgeted sweep
            of square tiles looks for (1.5% by default: 24 tiles for a 16:9 or 9:16 frame, run when
            the stream's budget of 30% of the whole-frame pass has saved up for it, about every 100
            sampled frames on a clean broadcast; 2.5%: 15 tiles, about every 60). 0 disables it.
        confirm: a band re-check crop (CAM box or tile) that scores 0.5 or more (or the rule's
            alert threshold, when lower) is classified again in a crop ``confirm`` times its size
            around the same centre (0.67: tighter, on the hot region) and counts with the lower
            score (engines' ``RecheckSpec.confirm``): what the box's mix of context made look like
            the label drops out (measured on clean broadcasts: an astronaut's helmet rim read as
            coffee at 0.667 falls to 0.15). 0 disables it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    band: tuple[float, float] | None = None
    max_boxes: int = Field(default=2, ge=1, le=16)
    expand: float = Field(default=1.5, ge=1.0, le=4.0)
    cam_threshold: float = Field(default=0.8, gt=0, le=1)
    tiles: int = Field(default=0, ge=0, le=6)
    spot_threshold: float = Field(default=0.5, ge=0, le=1)
    sweep_share: float = Field(default=0.015, ge=0, le=0.25)
    confirm: float = Field(default=0.67, ge=0, le=4.0)

    @model_validator(mode="after")
    def _band(self) -> "RecheckRule":
        if self.band is not None and not (0 <= self.band[0] < self.band[1] <= 1.01):
            raise ValueError(f"recheck band {self.band} must satisfy 0 <= lo < hi <= 1")
        if 0 < self.confirm < 0.25 or self.confirm == 1:
            raise ValueError(f"recheck confirm {self.confirm} must be 0 (off) or a scale in [0.25, 4] other than 1")
        return self


class Rule(BaseModel):
    """One watched model label (or label group) and what to do about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    model: str
    label: str
    review: float = Field(ge=0, le=1, description="frames at or above go to the review queue")
    alert: float = Field(gt=0, le=1, description="a frame at or above counts as a hit")
    window: Window = Field(default_factory=Window)
    close_below: float | None = Field(default=None, ge=0, le=1, description="hysteresis: default = review")
    close_after: int | None = Field(default=None, ge=1, description="frames below to close; default = window.n")
    cooldown_s: float = Field(default=60.0, ge=0)
    stale_after_s: float | None = Field(
        default=300.0, gt=0,
        description="a gap this long between a stream's frames (it stopped, then came back) closes the open "
                    "incident and empties the window; null: never",
    )
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    action: Literal["review", "warn", "blur", "interrupt", "terminate"] = "review"
    recheck: RecheckRule | None = Field(default_factory=RecheckRule)

    @model_validator(mode="after")
    def _thresholds(self) -> "Rule":
        if self.alert < self.review:
            raise ValueError(f"rule {self.name}: alert {self.alert} is below review {self.review}")
        if self.close_below is not None and self.close_below > self.alert:
            raise ValueError(f"rule {self.name}: close_below {self.close_below} is above alert {self.alert}")
        band = self.recheck.band if self.recheck is not None else None
        if band is not None and band[0] >= self.alert:
            raise ValueError(f"rule {self.name}: recheck band {band} starts at or above alert {self.alert}, so it never helps")
        return self

    @property
    def close_threshold(self) -> float:
        """Hysteresis: a frame below this counts towards closing an open incident (default: review)."""
        return self.close_below if self.close_below is not None else self.review

    @property
    def close_frames(self) -> int:
        """Consecutive frames below ``close_threshold`` that close an incident (default: window n)."""
        return self.close_after if self.close_after is not None else self.window.n

    @property
    def recheck_band(self) -> tuple[float, float] | None:
        """[lo, hi) whole-frame probability that triggers the re-check, defaults applied; None when off."""
        if self.recheck is None:
            return None
        if self.recheck.band is not None:
            return (float(self.recheck.band[0]), float(self.recheck.band[1]))
        return (DEFAULT_BAND_LO, self.alert)


class Webhook(BaseModel):
    """Where alerts are POSTed (signed with HMAC-SHA256), and for how long delivery is retried."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://")
    secret_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the env var holding the HMAC secret (the name only: secrets never live in policies)",
    )
    ttl_s: float = Field(default=300.0, gt=0)


class Policy(BaseModel):
    """A named set of rules applied to a stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    version: str = "1"
    description: str = ""
    audit_fraction: float = Field(default=0.01, ge=0, le=1)
    webhook: Webhook | None = None
    signals: SignalConfig = Field(
        default_factory=SignalConfig,
        description="how the built-in models (quality, qr, text; engines/signals.py) score for this policy",
    )
    rules: tuple[Rule, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "Policy":
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"policy {self.name}: rule names must be unique")
        return self


def _describe(exc: ValidationError) -> str:
    """One clause per problem, located like pydantic does: ``rules.1.window: k=4 is larger than n=3``.

    A length complaint about a container whose items already failed (pydantic counts only the
    valid items) is left out: it only repeats the item's error.
    """
    errors = exc.errors(include_url=False)
    failed_items = {tuple(e["loc"][:-1]) for e in errors if e["loc"]}
    clauses = []
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "too_short" and any(f[: len(loc)] == loc and len(f) > len(loc) for f in failed_items):
            continue
        clauses.append(f"{'.'.join(str(p) for p in loc) or '(top level)'}: {err['msg']}")
    return "; ".join(clauses)


def load_policy(path: Path | str) -> Policy:
    """Read and validate one policy file.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or does not validate; the message
            names the file and each offending field.
    """
    try:
        data = safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"policy {path}: {exc}") from exc
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"policy {path}: {_describe(exc)}") from exc


def load_policies(directory: Path | str | None = None) -> dict[str, Policy]:
    """Every ``*.yaml`` policy in a folder (the shipped ones by default), keyed by name.

    Raises:
        ConfigError: the folder is missing or empty, a file is invalid, or two share a name.
    """
    directory = Path(directory) if directory else POLICIES_DIR
    if not directory.is_dir():
        raise ConfigError(f"policies folder {directory} does not exist")
    out: dict[str, Policy] = {}
    for path in sorted(directory.glob("*.yaml")):
        policy = load_policy(path)
        if policy.name in out:
            raise ConfigError(f"two policies are named {policy.name!r}")
        out[policy.name] = policy
    if not out:
        raise ConfigError(f"no policies in {directory}")
    return out


def validate_against_cards(policy: Policy, cards: dict[str, ModelCard]) -> None:
    """Every rule must name a known model and one of its labels or groups.

    A model is a card's or a built-in signal's (``engines.signals.SIGNAL_MODELS``: quality, qr,
    text); a built-in one must be able to run here (``text`` needs the ``ocr`` extra).

    Raises:
        ConfigError: naming the policy, the rule and what is unknown or unavailable.
    """
    for rule in policy.rules:
        card = cards.get(rule.model)
        signal = SIGNAL_MODELS.get(rule.model)
        where = f"policy {policy.name}, rule {rule.name}"
        if card is not None and signal is not None:
            raise ConfigError(f"{where}: model card {rule.model!r} takes the name of a built-in model; rename the card")
        if signal is not None:
            if rule.label not in signal.labels:
                raise ConfigError(f"{where}: built-in model {rule.model} has no label {rule.label!r} "
                                  f"(have {', '.join(signal.labels)})")
            why = signal.unavailable()
            if why:
                raise ConfigError(f"{where}: {rule.model}:{rule.label} is unavailable: {why}", reason="signal_unavailable")
            continue
        if card is None:
            raise ConfigError(f"{where}: unknown model {rule.model!r} (have {sorted([*cards, *SIGNAL_MODELS])})")
        if rule.label not in card.labels and rule.label not in card.groups:
            raise ConfigError(f"policy {policy.name}, rule {rule.name}: model {rule.model} has no label or group {rule.label!r}")
