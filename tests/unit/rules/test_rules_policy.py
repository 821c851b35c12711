"""Policy YAML validation and checks against the model cards."""

from __future__ import annotations

import pytest

from livemod.decoders.errors import ConfigError
from livemod.engines.card import load_cards
from livemod.rules.policy import load_policies, load_policy, validate_against_cards

GOOD_RULE = "  - {name: a, model: open-nsfw, label: nsfw, review: 0.3, alert: 0.6}\n"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: p\nrules:\n  - {name: a, model: m, label: x, review: 0.3, alert: 0.6, window: {k: 4, n: 3}}\n", "larger than n"),
        ("name: p\nrules:\n  - {name: a, model: m, label: x, review: 0.7, alert: 0.6}\n", "below review"),
        ("name: p\nrules:\n  - {name: a, model: m, label: x, review: 0.3, alert: 0.6, close_below: 0.7}\n", "above alert"),
        ("name: p\nrules:\n  - {name: a, model: m, label: x, review: 0.3, alert: 0.6, surprise: 1}\n", "Extra inputs"),
        ("name: p\nrules:\n  - {name: a, model: m, label: x, review: 0.3, alert: 0.6, severity: apocalyptic}\n", "severity"),
        ("name: p\nrules:\n" + GOOD_RULE + GOOD_RULE, "unique"),
        ("name: p\nrules:\n  - {name: a, model: m, label: x, review: 0.3, alert: 0.6, recheck: {band: [0.5, 0.2]}}\n", "band"),
        ("name: p\nrules: []\n", "at least 1"),
        ("name: p\nwebhook: {url: 'ftp://x'}\nrules:\n" + GOOD_RULE, "url"),
        ("name: [unclosed\n", "policy"),
    ],
)
def test_invalid_policies(tmp_path, text, needle):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "rule, needle",
    [
        ("{name: a, model: nope, label: nsfw, review: 0.3, alert: 0.6}", "unknown model"),
        ("{name: a, model: open-nsfw, label: cat, review: 0.3, alert: 0.6}", "no label or group"),
    ],
)
def test_rules_checked_against_cards(tmp_path, rule, needle):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nrules:\n  - {rule}\n")
    with pytest.raises(ConfigError, match=needle):
        validate_against_cards(load_policy(path), load_cards())


def test_shipped_policies_load_and_validate():
    policies = load_policies()
    assert {"default", "demo"} <= set(policies)
    cards = load_cards()
    for p in policies.values():
        validate_against_cards(p, cards)
    fw = [r for r in policies["default"].rules if r.label == "firearm"][0]
    assert fw.model == "efficientnet-lite0" and fw.recheck and fw.recheck.tiles == 3


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_policies(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no policies"):
        load_policies(tmp_path)
