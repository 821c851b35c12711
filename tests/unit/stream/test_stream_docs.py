"""The generated docs (docs/settings.md, docs/schemas/) match the code; `livemod schemas --out docs` rewrites them."""

from __future__ import annotations

from pathlib import Path

import pytest

from livemod.stream.docs import write_docs
from livemod.stream.records import DLQ_REASONS, json_schemas

REPO = Path(__file__).resolve().parents[3]


def test_docs_are_current(tmp_path):
    stale = []
    for path in write_docs(tmp_path):
        committed = REPO / "docs" / path.relative_to(tmp_path)
        if not committed.is_file() or committed.read_text() != path.read_text():
            stale.append(str(committed.relative_to(REPO)))
    assert not stale, f"regenerate with `livemod schemas --out docs`: {stale}"


@pytest.mark.parametrize("name", ["alert", "review", "dead-letter", "callback-dead-letter", "stream-state", "frame-ref"])
def test_every_record_has_a_version(name):
    schema = json_schemas()[name]
    variants = [schema["$defs"][ref["$ref"].split("/")[-1]] for ref in schema["oneOf"]] if "oneOf" in schema else [schema]
    for variant in variants:
        assert "v" in variant["properties"], name


def test_readme_lists_every_dead_letter_reason():
    readme = (REPO / "README.md").read_text()
    missing = [r for r in DLQ_REASONS if f"`{r}`" not in readme]
    assert not missing, missing
