"""Trends in the worker and for queries: the trends agent's logic (count, metrics) and
the changelog reader behind ``postpulse trends`` and the worker's ``/trends`` page."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from exporters.prometheus import PipelineMetrics
from streams.settings import BrokerProfile, Settings
from streams.stages.trends import (
    ALL_POSTS,
    TOPIC_KINDS,
    TrendConfig,
    TrendCounter,
    TrendEvent,
    TrendSnapshot,
    TrendStore,
    encode_key,
    format_duration,
    parse_duration,
    rank_trends,
    snapshot_items,
    topic_kind,
)

log = logging.getLogger(__name__)

OTHER = "other"


def trend_config(settings: Settings) -> TrendConfig:
    """The trend settings as a :class:`TrendConfig` (raises ``ValueError`` when bad)."""
    sizes = tuple(sorted({parse_duration(s) for s in settings.trend_windows.split(",") if s}))
    return TrendConfig(
        bucket_sizes_ms=sizes,
        retention_buckets=settings.trend_retention_windows,
        lateness_ms=parse_duration(settings.trend_lateness),
        hashtag_capacity=settings.trend_hashtag_capacity,
        min_support=settings.trend_min_support,
        history=settings.trend_history_windows,
    )


class TrendTracker:
    """What the trends agent does per event and per refresh tick."""

    def __init__(
        self, store: TrendStore, config: TrendConfig, metrics: PipelineMetrics, top_k: int
    ) -> None:
        self.store = store
        self.config = config
        self.counter = TrendCounter(store, config)
        self.metrics = metrics
        self.top_k = top_k
        self.top_topics: set[str] = set()
        self.latest_ms = 0
        # this worker's windows, kept up to date from each batch's writes (decoding the
        # whole table on every refresh would block the event loop)
        self.snapshot: TrendSnapshot | None = None
        # per trend-events partition, the next offset this agent expects (stored in the
        # table as ["o", partition] after each batch's windows; see gap_before)
        self._next: dict[int, int | None] = {}
        self._saved_next: dict[int, int | None] = {}

    def gap_before(self, partition: int, offset: int) -> tuple[int, int] | None:
        """Note that the record at ``offset`` of ``partition`` is being handled; returns
        the offsets ``[start, end)`` before it that were never handed to this agent, if
        any. The trend-events topic is neither compacted nor transactional, so offsets
        have no holes: a jump past the next expected offset means records were skipped
        on the way to the agent (seen after a trends-worker restart in the chaos suite),
        and the caller reads them from the broker itself. A lower offset is a redelivery
        (the windows deduplicate it)."""
        if partition not in self._next:
            raw = self.store.get(encode_key("o", partition))
            self._next[partition] = int(json.loads(raw)["next"]) if raw else None
            self._saved_next[partition] = self._next[partition]
        expected = self._next[partition]
        self._next[partition] = offset + 1 if expected is None else max(expected, offset + 1)
        if expected is not None and offset > expected:
            return expected, offset
        return None

    def written(self, key: bytes, value: bytes | None) -> None:
        """A table write (``None``: delete) made by the agent; keeps the snapshot current."""
        if self.snapshot is not None and key[:4] == b'["b"':
            self.snapshot.put(key, value)

    def reset(self) -> None:
        """Partitions moved (or a batch failed): rebuild indexes, expected offsets and the
        snapshot from the table."""
        self.counter.reset()
        self.snapshot = None
        self._next.clear()
        self._saved_next.clear()

    def handle(self, raw: bytes, partition: int) -> str:
        """Count one trend-events record; returns its outcome. A malformed record is
        logged and counted (it is our own topic: a bug, not user input)."""
        try:
            event = TrendEvent.from_json(raw)
        except ValueError as exc:
            log.error("trend event on partition %d not counted: %s", partition, exc)
            self.metrics.trend_events.labels("malformed").inc()
            return "malformed"
        result = self.counter.apply(event, partition)
        self.metrics.trend_events.labels(result.outcome).inc()
        if result.outcome == "counted":
            self.latest_ms = max(self.latest_ms, event.created_at_ms)
            kind = topic_kind(event.topic)
            if kind != "all":
                label = (
                    event.topic if kind == "category" or event.topic in self.top_topics else OTHER
                )
                self.metrics.topic_posts.labels(kind, label, event.sentiment).inc()
        elif result.outcome == "late":  # counted in postpulse_trend_events_total
            log.debug(
                "post %s (%s) later than %s: not counted in trends",
                event.post_id,
                event.topic,
                format_duration(self.config.lateness_ms),
            )
        return result.outcome

    def end_batch(self, partition: int) -> None:
        """A batch of ``partition`` is applied: store its watermark and the next offset
        expected after its windows."""
        self.counter.checkpoint(partition)
        expected = self._next.get(partition)
        if expected is not None and expected != self._saved_next.get(partition):
            self.store[encode_key("o", partition)] = json.dumps({"next": expected}).encode()
            self._saved_next[partition] = expected

    def refresh(self) -> None:
        """Recompute the top-K gauges from this worker's windows at its newest event time."""
        self.metrics.hashtags_tracked.set(self.counter.tracked_hashtags())
        if not self.latest_ms:
            return
        self.metrics.trend_watermark.set(self.latest_ms / 1000)
        if self.snapshot is None:  # after a start or rebalance: built once from the table
            self.snapshot = TrendSnapshot.from_items(snapshot_items(self.store))  # type: ignore[arg-type]
        snapshot = self.snapshot
        top: set[str] = set()
        for gauge in (
            self.metrics.trend_score,
            self.metrics.trend_rank,
            self.metrics.trend_window_posts,
        ):
            gauge.clear()
        for size in self.config.bucket_sizes_ms:
            ranked = rank_trends(
                snapshot,
                self.latest_ms,
                size,
                top_k=self.top_k,
                min_support=self.config.min_support,
                history=self.config.history,
                alpha=self.config.alpha,
            )
            window = format_duration(size)
            for rank, t in enumerate(ranked["topics"], start=1):
                self.metrics.trend_score.labels(window, t["topic"]).set(t["score"])
                self.metrics.trend_rank.labels(window, t["topic"]).set(rank)
                self.metrics.trend_window_posts.labels(window, t["topic"]).set(t["posts"])
                top.add(t["topic"])
        self.top_topics = top


class TrendEventFetcher:
    """Reads a range of offsets of one trend-events partition straight from the broker
    (plain kafka-python, no group): how the trends agent fills a gap (``gap_before``)."""

    def __init__(self, bootstrap: list[str], topic: str, profile: BrokerProfile) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.profile = profile
        self._consumer: KafkaConsumer | None = None

    def fetch(self, partition: int, start: int, end: int, timeout_s: float = 30.0) -> list[bytes]:
        """The values of offsets ``[start, end)`` in order; raises ``TimeoutError`` (or a
        ``KafkaError``) when they cannot be read within ``timeout_s``."""
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **self.profile.kafka_consumer,
            )
        consumer = self._consumer
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"offsets {start}..{end - 1} of {self.topic}[{partition}] not read in "
                    f"{timeout_s:.0f} s"
                )
            for records in consumer.poll(timeout_ms=500).values():
                values += [r.value for r in records if start <= r.offset < end]
        return values

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class ChangelogTrendReader:
    """Follows the trends table's changelog (every worker's partitions) and keeps a
    snapshot of all windows: last value per key wins, tombstones delete."""

    def __init__(self, bootstrap: list[str], topic: str, profile: BrokerProfile) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.profile = profile
        self.items: dict[bytes, bytes] = {}
        self._consumer: KafkaConsumer | None = None
        self._lock = threading.Lock()

    def _connect(self) -> KafkaConsumer:
        if self._consumer is None:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                consumer_timeout_ms=1000,
                **self.profile.kafka_consumer,
            )
            partitions = consumer.partitions_for_topic(self.topic) or set()
            if not partitions:
                consumer.close()
                raise LookupError(
                    f"no trends yet: topic {self.topic!r} does not exist (has a worker run?)"
                )
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
            consumer.seek_to_beginning()
            self._consumer = consumer
        return self._consumer

    def snapshot(self, timeout_s: float = 30.0) -> TrendSnapshot:
        """Read the changelog up to its current end and return every window."""
        with self._lock:
            consumer = self._connect()
            assigned = list(consumer.assignment())
            ends = consumer.end_offsets(assigned)
            deadline = time.monotonic() + timeout_s
            while any(consumer.position(tp) < ends[tp] for tp in assigned):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {self.topic} took longer than {timeout_s}s")
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        if record.key is None or record.key[:4] != b'["b"':
                            continue
                        if record.value is None:
                            self.items.pop(record.key, None)
                        else:
                            self.items[record.key] = record.value
            return TrendSnapshot.from_items(self.items.items())

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


def parse_at(text: str) -> int:
    """A query's ``at``: epoch milliseconds or an RFC 3339 date-time."""
    from streams.records import parse_created_at

    text = text.strip()
    return int(text) if text.isdigit() else parse_created_at(text)


def latest_event_ms(snapshot: TrendSnapshot) -> int | None:
    """End of the newest window holding any post (the default ``at`` of a query)."""
    sizes = snapshot.sizes()
    if not sizes:
        return None
    series = snapshot.windows.get((sizes[0], ALL_POSTS), {})
    return max(series) + sizes[0] - 1 if series else None


def trends_query(
    snapshot: TrendSnapshot,
    settings: Settings,
    window: str | None = None,
    step: str | None = None,
    top: int | None = None,
    at_ms: int | None = None,
    kinds: list[str] | None = None,
) -> dict[str, Any]:
    """The JSON both ``postpulse trends`` and ``GET /trends`` answer with."""
    config = trend_config(settings)
    window_ms = parse_duration(window) if window else config.bucket_sizes_ms[0]
    step_ms = parse_duration(step) if step else None
    for kind in kinds or []:
        if kind not in TOPIC_KINDS:
            raise ValueError(f"unknown topic kind {kind!r}; choose from {list(TOPIC_KINDS)}")
    at = at_ms if at_ms is not None else latest_event_ms(snapshot)
    if at is None:
        return {"window": format_duration(window_ms), "at_ms": None, "topics": [], "posts": 0}
    return rank_trends(
        snapshot,
        at,
        window_ms,
        step_ms,
        top_k=top or settings.trend_top_k,
        min_support=config.min_support,
        history=config.history,
        alpha=config.alpha,
        kinds=kinds or TOPIC_KINDS,
    )


def plot_trends(
    snapshot: TrendSnapshot,
    out: str,
    start_ms: int,
    end_ms: int,
    window_ms: int,
    topics: list[str] | None = None,
    top: int = 5,
) -> list[str]:
    """A PNG of topic volumes (top) and their sentiment mix (bottom) per window over
    ``[start_ms, end_ms)``; ``topics`` default to the ``top`` largest in the range.
    Returns the topics drawn."""
    import datetime as dt

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from streams.stages.trends import SENTIMENTS, volume_series

    if window_ms not in snapshot.sizes():
        stored = [format_duration(s) for s in snapshot.sizes()]
        raise ValueError(f"window {format_duration(window_ms)} is not stored; stored: {stored}")
    if topics is None:
        totals = {
            t: snapshot.count(t, start_ms, end_ms, window_ms).posts
            for t in snapshot.topics()
            if topic_kind(t) != "all"
        }
        topics = [t for t, n in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])) if n][:top]
    fig, (volume, mood) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    times: list[dt.datetime] = []
    for topic in topics:
        series = volume_series(snapshot, topic, start_ms, end_ms, window_ms)
        times = [dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC) for t, _ in series]
        volume.plot(times, [c.posts for _, c in series], label=topic, drawstyle="steps-post")
    all_series = volume_series(snapshot, ALL_POSTS, start_ms, end_ms, window_ms)
    times = [dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC) for t, _ in all_series]
    shares = []
    for i in range(len(SENTIMENTS)):
        row = [c.sentiment[i] / c.posts if c.posts else 0.0 for _, c in all_series]
        shares.append(row)
    mood.stackplot(
        times,
        shares,
        labels=list(SENTIMENTS),
        colors=["#d62728", "#bbbbbb", "#2ca02c"],
        step="post",
    )
    volume.set_ylabel(f"posts per {format_duration(window_ms)}")
    volume.set_title("topic volume")
    volume.legend(loc="upper left", fontsize="small")
    mood.set_ylabel("share of posts")
    mood.set_title("sentiment of all posts")
    mood.legend(loc="upper left", fontsize="small")
    mood.set_ylim(0, 1)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return topics
