"""What a worker knows about its own health: liveness (is the agent making progress?),
readiness (can it take posts?) and the bounded drain on SIGTERM.

The agent and the output writer report into one :class:`WorkerHealth`; the web pages
``/healthz`` and ``/readyz`` read it. Nothing here does I/O.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


class DrainTimeout(RuntimeError):
    """The worker was asked to stop and the drain limit passed before the batch was
    written; the batch stays uncommitted (it is redelivered after the restart)."""


@dataclass
class InFlightBatch:
    """A batch the agent took and has not yet done (its outputs written, its messages
    acked)."""

    size: int
    started: float
    offsets: dict[int, tuple[int, int]]  # partition -> (first, last) offset in the batch


@dataclass
class WorkerHealth:
    """Progress of the posts agent, as liveness and readiness see it."""

    stall_after_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    last_progress: float = 0.0
    batches_done: int = 0
    problem: str | None = None  # e.g. "milvus: retrying since 12 s: connection refused"
    partitions: int = 0  # input partitions assigned now
    backlog: int | None = None  # records on the assigned partitions not yet done (None: unknown)
    backlog_since: float | None = None  # when a backlog was first seen with nothing taken
    done_next: dict[int, int] = field(default_factory=dict)  # partition -> next offset to do
    drain_requested: bool = False
    drain_deadline: float = float("inf")
    drain_timed_out: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # oldest first: with the pipeline overlapped, batch N+1 is encoded while N is written
    _batches: deque[InFlightBatch] = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        self.last_progress = self.clock()

    @property
    def in_flight(self) -> InFlightBatch | None:
        """The oldest batch taken and not yet done (None when there is none)."""
        return self._batches[0] if self._batches else None

    # -- reported by the agent and the writer
    def batch_started(self, size: int, offsets: dict[int, tuple[int, int]]) -> None:
        """The agent took a batch of ``size`` messages."""
        with self._lock:
            self._batches.append(InFlightBatch(size, self.clock(), offsets))
            self.backlog_since = None

    def batch_done(self) -> None:
        """The oldest batch's outputs are durable and its messages acked (batches are
        done in the order they were taken)."""
        with self._lock:
            if self._batches:
                done = self._batches.popleft()
                for partition, (_, last) in done.offsets.items():
                    self.done_next[partition] = max(self.done_next.get(partition, 0), last + 1)
            self.problem = None
            self.batches_done += 1
            self.last_progress = self.clock()
            self.backlog_since = None

    def partitions_changed(self, count: int) -> None:
        """A rebalance assigned ``count`` input partitions (0: revoked); what was done on
        the old assignment says nothing about the new one."""
        with self._lock:
            self.partitions = count
            self.done_next.clear()
            self.backlog = None
            self.backlog_since = None

    def report_backlog(self, waiting: int | None) -> None:
        """Records on the assigned partitions that no batch has done yet (end offset
        minus the next offset to do), measured by the worker's backlog timer; None when
        it could not be measured (the broker unreachable: not the worker's fault)."""
        with self._lock:
            self.backlog = waiting
            if not waiting:
                self.backlog_since = None
            elif self.backlog_since is None:
                self.backlog_since = self.clock()

    def report_problem(self, problem: str | None) -> None:
        """What the current batch waits for (a sink being retried), or None."""
        with self._lock:
            self.problem = problem

    # -- the drain on SIGTERM
    def begin_drain(self, limit_s: float) -> None:
        """Stop after the current batch; a write still retrying at ``limit_s`` gives up."""
        with self._lock:
            if not self.drain_requested:
                self.drain_requested = True
                self.drain_deadline = self.clock() + limit_s

    def drain_remaining(self) -> float:
        """Seconds left of the drain (infinite when no stop was asked)."""
        return self.drain_deadline - self.clock()

    def check_drain(self) -> None:
        """Raise :class:`DrainTimeout` once a requested drain ran out of time."""
        if self.drain_requested and self.drain_remaining() <= 0:
            raise DrainTimeout(f"drain limit reached; {self.describe_in_flight()} left uncommitted")

    def describe_in_flight(self) -> str:
        """The in-flight batches in words: size and offset ranges per partition."""
        with self._lock:  # read by the drain watchdog's thread too
            batches = list(self._batches)
        if not batches:
            return "no batch"
        return " and ".join(
            f"a batch of {batch.size} message(s) ("
            + ", ".join(
                f"partition {p} offsets {a}..{b}" for p, (a, b) in sorted(batch.offsets.items())
            )
            + ")"
            for batch in batches
        )

    # -- read by the web pages
    def liveness(self) -> tuple[bool, dict[str, object]]:
        """(alive, body): not alive when a batch has been in flight for longer than
        ``stall_after_s``, or when records have been waiting on the assigned partitions
        that long with no batch taken (a consumer that stopped fetching)."""
        with self._lock:
            now = self.clock()
            batch = self.in_flight
            body: dict[str, object] = {
                "batches_done": self.batches_done,
                "seconds_since_progress": round(now - self.last_progress, 3),
                "stall_after_s": self.stall_after_s,
            }
            if batch is not None:
                body["in_flight"] = {  # the oldest batch; "batches" counts all of them
                    "messages": batch.size,
                    "seconds": round(now - batch.started, 3),
                    "offsets": {str(p): list(r) for p, r in sorted(batch.offsets.items())},
                    "batches": len(self._batches),
                }
            if self.problem:
                body["waiting_for"] = self.problem
            if self.backlog is not None:
                body["records_waiting"] = self.backlog
            if batch is not None and now - batch.started > self.stall_after_s:
                body["status"] = "stalled"
                body["reason"] = (
                    f"no progress for {now - batch.started:.0f} s with {batch.size} message(s) "
                    f"in flight (limit {self.stall_after_s:.0f} s)"
                    + (f": {self.problem}" if self.problem else "")
                )
                return False, body
            idle = now - self.backlog_since if self.backlog_since is not None else 0.0
            if batch is None and self.backlog and idle > self.stall_after_s:
                body["status"] = "stalled"
                body["reason"] = (
                    f"{self.backlog} record(s) waiting on {self.partitions} assigned "
                    f"partition(s) and no batch taken for {idle:.0f} s "
                    f"(limit {self.stall_after_s:.0f} s)"
                )
                return False, body
            body["status"] = "ok"
            return True, body
