"""The shape every sink shares: ``setup()``, ``add(item)``, ``flush()``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, TypeVar

T = TypeVar("T")


class BackpressureError(RuntimeError):
    """The backend cannot take more now; retry the same items after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RowsRejectedError(ValueError):
    """The backend refused these items for what they hold (a value out of range, a
    string too long): retrying them can never succeed. The writer isolates the rows
    to blame by bisecting the batch."""


class Sink(ABC, Generic[T]):
    """Somewhere outputs go. ``flush()`` returns only once everything added is durable."""

    name: str = "sink"

    def setup(self) -> None:
        """Connect and prepare (create collections...). Called once before the first add."""

    @abstractmethod
    def add(self, item: T) -> None:
        """Queue one item."""

    @abstractmethod
    def flush(self) -> None:
        """Write everything queued; raise :class:`BackpressureError` to be retried."""

    def check(self) -> None:
        """Raise when the backend cannot be reached now (the writer asks this to tell a
        refused row from a backend that is down). Default: always reachable."""

    def close(self) -> None:
        """Release connections."""


class BatchingSink(Sink[T]):
    """Buffers items and writes them in batches of at most ``max_rows``.

    On failure the unwritten rows stay buffered, so calling ``flush()`` again retries
    exactly what was not yet written.
    """

    def __init__(self, max_rows: int = 256) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.max_rows = max_rows
        self._buffer: list[T] = []

    def add(self, item: T) -> None:
        self._buffer.append(item)

    @property
    def pending(self) -> int:
        """Items added but not yet written."""
        return len(self._buffer)

    def flush(self) -> None:
        while self._buffer:
            batch = self._buffer[: self.max_rows]
            self.write_batch(batch)
            del self._buffer[: len(batch)]

    @abstractmethod
    def write_batch(self, batch: list[T]) -> None:
        """Write one batch durably, or raise."""
