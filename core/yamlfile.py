"""YAML for the files an operator writes (model cards, policies): libyaml's safe loader where it is built in."""

from __future__ import annotations

from typing import Any

import yaml

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""The C safe loader is about 10x faster than the pure-Python one (model cards are read at every start)."""


def safe_load(text: str) -> Any:  # noqa: ANN401 - whatever the document holds
    """``yaml.safe_load`` through libyaml when PyYAML was built with it."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a safe loader
