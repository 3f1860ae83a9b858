"""One error family: per-item failures are recorded, transient trouble retried, mistakes shown."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why an image has no labels: the stable value stored in ``results.reason``."""

    # fetching
    NOT_FOUND = "not-found"
    FORBIDDEN = "forbidden"
    BAD_URI = "bad-uri"
    BLOCKED_ADDRESS = "blocked-address"
    OUTSIDE_ROOTS = "outside-roots"
    CREDENTIALS = "credentials"  # missing or refused: the workers' configuration, not the image
    NOT_A_FILE = "not-a-file"
    TLS_ERROR = "tls-error"
    HTTP_ERROR = "http-error"
    TOO_LARGE = "too-large"
    # decoding
    EMPTY = "empty"
    UNDECODABLE = "undecodable"
    TOO_MANY_PIXELS = "too-many-pixels"
    TOO_MUCH_MEMORY = "too-much-memory"
    TIMEOUT = "timeout"
    DECODER_CRASHED = "decoder-crashed"
    # scoring from a kept embedding
    CORRUPT_EMBEDDING = "corrupt-embedding"
    # the whole chunk
    TRANSIENT = "transient"
    PARKED = "parked"
    MODEL_MISMATCH = "model-mismatch"
    UNKNOWN_LABELSET = "unknown-labelset"
    INTERNAL_ERROR = "internal-error"


class Skip(StrEnum):
    """Why a listed entry was not enqueued: counted per run."""

    DONE = "done"  # already tagged at this version
    FAILED = "failed-before"  # failed at this version: tried again only when asked
    IN_FLIGHT = "in-flight"  # pending in another run
    NOT_IMAGE = "not-image"
    NO_URL = "no-url"
    BAD_URI = "bad-uri"
    URI_TOO_LONG = "uri-too-long"
    NOT_A_FILE = "not-a-file"
    BROKEN_LINK = "broken-link"
    UNREADABLE = "unreadable"


class TaggerError(Exception):
    """The root of every error this project raises on purpose."""


class ConfigError(TaggerError):
    """A setting, file or argument the user gave cannot be used; the message says what to do."""


class SourceError(TaggerError):
    """A source cannot be listed at all (missing bucket, bad credentials, bad query)."""


class MessageError(TaggerError):
    """A broker message that is not a well-formed chunk of ours."""


class TransientError(TaggerError):
    """Infrastructure trouble (database down, S3 throttling): retry the whole chunk later."""


class ItemError(TaggerError):
    """One image cannot be tagged; it becomes a failed result with this reason and message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = Reason(reason)

    def __reduce__(self) -> tuple[type[ItemError], tuple[Reason, str]]:
        # Decoders run in other processes: an ItemError crosses back pickled.
        return type(self), (self.reason, str(self))
