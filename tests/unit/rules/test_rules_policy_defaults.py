"""Policy defaults that other rooms rely on (re-check band, hysteresis), and readable errors."""

from __future__ import annotations

import pytest

from livemod.core.errors import ConfigError
from livemod.rules.policy import DEFAULT_BAND_LO, load_policy

RULE = "{name: a, model: m, label: x, review: 0.3, alert: 0.6%s}"


def _write(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "extra, band",
    [
        ("", (DEFAULT_BAND_LO, 0.6)),                      # re-check on by default, band [0.02, alert)
        (", recheck: {max_boxes: 3}", (DEFAULT_BAND_LO, 0.6)),
        (", recheck: {band: [0.1, 0.5]}", (0.1, 0.5)),
        (", recheck: {band: [0.1, 0.9]}", (0.1, 0.9)),     # hi above alert is allowed (re-check hits too)
        (", recheck: null", None),
    ],
)
def test_recheck_band(tmp_path, extra, band):
    (rule,) = load_policy(_write(tmp_path, f"name: p\nrules:\n  - {RULE % extra}\n")).rules
    assert rule.recheck_band == band


@pytest.mark.parametrize(
    "extra, close_threshold, close_frames",
    [
        ("", 0.3, 3),                                       # review, window n
        (", window: {k: 2, n: 5}", 0.3, 5),
        (", close_below: 0.5, close_after: 7", 0.5, 7),
        (", close_below: 0.6", 0.6, 3),                     # close_below may equal alert
    ],
)
def test_hysteresis_defaults(tmp_path, extra, close_threshold, close_frames):
    (rule,) = load_policy(_write(tmp_path, f"name: p\nrules:\n  - {RULE % extra}\n")).rules
    assert (rule.close_threshold, rule.close_frames) == (close_threshold, close_frames)


@pytest.mark.parametrize(
    "text, needle",
    [
        (f"name: p\nrules:\n  - {RULE % ', recheck: {band: [0.6, 0.9]}'}\n", "never helps"),
        (f"name: p\nwebhook: {{url: 'https://x', secret_env: 'MY SECRET'}}\nrules:\n  - {RULE % ''}\n", "webhook.secret_env"),
        (f"name: p\nwebhook: {{url: 'https://x', secret_env: '1ABC'}}\nrules:\n  - {RULE % ''}\n", "webhook.secret_env"),
    ],
)
def test_more_invalid(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        load_policy(_write(tmp_path, text))


def test_webhook_holds_the_secret_name_only(tmp_path):
    text = f"name: p\nwebhook: {{url: 'https://hooks.example/x', secret_env: LIVEMOD_HOOK_SECRET, ttl_s: 60}}\nrules:\n  - {RULE % ''}\n"
    hook = load_policy(_write(tmp_path, text)).webhook
    assert hook is not None and (hook.secret_env, hook.ttl_s) == ("LIVEMOD_HOOK_SECRET", 60)


def test_error_message_is_one_line_per_problem(tmp_path):
    text = f"name: p\nrules:\n  - {RULE % ', severity: x, window: {k: 4, n: 3}'}\n"
    with pytest.raises(ConfigError) as info:
        load_policy(_write(tmp_path, text))
    msg = str(info.value)
    assert "\n" not in msg and "rules.0.severity" in msg and "rules.0.window" in msg
    assert "at least 1 item" not in msg  # pydantic's echo of the bad item as a length error is dropped
