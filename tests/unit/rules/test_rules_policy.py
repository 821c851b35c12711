"""Policy YAML validation (rules/policy.py) and the checks against the shipped model cards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from livemod.core.errors import ConfigError
from livemod.engines.card import load_cards
from livemod.rules.policy import (
    POLICIES_DIR,
    Policy,
    RecheckRule,
    load_policies,
    load_policy,
    validate_against_cards,
)

BASE_RULE: dict[str, Any] = {"name": "a", "model": "m", "label": "x", "review": 0.3, "alert": 0.6}


@pytest.fixture(scope="module")
def cards():
    return load_cards()


def policy_text(*rules: dict[str, Any], **top: Any) -> str:
    doc: dict[str, Any] = {"name": "p", **top, "rules": list(rules) if rules else [dict(BASE_RULE)]}
    return yaml.safe_dump(doc, sort_keys=False)


def rule(**over: Any) -> dict[str, Any]:
    return {**BASE_RULE, **over}


def write(tmp_path: Path, text: str | bytes, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# ---- invalid policies ------------------------------------------------------------------

INVALID: list[Any] = [
    # window
    pytest.param(policy_text(rule(window={"k": 4, "n": 3})), "larger than n", id="k>n"),
    pytest.param(policy_text(rule(window={"k": 0, "n": 3})), "rules.0.window.k", id="k=0"),
    pytest.param(policy_text(rule(window={"k": 1, "n": 0})), "rules.0.window.n", id="n=0"),
    pytest.param(policy_text(rule(window={"k": 1, "n": 1001})), "rules.0.window.n", id="n>1000"),
    pytest.param(policy_text(rule(window={"k": 2, "n": 3, "m": 1})), "Extra inputs", id="window-unknown-key"),
    # thresholds
    pytest.param(policy_text(rule(review=0.7, alert=0.6)), "below review", id="alert<review"),
    pytest.param(policy_text(rule(close_below=0.7)), "above alert", id="close_below>alert"),
    pytest.param(policy_text(rule(alert=0.0, review=0.0)), "rules.0.alert", id="alert=0"),
    pytest.param(policy_text(rule(alert=1.2)), "rules.0.alert", id="alert>1"),
    pytest.param(policy_text(rule(review=-0.1)), "rules.0.review", id="review<0"),
    pytest.param(policy_text(rule(close_below=-0.1)), "rules.0.close_below", id="close_below<0"),
    pytest.param(policy_text(rule(close_after=0)), "rules.0.close_after", id="close_after=0"),
    pytest.param(policy_text(rule(cooldown_s=-1)), "rules.0.cooldown_s", id="cooldown<0"),
    pytest.param(policy_text(rule(alert="high")), "rules.0.alert", id="alert-not-a-number"),
    # unknown keys
    pytest.param(policy_text(rule(surprise=1)), "Extra inputs", id="rule-unknown-key"),
    pytest.param(policy_text(owner="me"), "Extra inputs", id="policy-unknown-key"),
    pytest.param(policy_text(rule(recheck={"band": [0.1, 0.5], "boxes": 2})), "Extra inputs", id="recheck-unknown-key"),
    # enums
    pytest.param(policy_text(rule(severity="apocalyptic")), "rules.0.severity", id="bad-severity"),
    pytest.param(policy_text(rule(severity="High")), "rules.0.severity", id="severity-case"),
    pytest.param(policy_text(rule(action="explode")), "rules.0.action", id="bad-action"),
    # names
    pytest.param(policy_text(rule(), rule()), "unique", id="duplicate-rule-names"),
    pytest.param(policy_text(rule(), rule(model="other", label="y")), "unique", id="duplicate-names-other-model"),
    pytest.param(policy_text(rule(name="-a")), "name", id="rule-name-pattern"),
    pytest.param(policy_text(rule(name="a b")), "name", id="rule-name-space"),
    pytest.param(policy_text(name="bad name"), "name", id="policy-name-pattern"),
    pytest.param(policy_text(rule(model=None)), "rules.0.model", id="model-missing"),
    # recheck band and knobs
    pytest.param(policy_text(rule(recheck={"band": [0.5, 0.2]})), "band", id="band-reversed"),
    pytest.param(policy_text(rule(recheck={"band": [0.4, 0.4]})), "band", id="band-empty"),
    pytest.param(policy_text(rule(recheck={"band": [-0.1, 0.4]})), "band", id="band-lo<0"),
    pytest.param(policy_text(rule(recheck={"band": [0.1, 1.5]})), "band", id="band-hi>1"),
    pytest.param(policy_text(rule(recheck={"band": [0.1]})), "band", id="band-one-value"),
    pytest.param(policy_text(rule(recheck={"band": [0.6, 0.9]})), "never helps", id="band-starts-at-alert"),
    pytest.param(policy_text(rule(recheck={"max_boxes": 0})), "max_boxes", id="max_boxes=0"),
    pytest.param(policy_text(rule(recheck={"max_boxes": 17})), "max_boxes", id="max_boxes>16"),
    pytest.param(policy_text(rule(recheck={"confirm": 1.0})), "confirm", id="confirm=1-is-the-same-crop"),
    pytest.param(policy_text(rule(recheck={"confirm": 0.1})), "confirm", id="confirm<0.25"),
    pytest.param(policy_text(rule(recheck={"confirm": 5})), "confirm", id="confirm>4"),
    pytest.param(policy_text(rule(recheck={"expand": 0.5})), "expand", id="expand<1"),
    pytest.param(policy_text(rule(recheck={"cam_threshold": 0})), "cam_threshold", id="cam_threshold=0"),
    pytest.param(policy_text(rule(recheck={"tiles": 7})), "tiles", id="tiles>6"),
    # policy level
    pytest.param("name: p\nrules: []\n", "at least 1", id="no-rules"),
    pytest.param("name: p\n", "rules", id="rules-missing"),
    pytest.param(policy_text(audit_fraction=1.5), "audit_fraction", id="audit_fraction>1"),
    pytest.param(policy_text(webhook={"url": "ftp://x"}), "url", id="webhook-scheme"),
    pytest.param(policy_text(webhook={"url": "https://x", "ttl_s": 0}), "ttl_s", id="webhook-ttl"),
    pytest.param(policy_text(webhook={"url": "https://x", "retries": 3}), "Extra inputs", id="webhook-unknown-key"),
    # not a policy at all
    pytest.param("name: [unclosed\n", "policy", id="bad-yaml"),
    pytest.param("", "valid dictionary", id="empty-file"),
    pytest.param("- name: p\n", "valid dictionary", id="top-level-list"),
    pytest.param("just a string\n", "valid dictionary", id="top-level-scalar"),
]


@pytest.mark.parametrize("text, needle", INVALID)
def test_invalid_policies_raise_config_error(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    message = str(info.value)
    assert needle in message
    assert str(path) in message  # the file is named so an operator can find it


def test_missing_policy_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_policy(tmp_path / "nope.yaml")


def test_non_utf8_policy_file_is_a_config_error(tmp_path):
    path = write(tmp_path, b"name: p\xff\xfe\nrules: []\n")
    with pytest.raises(ConfigError):
        load_policy(path)


# ---- valid policies ----------------------------------------------------------------------

VALID: list[Any] = [
    pytest.param(rule(), {"close_threshold": 0.3, "close_frames": 3, "severity": "medium", "action": "review"},
                 id="defaults"),
    pytest.param(rule(window={"k": 3, "n": 3}), {"close_frames": 3}, id="k=n"),
    pytest.param(rule(window={"k": 1, "n": 1}), {"close_frames": 1}, id="k=n=1"),
    pytest.param(rule(window={"k": 1, "n": 1000}), {"close_frames": 1000}, id="n=1000"),
    pytest.param(rule(review=0.6, alert=0.6), {"close_threshold": 0.6}, id="alert=review"),
    pytest.param(rule(close_below=0.6), {"close_threshold": 0.6}, id="close_below=alert"),
    pytest.param(rule(close_below=0.0), {"close_threshold": 0.0}, id="close_below=0"),
    pytest.param(rule(close_below=0.1, close_after=7), {"close_threshold": 0.1, "close_frames": 7}, id="hysteresis"),
    pytest.param(rule(cooldown_s=0), {"cooldown_s": 0.0}, id="no-cooldown"),
    pytest.param(rule(severity="critical", action="terminate"), {"severity": "critical", "action": "terminate"},
                 id="severity-action"),
    pytest.param(rule(recheck=None), {"recheck": None}, id="recheck-off"),
    pytest.param(rule(recheck={"band": [0.0, 1.0]}), {"recheck": RecheckRule(band=(0.0, 1.0))}, id="band-full"),
    pytest.param(rule(recheck={"band": [0.05, 0.6], "max_boxes": 16, "expand": 4, "cam_threshold": 1, "tiles": 6}),
                 {"recheck": RecheckRule(band=(0.05, 0.6), max_boxes=16, expand=4.0, cam_threshold=1.0, tiles=6)},
                 id="recheck-limits"),
]


@pytest.mark.parametrize("rule_doc, expected", VALID)
def test_valid_rules(tmp_path, rule_doc, expected):
    policy = load_policy(write(tmp_path, policy_text(rule_doc)))
    (r,) = policy.rules
    for attr, value in expected.items():
        assert getattr(r, attr) == value, attr


def test_omitted_recheck_gets_the_default_recheck(tmp_path):
    (r,) = load_policy(write(tmp_path, policy_text(rule()))).rules
    assert r.recheck == RecheckRule() and r.recheck.band is None and r.recheck.tiles == 0


@pytest.mark.parametrize(
    "top, expected",
    [
        ({}, {"version": "1", "audit_fraction": 0.01, "webhook": None}),
        ({"version": "7", "audit_fraction": 0.0}, {"version": "7", "audit_fraction": 0.0}),
        ({"audit_fraction": 1}, {"audit_fraction": 1.0}),
    ],
)
def test_valid_policy_fields(tmp_path, top, expected):
    policy = load_policy(write(tmp_path, policy_text(**top)))
    for attr, value in expected.items():
        assert getattr(policy, attr) == value, attr


def test_webhook_and_several_rules(tmp_path):
    text = policy_text(rule(name="a"), rule(name="b.2", label="y"), webhook={"url": "https://h/x", "secret_env": "S"})
    policy = load_policy(write(tmp_path, text))
    assert [r.name for r in policy.rules] == ["a", "b.2"]
    assert policy.webhook is not None and policy.webhook.url == "https://h/x" and policy.webhook.ttl_s == 300.0


def test_policy_is_frozen(tmp_path):
    policy = load_policy(write(tmp_path, policy_text()))
    with pytest.raises(ValidationError, match="frozen"):
        policy.rules[0].alert = 0.1  # type: ignore[misc]


# ---- against the model cards --------------------------------------------------------------


@pytest.mark.parametrize(
    "rules, needle",
    [
        ([rule(model="nope", label="nsfw")], "unknown model 'nope'"),
        ([rule(model="open-nsfw", label="cat")], "no label or group 'cat'"),
        ([rule(model="open-nsfw", label="NSFW")], "no label or group 'NSFW'"),
        ([rule(model="efficientnet-lite0", label="nsfw")], "no label or group 'nsfw'"),
        ([rule(model="Open-NSFW", label="nsfw")], "unknown model 'Open-NSFW'"),
        # the first rule is fine; the second is reported by name
        ([rule(name="ok", model="open-nsfw", label="nsfw"), rule(name="bad", model="efficientnet-lite0", label="gun")],
         "rule bad"),
    ],
)
def test_rules_checked_against_cards(tmp_path, cards, rules, needle):
    policy = load_policy(write(tmp_path, policy_text(*rules)))
    with pytest.raises(ConfigError) as info:
        validate_against_cards(policy, cards)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "model, label",
    [
        ("open-nsfw", "nsfw"),
        ("open-nsfw", "sfw"),
        ("efficientnet-lite0", "firearm"),  # a group
        ("efficientnet-lite0", "cat"),  # a group
        ("efficientnet-lite0", "tabby"),  # a plain label
        ("efficientnet-lite0", "revolver"),
    ],
)
def test_known_model_labels_and_groups_validate(tmp_path, cards, model, label):
    policy = load_policy(write(tmp_path, policy_text(rule(model=model, label=label))))
    validate_against_cards(policy, cards)


def test_no_cards_means_every_model_is_unknown(tmp_path):
    policy = load_policy(write(tmp_path, policy_text(rule(model="open-nsfw", label="nsfw"))))
    with pytest.raises(ConfigError, match="unknown model"):
        validate_against_cards(policy, {})


# ---- the shipped policies and policy folders ----------------------------------------------


def test_shipped_policies_load_and_validate(cards):
    policies = load_policies()
    assert {"default", "demo"} <= set(policies)
    for name, p in policies.items():
        assert isinstance(p, Policy) and p.name == name
        validate_against_cards(p, cards)
    fw = next(r for r in policies["default"].rules if r.label == "firearm")
    assert fw.model == "efficientnet-lite0" and fw.recheck is not None and fw.recheck.tiles == 3
    assert fw.close_threshold == fw.review and fw.close_frames == 6


@pytest.mark.parametrize("path", sorted(POLICIES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_each_shipped_policy_file(cards, path):
    policy = load_policy(path)
    validate_against_cards(policy, cards)
    for r in policy.rules:
        assert r.review <= r.alert and r.close_threshold <= r.alert and r.window.k <= r.window.n


def test_policy_folder_is_keyed_by_name_and_ignores_other_files(tmp_path):
    write(tmp_path, policy_text(name="one"), "a.yaml")
    write(tmp_path, policy_text(name="two"), "b.yaml")
    write(tmp_path, "not: [yaml", "notes.txt")
    assert sorted(load_policies(tmp_path)) == ["one", "two"]
    assert sorted(load_policies(str(tmp_path))) == ["one", "two"]


def test_two_policies_with_one_name(tmp_path):
    write(tmp_path, policy_text(name="same"), "a.yaml")
    write(tmp_path, policy_text(name="same"), "b.yaml")
    with pytest.raises(ConfigError, match="two policies are named 'same'"):
        load_policies(tmp_path)


def test_one_bad_file_fails_the_folder(tmp_path):
    write(tmp_path, policy_text(name="good"), "a.yaml")
    bad = write(tmp_path, policy_text(rule(window={"k": 5, "n": 2})), "b.yaml")
    with pytest.raises(ConfigError, match="larger than n") as info:
        load_policies(tmp_path)
    assert str(bad) in str(info.value)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_policies(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no policies"):
        load_policies(tmp_path)
