"""Shared fixtures: the prepared real models (derived once into the repo's cache folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / ".cache" / "livemod" / "models"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The real Open-NSFW and EfficientNet-Lite0 models with their cams outputs.

    `make test` prepares them before pytest starts; this fixture makes a bare `pytest` work
    too (preparing is idempotent: files that match their card's sha256 are kept).
    """
    from livemod.engines.prepare import prepare_models

    prepare_models(MODELS_DIR, log=lambda _msg: None)
    return MODELS_DIR
