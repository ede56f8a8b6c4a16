"""The store's errors; `retryable` tells the CLI which exit code a failed stage gets."""

from __future__ import annotations


class StoreError(Exception):
    """A store operation failed. `retryable` tells the CLI which exit code to use."""

    retryable = False

    def __init__(self, message: str, *, uri: str | None = None):
        super().__init__(message)
        self.uri = uri


class StoreUnavailable(StoreError):
    """The store could not be reached or answered with a transient error (after retries)."""

    retryable = True


class StoreNotFound(StoreError, FileNotFoundError):
    """The object or file does not exist."""


class ArtifactMismatch(StoreError):
    """A file differs from what its stage's manifest records (truncated, replaced, corrupted). Retryable:
    the stage that wrote it runs again and rewrites it."""

    retryable = True
