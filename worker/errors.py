"""Exception types that decide between "record a failed item" and "retry the chunk"."""

from __future__ import annotations


class TransientError(Exception):
    """Infrastructure trouble (database down, S3 throttling): retry the whole chunk later."""


class ItemError(Exception):
    """One image cannot be tagged; it becomes a failed result with this reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
