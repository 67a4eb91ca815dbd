"""Space-saving heavy-hitter counting (Metwally, Agrawal, El Abbadi, 2005).

Keeps at most ``capacity`` counters however many distinct items the stream holds. An
item with a true count above ``total / capacity`` is always tracked, and each tracked
count overestimates the truth by at most its recorded ``error``.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


@dataclass
class Counted:
    """A tracked item's count and the overestimate it inherited when admitted."""

    count: int
    error: int


class SpaceSaving(Generic[T]):
    """Bounded top-k counter. :meth:`offer` returns the item evicted to make room, if any,
    so a caller can drop what it keeps per item (window counts, table keys)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.counters: dict[T, Counted] = {}
        # min-heap of (count, seq, item); entries whose count is stale are skipped lazily
        self._heap: list[tuple[int, int, T]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self.counters)

    def __contains__(self, item: object) -> bool:
        return item in self.counters

    def _push(self, item: T, count: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (count, self._seq, item))
        if len(self._heap) > 4 * self.capacity + 16:  # drop stale entries: memory stays bounded
            self._heap = [(c.count, i, k) for i, (k, c) in enumerate(self.counters.items())]
            heapq.heapify(self._heap)
            self._seq = len(self._heap)

    def _pop_min(self) -> T:
        while True:
            count, _, item = heapq.heappop(self._heap)
            current = self.counters.get(item)
            if current is not None and current.count == count:
                return item

    def offer(self, item: T, count: int = 1) -> T | None:
        """Count ``item``; returns the evicted item when a new one replaced the minimum."""
        current = self.counters.get(item)
        if current is not None:
            current.count += count
            self._push(item, current.count)
            return None
        if len(self.counters) < self.capacity:
            self.counters[item] = Counted(count, 0)
            self._push(item, count)
            return None
        evicted = self._pop_min()
        floor = self.counters.pop(evicted).count
        self.counters[item] = Counted(floor + count, floor)
        self._push(item, floor + count)
        return evicted

    def restore(self, entries: Iterable[tuple[T, int, int]]) -> None:
        """Load (item, count, error) triples saved earlier (after a restart)."""
        for item, count, error in entries:
            self.counters[item] = Counted(count, error)
            self._push(item, count)

    def top(self, k: int) -> list[tuple[T, int]]:
        """The ``k`` largest counts, largest first (ties by item order of admission)."""
        ranked = sorted(self.counters.items(), key=lambda kv: -kv[1].count)
        return [(item, c.count) for item, c in ranked[:k]]

    def guaranteed(self, item: T) -> int:
        """A lower bound on the item's true count (0 when untracked)."""
        c = self.counters.get(item)
        return 0 if c is None else c.count - c.error
