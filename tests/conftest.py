"""Shared fixtures: the prepared real models (derived once into the repo's cache folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ("tests.kafka.plugin",)

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


@pytest.fixture(scope="module")
def broker(request, tmp_path_factory):
    """The Kafka-protocol broker of a module's service tests: the bundled Tansu by default, or Apache
    Kafka 4.4 (one KRaft node, started once per session) where a test is parametrized with
    ``pytest.mark.parametrize("broker", ["tansu", "kafka"], indirect=True)``."""
    kind = getattr(request, "param", "tansu")
    if kind == "kafka":
        from tests.kafka.plugin import require_kafka

        require_kafka()
        yield request.getfixturevalue("kafka_broker_session")
        return
    from livemod.demo.broker import EmbeddedBroker

    with EmbeddedBroker(log_file=tmp_path_factory.mktemp("broker") / "tansu.log") as b:
        yield b
