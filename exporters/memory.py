"""An in-memory sink for tests of the code around sinks."""

from __future__ import annotations

from typing import TypeVar

from exporters.base import BatchingSink

T = TypeVar("T")


class ListSink(BatchingSink[T]):
    """Keeps written batches in a list; can be told to fail the next N writes."""

    name = "memory"

    def __init__(self, max_rows: int = 256) -> None:
        super().__init__(max_rows)
        self.items: list[T] = []
        self.batches: list[list[T]] = []
        self.fail_next = 0

    def write_batch(self, batch: list[T]) -> None:
        from exporters.base import BackpressureError

        if self.fail_next:
            self.fail_next -= 1
            raise BackpressureError("memory sink told to fail", retry_after=0.0)
        self.items.extend(batch)
        self.batches.append(list(batch))
