"""The livemod error tree: one root, a ``retriable`` flag, typed causes.

This module sits in the bottom room and imports nothing but the standard library, so every
room (engines and rules included) can raise these without depending on PyAV code.
"""

from __future__ import annotations


class LivemodError(Exception):
    """Root of every error livemod raises on purpose.

    Attributes:
        retriable: True when trying the same input again later may succeed (a network
            timeout, a broker hiccup). False for bad input, which goes to the dead-letter
            topic at once.
        reason: a short, stable, machine-readable cause (used as a metric label and in
            dead-letter records), e.g. ``"truncated_media"``.
    """

    retriable: bool = False
    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(LivemodError):
    """Settings, policies or model cards that do not validate."""

    reason = "bad_config"


# ---- input (decoders) -------------------------------------------------------------------


class MediaError(LivemodError):
    """The media itself is unusable: corrupt, truncated, empty, unsupported. Never retried."""

    reason = "bad_media"


class EmptyMediaError(MediaError):
    reason = "empty_media"


class TruncatedMediaError(MediaError):
    reason = "truncated_media"


class CorruptMediaError(MediaError):
    reason = "corrupt_media"


class UnsupportedMediaError(MediaError):
    """No decodable video stream, or a codec this build of FFmpeg cannot decode."""

    reason = "unsupported_media"


class MediaLimitError(MediaError):
    """A configured limit was exceeded (pixels per frame, frames, seconds, decode time)."""

    reason = "media_limit"


class ForbiddenSourceError(LivemodError):
    """The URI's scheme, host or path is not allowed by settings (e.g. a metadata address)."""

    reason = "forbidden_source"


class BadUriError(LivemodError):
    """The URI cannot be parsed or names nothing."""

    reason = "bad_uri"


class SourceUnavailableError(LivemodError):
    """The source did not answer in time or refused the connection. Retried with backoff."""

    retriable = True
    reason = "source_unavailable"


class SourceNotFoundError(LivemodError):
    """The source answered that the media does not exist (404, missing file)."""

    reason = "source_not_found"


# ---- engines ----------------------------------------------------------------------------


class ModelError(LivemodError):
    """A model file is missing, does not match its card, or fails to load."""

    reason = "model_error"


class InferenceError(LivemodError):
    """The runtime failed while running a batch (treated as retriable: often transient)."""

    retriable = True
    reason = "inference_error"


class GpuError(LivemodError):
    """A CUDA or TensorRT call returned an error status; the message names it."""

    retriable = True
    reason = "gpu_error"


# ---- messages (stream) ------------------------------------------------------------------


class MessageError(LivemodError):
    """A Kafka message that cannot be parsed: bad JSON, unknown version, missing fields."""

    reason = "bad_message"
