"""The one root Settings object (pydantic-settings, env prefix LIVEMOD_, nested with __)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from livemod.decoders.config import DecoderConfig

DEFAULT_CACHE = Path(".cache/livemod")


class EngineSettings(BaseModel):
    """Which backend runs the models, and how batches are formed."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["auto", "tensorrt", "onnxruntime"] = "auto"
    precision: Literal["auto", "fp32", "int8"] = "auto"
    models_dir: Path = DEFAULT_CACHE / "models"
    cards_dir: Path | None = Field(default=None, description="model cards folder; the shipped cards when unset")
    threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads; 0 = all cores")
    max_batch: int = Field(default=16, ge=1, le=1024)
    batch_wait_ms: float = Field(default=10.0, ge=0, description="the batcher's longest wait for a fuller batch")
    recheck_budget: float = Field(
        default=0.3, ge=0, le=4,
        description="extra images per whole-frame image that a stream's speculative re-checks (hot spots below "
                    "the band, the small-object sweep) may spend; band re-checks always run",
    )
    opt_batch: int = Field(default=8, ge=1, description="TensorRT optimization profile's opt batch")
    workspace_mb: int = Field(default=1024, ge=16, description="TensorRT builder workspace")
    engine_cache_dir: Path = DEFAULT_CACHE / "engines"


class RulesSettings(BaseModel):
    """Where policies come from and where evidence goes."""

    model_config = ConfigDict(extra="forbid")

    policies_dir: Path | None = Field(default=None, description="policy YAML folder; the shipped ones when unset")
    default_policy: str = "default"
    evidence_dir: Path = Path("out/evidence")
    review_dir: Path = Path("out/review")
    write_evidence: bool = True
    reload_interval_s: float = Field(
        default=5.0, ge=0,
        description="how often a worker looks for changed policies and model cards (0 = never; see stream/reload.py)")


class KafkaSettings(BaseModel):
    """Broker connection and topics."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = "kafka://127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    app_id: str = "livemod"
    frame_refs_topic: str = "frame-refs"
    alerts_topic: str = "alerts"
    dlq_topic: str = "frame-refs-dlq"
    callbacks_dlq_topic: str = "alert-callbacks-dlq"
    reviews_topic: str = "reviews"
    partitions: int = Field(default=8, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    session_timeout_s: float = Field(
        default=6.0, gt=0,
        description="a dead worker's partitions move after this (Kafka's group.min.session.timeout.ms is 6 s by default)")
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    rebalance_timeout_s: float = Field(default=20.0, gt=0)
    producer_max_batch_size: int | None = Field(
        default=None, description="set to 1 on brokers whose end_offsets are wrong for multi-record batches"
    )
    idempotent_producer: bool = Field(
        default=False,
        description="acks=all and enable_idempotence: no duplicate writes on producer retries (Apache Kafka; not the "
                    "bundled broker)")
    max_message_bytes: int = Field(
        default=1_000_000, ge=16_384,
        description="the largest message the worker writes (the broker's message.max.bytes; Kafka's default is about 1 MB)")
    request_timeout_s: float = Field(default=30.0, gt=0,
                                     description="how long a publish waits for the broker before it is retried")
    max_ref_bytes: int = Field(default=262_144, ge=1024,
                               description="a frame-ref value larger than this goes to the DLQ as too_large")


class WorkerSettings(BaseModel):
    """Concurrency, retries and the HTTP endpoint of one worker."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="worker id; host name and pid when unset")
    max_in_flight: int = Field(default=8, ge=1, description="references being handled at once")
    decode_threads: int = Field(default=2, ge=1)
    retries: int = Field(default=3, ge=0)
    retry_backoff_s: float = Field(default=0.5, gt=0)
    retry_backoff_max_s: float = Field(default=10.0, gt=0)
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    dlq_send_timeout_s: float = Field(default=10.0, gt=0, description="how long one dead-letter send may take")
    dlq_retries: int = Field(default=5, ge=0, description="retries of a failed dead-letter send before the partition is blocked")
    live_chunk_s: float = Field(
        default=30.0, gt=0,
        description="a live reference is followed this long, then acked and continued by a new reference")
    revoke_wait_s: float = Field(default=10.0, ge=0,
                                 description="how long a rebalance or shutdown waits for references in flight")
    topic_check_interval_s: float = Field(default=15.0, gt=0,
                                          description="how often a worker whose topics disagree checks them again")


class Settings(BaseSettings):
    """Everything livemod can be told, in one object loaded at the composition root."""

    model_config = SettingsConfigDict(env_prefix="LIVEMOD_", env_nested_delimiter="__", extra="forbid")

    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    engines: EngineSettings = Field(default_factory=EngineSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
