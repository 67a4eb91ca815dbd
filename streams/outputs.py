"""Writes a batch's outputs — Milvus upserts, analyses, dead letters, trend events —
before any ack, and never wedges.

At-least-once: the caller acks the batch's messages only after :meth:`OutputWriter.write`
returns. Every failure is classified (:func:`classify_error`):

* transient (back-pressure, connection refused, timeouts, a leader moving): retried with
  back-off, counted in metrics, for at most ``retry_budget_s`` per batch;
* permanent (a row the sink refuses, a record too large, an encoding error): the rows to
  blame are isolated by bisecting the batch and become ``sink_rejected`` dead letters,
  while the rest of the batch is written;
* unknown: retried ``max_attempts`` times, then the sink is probed: reachable means the
  rows are to blame (permanent), unreachable means transient.

Rows still failing when the budget is spent are dead-lettered as ``sink_rejected`` too.
A dead letter carries at most ``max_original_bytes`` of the original message; one that
cannot be published even without them goes to the spill file. So every message gets
exactly one outcome within a bounded time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum

from exporters.base import BackpressureError, BatchingSink, RowsRejectedError
from exporters.milvus import EmbeddingRow
from exporters.prometheus import PipelineMetrics
from streams.health import WorkerHealth
from streams.pipeline import BatchOutcome
from streams.records import DeadLetter, DeadLetterReason
from streams.spill import SpillFile
from streams.stages.analyse import AnalysedPost
from streams.stages.trends import TrendEvent

log = logging.getLogger(__name__)

SendRecord = Callable[[bytes | None, bytes], Awaitable[None]]
"""Publishes one record (key, value) and returns once the broker has acknowledged it."""

_PERMANENT_KAFKA_ERRORS = frozenset(
    {
        "MessageSizeTooLargeError",
        "RecordTooLargeError",
        "RecordListTooLargeError",
        "InvalidRecordError",
        "CorruptRecordError",
        "CorruptRecordException",
        "InvalidTopicError",
        "TopicAuthorizationFailedError",
    }
)


class ErrorKind(StrEnum):
    """How the writer treats a failed write."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


def classify_error(exc: BaseException) -> ErrorKind:
    """Transient (retry), permanent (isolate and dead-letter) or unknown (retry a
    bounded number of times, then ask the sink)."""
    if isinstance(exc, BackpressureError):
        return ErrorKind.TRANSIENT
    if isinstance(exc, RowsRejectedError) or type(exc).__name__ in _PERMANENT_KAFKA_ERRORS:
        return ErrorKind.PERMANENT
    if getattr(exc, "retriable", False) is True:  # kafka-python and aiokafka errors say so
        return ErrorKind.TRANSIENT
    if isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError):
        return ErrorKind.TRANSIENT
    if isinstance(exc, UnicodeError | ValueError | TypeError | OverflowError):
        return ErrorKind.PERMANENT
    return ErrorKind.UNKNOWN


@dataclass(frozen=True)
class OutputPolicy:
    """Bounds on how long a batch's outputs are retried, and how big a dead letter is."""

    retry_budget_s: float = 120.0
    max_attempts: int = 4
    base_backoff_s: float = 0.2
    max_backoff_s: float = 30.0
    max_original_bytes: int = 256 * 1024


class SinkGaveUp(Exception):
    """A write still failed transiently when the batch's retry budget ran out."""

    def __init__(self, sink: str, error: BaseException, attempts: int, seconds: float) -> None:
        super().__init__(
            f"{sink} still failing after {attempts} attempt(s) in {seconds:.0f} s: "
            f"{describe(error)}"
        )
        self.error = error


def describe(exc: BaseException) -> str:
    """An error in one line: its type and message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:500]}" if text else type(exc).__name__


def embedding_row(analysed: AnalysedPost) -> EmbeddingRow:
    """The Milvus row of an analysed post."""
    a = analysed.analysis
    return EmbeddingRow(
        post_id=a.post_id,
        embedding=analysed.embedding,
        created_at=a.created_at_ms,
        platform=a.platform,
        category=a.category or "",
        sentiment=a.sentiment,
        popularity=a.popularity,
        modality_mask=analysed.modality_mask,
        bundle_version=a.bundle_version,
    )


def rejected_dead_letter(analysed: AnalysedPost, sink: str, detail: str) -> DeadLetter:
    """The ``sink_rejected`` dead letter of a post a sink would not take."""
    return analysed.decoded.validated.envelope.dead_letter(
        DeadLetterReason.SINK_REJECTED,
        "output",
        f"{sink} rejected this post: {detail}",
        analysed.analysis.post_id,
    )


class OutputWriter:
    """Durably writes one :class:`BatchOutcome` and records its metrics."""

    def __init__(
        self,
        embeddings: BatchingSink[EmbeddingRow] | None,
        send_analysis: SendRecord,
        send_dead_letter: SendRecord,
        metrics: PipelineMetrics,
        executor: Executor | None = None,
        policy: OutputPolicy | None = None,
        send_trend_events: Callable[[list[TrendEvent]], Awaitable[None]] | None = None,
        send_trend_event: SendRecord | None = None,
        spill: SpillFile | None = None,
        health: WorkerHealth | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.send_analysis = send_analysis
        self.send_dead_letter = send_dead_letter
        self.metrics = metrics
        self.executor = executor
        self.policy = policy or OutputPolicy()
        self.send_trend_events = send_trend_events
        self.send_trend_event = send_trend_event
        self.spill = spill
        self.health = health or WorkerHealth()

    async def write(self, outcome: BatchOutcome) -> None:
        """Write everything; returns once every message of the batch has its outcome
        durable (or spilled). Posts a sink refused move from ``outcome.analysed`` to
        ``outcome.dead_letters``."""
        await self.write_all([outcome])

    async def write_all(self, outcomes: list[BatchOutcome]) -> None:
        """:meth:`write` for consecutive batches at once (a group commit: one Milvus
        write and flush, the records published together); each batch's metrics are
        recorded as its own."""
        deadline = time.monotonic() + self.policy.retry_budget_s
        start = time.perf_counter()
        refused = await self._write_embeddings(
            [embedding_row(a) for o in outcomes for a in o.analysed], deadline
        )
        self.metrics.stage_seconds.labels("milvus").observe(time.perf_counter() - start)
        if refused:
            for outcome in outcomes:
                self._move_to_dead_letters(outcome, "milvus", refused)

        start = time.perf_counter()
        published = await asyncio.gather(
            *(self._publish_analysis(a, deadline) for o in outcomes for a in o.analysed)
        )
        refused = {pid: detail for pid, detail in published if detail is not None}
        if refused:
            await self._forget_embeddings(list(refused), deadline)
            for outcome in outcomes:
                self._move_to_dead_letters(outcome, "analyses", refused)
        sends = [self._publish_dead_letter(d, deadline) for o in outcomes for d in o.dead_letters]
        trend_events = [e for o in outcomes for e in o.trend_events]
        if trend_events:
            sends.append(self._publish_trend_events(trend_events, deadline))
        await asyncio.gather(*sends)
        self.metrics.stage_seconds.labels("publish").observe(time.perf_counter() - start)
        for outcome in outcomes:
            self._observe(outcome)

    # -- the sinks
    async def _write_embeddings(self, rows: list[EmbeddingRow], deadline: float) -> dict[str, str]:
        """Upsert the rows; returns the post ids Milvus would not take, with why."""
        sink = self.embeddings
        if sink is None or not rows:
            return {}
        loop = asyncio.get_running_loop()
        refused: dict[str, str] = {}

        async def isolate(batch: list[EmbeddingRow]) -> None:
            error = await self._call(
                "milvus",
                lambda: loop.run_in_executor(self.executor, sink.write_batch, batch),
                deadline,
                probe=sink.check,
            )
            if error is None:
                return
            if isinstance(error, SinkGaveUp) or len(batch) == 1:
                for row in batch:
                    refused[row.post_id] = describe(error)
                return
            mid = len(batch) // 2  # isolate the rows to blame; the others get written
            await isolate(batch[:mid])
            await isolate(batch[mid:])

        for first in range(0, len(rows), sink.max_rows):
            await isolate(rows[first : first + sink.max_rows])
        return refused

    async def _forget_embeddings(self, post_ids: list[str], deadline: float) -> None:
        """Take back the Milvus rows of posts that end as dead letters after all."""
        sink = self.embeddings
        delete = getattr(sink, "delete", None)
        if delete is None:
            return
        loop = asyncio.get_running_loop()
        error = await self._call(
            "milvus", lambda: loop.run_in_executor(self.executor, delete, post_ids), deadline
        )
        if error is not None:
            log.error("could not delete %d refused post(s) from Milvus: %s", len(post_ids), error)

    async def _publish_analysis(
        self, analysed: AnalysedPost, deadline: float
    ) -> tuple[str, str | None]:
        """(post id, None) once published, or (post id, why it was refused)."""
        post_id = analysed.analysis.post_id
        try:
            value = analysed.analysis.model_dump_json().encode()
        except ValueError as exc:  # pydantic's serialisation errors are ValueErrors
            return post_id, describe(exc)
        error = await self._call(
            "analyses", functools.partial(self.send_analysis, post_id.encode(), value), deadline
        )
        return post_id, None if error is None else describe(error)

    async def _publish_dead_letter(self, dead: DeadLetter, deadline: float) -> None:
        """Publish a dead letter with its original capped; without the original if it is
        still refused; to the spill file if even that fails."""
        key = dead.post_id.encode() if dead.post_id else None
        capped = dead.capped(self.policy.max_original_bytes)
        try:
            value = capped.model_dump_json().encode()
        except ValueError as exc:  # cannot happen for dead letters made by Envelope
            self._spill("dead_letter", key, repr(capped).encode(), exc)
            return
        error = await self._call(
            "dead_letters", functools.partial(self.send_dead_letter, key, value), deadline
        )
        if error is not None and capped.original_b64 and not isinstance(error, SinkGaveUp):
            bare = dead.capped(0)
            value = bare.model_dump_json().encode()
            error = await self._call(
                "dead_letters", functools.partial(self.send_dead_letter, key, value), deadline
            )
        if error is not None:
            self._spill("dead_letter", key, capped.model_dump_json().encode(), error)

    async def _publish_trend_events(self, events: list[TrendEvent], deadline: float) -> None:
        """All events in order in one go; on failure one at a time, so only an event that
        is itself refused (spilled) misses its count."""
        if self.send_trend_events is not None:
            error = await self._call(
                "trend_events", functools.partial(self.send_trend_events, events), deadline
            )
            if error is None:
                return
            if isinstance(error, SinkGaveUp) or self.send_trend_event is None:
                for event in events:
                    self._spill("trend_event", event.topic.encode(), event.to_json(), error)
                return
        if self.send_trend_event is None:
            return
        for event in events:
            key, value = event.topic.encode(), event.to_json()
            one = await self._call(
                "trend_events", functools.partial(self.send_trend_event, key, value), deadline
            )
            if one is not None:
                self._spill("trend_event", key, value, one)

    # -- retry, classify, give up
    async def _call(
        self,
        sink: str,
        attempt: Callable[[], Awaitable[object]],
        deadline: float,
        probe: Callable[[], None] | None = None,
    ) -> BaseException | None:
        """Run ``attempt`` until it succeeds (None) or is refused for good (the error,
        or :class:`SinkGaveUp` once ``deadline`` passed with transient failures)."""
        delay, attempts, first_failure = self.policy.base_backoff_s, 0, 0.0
        while True:
            try:
                await attempt()
                if attempts:
                    self.health.report_problem(None)
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempts += 1
                first_failure = first_failure or time.monotonic()
                kind = classify_error(exc)
                if kind is ErrorKind.UNKNOWN and attempts >= self.policy.max_attempts:
                    kind = await self._reachable(probe)
                self.metrics.sink_errors.labels(sink, kind.value).inc()
                if kind is ErrorKind.PERMANENT:
                    log.warning("%s refused a write: %s", sink, describe(exc))
                    return exc
                now = time.monotonic()
                if now >= deadline:
                    return SinkGaveUp(sink, exc, attempts, now - first_failure)
                self.health.check_drain()
                wait = max(delay, exc.retry_after if isinstance(exc, BackpressureError) else 0.0)
                wait = min(wait, deadline - now, max(self.health.drain_remaining(), 0.0))
                self.health.report_problem(
                    f"{sink}: retrying since {now - first_failure:.0f} s: {describe(exc)}"
                )
                log.warning("%s write failed (%s); retrying in %.1fs", sink, describe(exc), wait)
                self.metrics.sink_retries.labels(sink).inc()
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.policy.max_backoff_s)

    async def _reachable(self, probe: Callable[[], None] | None) -> ErrorKind:
        """After repeated unknown errors: a sink that answers its probe is refusing the
        rows (permanent); one that does not is down (transient)."""
        if probe is None:
            return ErrorKind.PERMANENT
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, probe)
        except Exception:
            return ErrorKind.TRANSIENT
        return ErrorKind.PERMANENT

    def _move_to_dead_letters(
        self, outcome: BatchOutcome, sink: str, refused: dict[str, str]
    ) -> None:
        kept = []
        for analysed in outcome.analysed:
            detail = refused.get(analysed.analysis.post_id)
            if detail is None:
                kept.append(analysed)
            else:
                self.metrics.sink_rejected.labels(sink).inc()
                outcome.dead_letters.append(rejected_dead_letter(analysed, sink, detail))
        outcome.analysed = kept
        # a refused post's trend events would count a post that has no analysis
        outcome.trend_events = [e for e in outcome.trend_events if e.post_id not in refused]

    def _spill(self, kind: str, key: bytes | None, value: bytes, error: BaseException) -> None:
        self.metrics.spilled.labels(kind).inc()
        if self.spill is None:
            log.error(
                "%s could not be written and no spill file is set: %s %s", kind, key, value[:2000]
            )
            return
        try:
            self.spill.write(kind, key, value, describe(error))
            log.error(
                "%s could not be published (%s); written to %s",
                kind,
                describe(error),
                self.spill.path,
            )
        except OSError as exc:
            log.error("%s could not be spilled (%s): %s %s", kind, exc, key, value[:2000])

    def _observe(self, outcome: BatchOutcome) -> None:
        m = self.metrics
        m.batch_size.observe(outcome.size)
        m.posts.labels("analysed").inc(len(outcome.analysed))
        m.posts.labels("dead_lettered").inc(len(outcome.dead_letters))
        for d in outcome.dead_letters:
            m.dead_letters.labels(d.reason.value, d.stage).inc()
        for stage, seconds in outcome.timer.stages.items():
            m.stage_seconds.labels(stage).observe(seconds)
        for modality, seconds in outcome.timer.encoders.items():
            if outcome.timer.encoder_items.get(modality):
                m.encoder_seconds.labels(modality).observe(seconds)
                m.encoder_items.labels(modality).inc(outcome.timer.encoder_items[modality])
        for tool, count in outcome.timer.tool_failures.items():
            m.tool_failures.labels(tool).inc(count)
        if outcome.topic_errors:
            m.topic_errors.inc(outcome.topic_errors)
        now_ms = time.time() * 1000
        for a in outcome.analysed:
            ts = a.decoded.validated.envelope.timestamp_ms
            if ts is not None:
                m.latency.observe(max(0.0, (now_ms - ts) / 1000))
            for kind in a.decoded.skipped_media:
                m.media_skipped.labels(kind).inc()


def dead_letter_budget(max_request_bytes: int, configured: int) -> int:
    """Original bytes a dead letter may carry so that, base64-encoded with its other
    fields, it still fits one produce request."""
    room = (max_request_bytes - 16 * 1024) * 3 // 4
    return max(0, min(configured, room))
