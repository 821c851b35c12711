"""Policies and model cards that reload without a restart.

The worker looks at the policies and cards folders every ``rules.reload_interval_s`` (a digest of
every ``*.yaml`` file's name and bytes, so a Kubernetes ConfigMap's symlink swap counts as well as
an edit). When they changed, a complete new Moderator is built off the event loop: policies
validated against the cards, every model loaded (TensorRT engines built) before anything is
swapped. A bad file keeps the running version: the error goes to the log, to
``livemod_config_reloads_total{outcome="failed"}`` and to ``/ready``'s ``config`` detail. The
swap is one assignment on the event loop; each reference keeps the Moderator it started with, so
a reference is never judged half by one version and half by another. Rule state lives in the
stream-state table keyed by rule name, so it survives a reload of the same rules.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from livemod.engines.card import CARDS_DIR
from livemod.rules.policy import POLICIES_DIR
from livemod.stream.settings import Settings

log = logging.getLogger(__name__)


def watched_dirs(settings: Settings) -> tuple[Path, Path]:
    """The policies and cards folders in effect (the shipped ones when the settings name none)."""
    return (Path(settings.rules.policies_dir or POLICIES_DIR), Path(settings.engines.cards_dir or CARDS_DIR))


def config_digest(settings: Settings) -> str:
    """sha256 over the names and bytes of every policy and card file; changes with any edit."""
    h = hashlib.sha256()
    for folder in watched_dirs(settings):
        for path in sorted(folder.glob("*.yaml")):
            h.update(path.name.encode() + b"\0")
            try:
                h.update(path.read_bytes())
            except OSError as exc:  # a file being replaced: the next look sees it whole
                h.update(repr(exc).encode())
            h.update(b"\0")
    return h.hexdigest()


@dataclass
class ReloadStatus:
    """What ``/ready`` says about the configuration."""

    digest: str
    loaded_at: float
    last_error: str | None = None
    failed_digest: str | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"digest": self.digest[:12], "loaded_at": round(self.loaded_at, 3)}
        if self.last_error:
            out["last_error"] = self.last_error
        return out


def initial_status(settings: Settings) -> ReloadStatus:
    return ReloadStatus(digest=config_digest(settings), loaded_at=time.time())
