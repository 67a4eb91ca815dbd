"""Writes a batch's outputs — Milvus upserts, analyses, dead letters — before any ack.

At-least-once: the caller acks the batch's messages only after :meth:`write` returns.
A sink that fails is retried with back-off until it succeeds or the worker stops;
its items are never dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from exporters.base import BackpressureError, Sink
from exporters.milvus import EmbeddingRow
from exporters.prometheus import PipelineMetrics
from streams.pipeline import BatchOutcome
from streams.stages.analyse import AnalysedPost
from streams.stages.trends import TrendEvent

log = logging.getLogger(__name__)

SendRecord = Callable[[bytes | None, bytes], Awaitable[None]]
"""Publishes one record (key, value) and returns once the broker has acknowledged it."""


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


class OutputWriter:
    """Durably writes one :class:`BatchOutcome` and records its metrics."""

    def __init__(
        self,
        embeddings: Sink[EmbeddingRow],
        send_analysis: SendRecord,
        send_dead_letter: SendRecord,
        metrics: PipelineMetrics,
        executor: Executor | None = None,
        max_backoff_s: float = 30.0,
        send_trend_events: Callable[[list[TrendEvent]], Awaitable[None]] | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.send_analysis = send_analysis
        self.send_dead_letter = send_dead_letter
        self.metrics = metrics
        self.executor = executor
        self.max_backoff_s = max_backoff_s
        self.send_trend_events = send_trend_events

    async def write(self, outcome: BatchOutcome) -> None:
        """Write everything; returns only when all of it is durable."""
        loop = asyncio.get_running_loop()
        for analysed in outcome.analysed:
            self.embeddings.add(embedding_row(analysed))
        start = time.perf_counter()
        await self._retry(
            "milvus", lambda: loop.run_in_executor(self.executor, self.embeddings.flush)
        )
        self.metrics.stage_seconds.labels("milvus").observe(time.perf_counter() - start)

        start = time.perf_counter()
        records = [
            (
                self.send_analysis,
                a.analysis.post_id.encode(),
                a.analysis.model_dump_json().encode(),
                "analyses",
            )
            for a in outcome.analysed
        ] + [
            (
                self.send_dead_letter,
                d.post_id.encode() if d.post_id else None,
                d.model_dump_json().encode(),
                "dead_letters",
            )
            for d in outcome.dead_letters
        ]
        sends = [
            self._retry(name, functools.partial(send, key, value))
            for send, key, value, name in records
        ]
        if outcome.trend_events and self.send_trend_events is not None:
            sends.append(
                self._retry(
                    "trend_events",
                    functools.partial(self.send_trend_events, outcome.trend_events),
                )
            )
        await asyncio.gather(*sends)
        self.metrics.stage_seconds.labels("publish").observe(time.perf_counter() - start)
        self._observe(outcome)

    async def _retry(self, sink: str, attempt: Callable[[], Awaitable[object]]) -> None:
        delay = 0.2
        while True:
            try:
                await attempt()
                return
            except BackpressureError as exc:
                wait = max(exc.retry_after, delay)
                log.warning("%s back-pressure (%s); retrying in %.1fs", sink, exc, wait)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                wait = delay
                log.warning("%s write failed (%r); retrying in %.1fs", sink, exc, wait)
            self.metrics.sink_retries.labels(sink).inc()
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.max_backoff_s)

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
        now_ms = time.time() * 1000
        for a in outcome.analysed:
            ts = a.decoded.validated.envelope.timestamp_ms
            if ts is not None:
                m.latency.observe(max(0.0, (now_ms - ts) / 1000))
            for kind in a.decoded.skipped_media:
                m.media_skipped.labels(kind).inc()
