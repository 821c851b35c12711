"""Prometheus metrics of one worker (own registry, so several workers can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 13, 21, 34, 60)
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
GAP_BUCKETS = (0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 8, 10, 15, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    """Every metric a worker exports; names are prefixed ``livemod_``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.refs = Counter("livemod_references_consumed", "frame-refs messages consumed", ["outcome"], registry=r)
        self.frames_decoded = Counter("livemod_frames_decoded", "frames the decoder produced", registry=r)
        self.frames_sampled = Counter("livemod_frames_sampled", "frames sampled for classification", ["reason"], registry=r)
        self.frames_duplicate = Counter("livemod_frames_skipped_duplicate", "near-duplicates that reused the last scores", registry=r)
        self.frames_classified = Counter("livemod_frames_classified", "images classified", ["model", "stage"], registry=r)
        self.batch_size = Histogram("livemod_batch_size", "engine batch size", ["model", "stage"], buckets=BATCH_BUCKETS, registry=r)
        self.decode_seconds = Histogram("livemod_decode_seconds", "decode time per reference", buckets=LATENCY_BUCKETS, registry=r)
        self.infer_seconds = Histogram("livemod_inference_seconds", "engine time per cross-stream batch", buckets=FAST_BUCKETS, registry=r)
        self.e2e_seconds = Histogram("livemod_end_to_end_seconds", "frame wall clock to decision", buckets=LATENCY_BUCKETS, registry=r)
        self.rechecks = Counter("livemod_rechecks", "re-checks run", ["model", "label", "positive"], registry=r)
        self.alerts = Counter("livemod_alerts", "alerts published", ["rule", "label", "severity"], registry=r)
        self.reviews = Counter("livemod_reviews", "review items published", ["kind"], registry=r)
        self.dlq = Counter("livemod_dlq_messages", "messages sent to a dead-letter topic", ["topic", "reason"], registry=r)
        self.retries = Counter("livemod_retries", "retries of retriable errors", ["reason"], registry=r)
        self.offset_rewinds = Counter("livemod_offset_rewinds", "partitions sought back to the next offset to handle",
                                      ["topic", "reason"], registry=r)
        self.offsets_refused = Counter("livemod_offsets_refused", "events refused as out of sequence (come again)",
                                       ["topic"], registry=r)
        self.offset_gaps = Counter("livemod_offset_gaps", "holes in a partition's offsets confirmed as real", ["topic"],
                                   registry=r)
        self.callbacks = Counter("livemod_callbacks", "webhook deliveries", ["outcome"], registry=r)
        self.in_flight = Gauge("livemod_references_in_flight", "references being handled", registry=r)
        self.lag = Gauge("livemod_consumer_lag", "highwater minus committed offset", ["topic", "partition"], registry=r)
        self.backend = Gauge("livemod_engine_backend", "1 for the backend in use", ["backend", "reason"], registry=r)
        self.ready = Gauge("livemod_ready", "1 when partitions are assigned and models loaded", registry=r)
        self.partitions_blocked = Gauge("livemod_partitions_blocked",
                                        "partitions paused because a dead letter cannot be sent", registry=r)
        self.dlq_send_failures = Counter("livemod_dlq_send_failures", "dead-letter sends that failed (retried)",
                                         registry=r)
        self.streams_active = Gauge("livemod_streams_active", "streams with a reference in the last minute", registry=r)
        self.config_reloads = Counter("livemod_config_reloads", "policy/card reloads", ["outcome"], registry=r)
        self.config_reload_failed = Gauge("livemod_config_reload_failed",
                                          "1 while the newest policies/cards do not load (the old ones run)",
                                          registry=r)
        self.live_chunks = Counter("livemod_live_chunks", "live references continued by a new reference", registry=r)
        self.sample_gap = Histogram("livemod_sample_gap_seconds",
                                    "stream time between consecutive sampled frames of a stream",
                                    buckets=GAP_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
