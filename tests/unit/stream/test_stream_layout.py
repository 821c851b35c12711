"""The package layout and the import direction between rooms hold."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib

REPO = Path(__file__).resolve().parents[3]
ROOMS = ("core", "demo", "stream", "decoders", "engines", "rules")
# who may import whom (besides itself): demo -> stream -> rules -> engines, stream -> decoders,
# and every room -> core (shared errors and value types), which imports no other room
ALLOWED = {
    "demo": {"core", "decoders", "engines", "rules", "stream"},
    "stream": {"core", "decoders", "engines", "rules", "demo.service", "demo.scene"},
    "rules": {"core", "engines"},
    "engines": {"core"},
    "decoders": {"core"},
    "core": set(),
}


def _modules(room: str):
    for path in sorted((REPO / room).rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def test_every_subpackage_is_in_pyproject():
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = set()
    for room in ROOMS:
        for init in (REPO / room).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO).as_posix().replace("/", ".")
            found.add("livemod." + rel)
    assert found == listed


@pytest.mark.parametrize("room", ROOMS)
def test_imports_go_one_way(room):
    bad = []
    for path, tree in _modules(room):
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    bad.append(f"{path.name}: relative import")
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if top in ROOMS:
                    bad.append(f"{path.name}: bare import {name}")
                if top == "faust" and room != "stream":
                    bad.append(f"{path.name}: imports faust")
                if name.startswith("livemod."):
                    target = name.removeprefix("livemod.")
                    other = target.split(".")[0]
                    if other == room:
                        continue
                    allowed = ALLOWED[room]
                    if other not in allowed and ".".join(target.split(".")[:2]) not in allowed:
                        bad.append(f"{path.name}: {room} imports {name}")
    assert not bad, bad


FAUST_PRIVATES = ("_committed_offset", "_add_gap", "_gap", "_new_offset", "_acked", "_read_offset", "_settings_extra",
                  "_unacked_messages", "_active_partitions")


def test_only_faustcompat_touches_faust_internals():
    """Everything that reads or patches Faust's private state lives in stream/faustcompat.py."""
    bad = []
    for path, tree in _modules("stream"):
        if path.name == "faustcompat.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in FAUST_PRIVATES:
                bad.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not bad, bad
