"""Trends: topics of a post, event-time window counts, and trend scores.

Framework-free. :class:`TrendCounter` applies :class:`TrendEvent` records to a key-value
store (the worker's Faust table, a dict in unit tests); :func:`rank_trends` turns a
snapshot of that store into the top-K trending topics of a window, and is what both
``postpulse trends`` and the worker's ``/trends`` page run.

Store layout (keys and values are JSON bytes, so the table's changelog is readable by
any Kafka client):

- ``["b", partition, size_ms, topic, start_ms]`` -> ``{"n", "s": [neg, neu, pos],
  "src": {source_partition: last_source_offset}}``: a tumbling window of one size;
- ``["h", partition, topic]`` -> ``{"c", "e", "src"}``: a tracked hashtag's or key
  phrase's space-saving counter (count, overestimate, last source offsets taken);
- ``["w", partition]`` -> ``{"src": {source_partition: max_created_at_ms}}``: the
  newest post time seen per partition of the ``posts`` topic (lateness, expiry).

Exactness under at-least-once delivery: a window remembers, per partition of the
``posts`` topic, the offset of the last post it counted; a redelivered post (after a
crash, a rebalance, or a re-sent trend event) is recognised and not counted twice.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.stages.heavy_hitters import SpaceSaving

SENTIMENTS = ("negative", "neutral", "positive")
ALL_POSTS = "_all"
"""Pseudo-topic every post counts toward (volume per window; never ranked)."""
TOPIC_KINDS = ("category", "hashtag", "phrase", "emerging")
COUNTED_BY_SKETCH = ("hashtag", "phrase")
"""Open-vocabulary kinds: tracked through the space-saving counter (bounded memory)."""
MAX_HASHTAGS_PER_POST = 8

_HASHTAG = re.compile(r"(?<![\w&#])#(\w{1,64})", re.UNICODE)
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|min|h|d|w)?\s*$")
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNITS["w"] = 7 * _UNITS["d"]


def parse_duration(text: str) -> int:
    """``"5m"``, ``"1h"``, ``"1d"``, ``"90s"`` -> milliseconds (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 5m, 1h, 1d)")
    value, unit = int(match.group(1)), match.group(2) or "s"
    if value <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return value * _UNITS[unit]


def format_duration(ms: int) -> str:
    """The shortest exact spelling: 300000 -> ``"5m"``."""
    for unit in ("w", "d", "h", "m", "s"):
        if ms % _UNITS[unit] == 0:
            return f"{ms // _UNITS[unit]}{unit}"
    return f"{ms}ms"


def extract_hashtags(text: str) -> list[str]:
    """A post's hashtags, normalised (NFKC, case-folded), first occurrence order, at most
    :data:`MAX_HASHTAGS_PER_POST` — the topic ids ``#tag``."""
    seen: list[str] = []
    for match in _HASHTAG.finditer(unicodedata.normalize("NFKC", text)):
        tag = "#" + match.group(1).casefold()
        if tag not in seen and not match.group(1).isdigit():
            seen.append(tag)
            if len(seen) == MAX_HASHTAGS_PER_POST:
                break
    return seen


def topic_kind(topic: str) -> str:
    """``category``, ``hashtag``, ``phrase``, ``emerging`` or ``all``, from a topic id."""
    if topic == ALL_POSTS:
        return "all"
    if topic.startswith("#"):
        return "hashtag"
    if topic.startswith("phrase:"):
        return "phrase"
    if topic.startswith("emerging:"):
        return "emerging"
    return "category"


def category_topic(category: str) -> str:
    """The topic id of a predicted category."""
    return f"category:{category}"


@dataclass(frozen=True)
class TrendEvent:
    """One post's contribution to one topic (topic ``post-trend-events``, keyed by
    topic so that a topic's windows live in one partition)."""

    topic: str
    created_at_ms: int
    sentiment: str
    post_id: str
    source_partition: int
    source_offset: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "topic": self.topic,
                "created_at_ms": self.created_at_ms,
                "sentiment": self.sentiment,
                "post_id": self.post_id,
                "source": [self.source_partition, self.source_offset],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TrendEvent:
        """Parse; raises ``ValueError`` with the reason on a malformed record."""
        try:
            doc = json.loads(raw)
            partition, offset = doc["source"]
            event = cls(
                topic=str(doc["topic"]),
                created_at_ms=int(doc["created_at_ms"]),
                sentiment=str(doc["sentiment"]),
                post_id=str(doc["post_id"]),
                source_partition=int(partition),
                source_offset=int(offset),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed trend event: {exc!r}") from exc
        if event.sentiment not in SENTIMENTS:
            raise ValueError(f"malformed trend event: unknown sentiment {event.sentiment!r}")
        return event


def trend_events(
    post_id: str,
    created_at_ms: int,
    sentiment: str,
    topics: Iterable[str],
    source_partition: int,
    source_offset: int,
) -> list[TrendEvent]:
    """The events of one post: the volume pseudo-topic plus each of its topics once."""
    unique = [ALL_POSTS, *dict.fromkeys(t for t in topics if t and t != ALL_POSTS)]
    return [
        TrendEvent(t, created_at_ms, sentiment, post_id, source_partition, source_offset)
        for t in unique
    ]


@dataclass(frozen=True)
class TrendConfig:
    """How windows are stored and scored."""

    bucket_sizes_ms: tuple[int, ...] = (300_000, 3_600_000, 86_400_000)
    retention_buckets: int = 2016
    lateness_ms: int = 600_000
    hashtag_capacity: int = 1000
    min_support: int = 5
    history: int = 24
    alpha: float = 0.3

    def __post_init__(self) -> None:
        if not self.bucket_sizes_ms:
            raise ValueError("at least one window size is needed")
        if not 0 < self.alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")


def encode_key(*parts: object) -> bytes:
    return json.dumps(list(parts), separators=(",", ":")).encode()


def decode_key(raw: bytes) -> list[Any]:
    parts = json.loads(raw)
    if not isinstance(parts, list) or not parts:
        raise ValueError(f"not a trend table key: {raw!r}")
    return parts


class TrendStore(Protocol):
    """What :class:`TrendCounter` needs of a Faust table (a dict has it too)."""

    def get(self, key: bytes, /) -> Any: ...
    def __setitem__(self, key: bytes, value: bytes) -> None: ...
    def __delitem__(self, key: bytes) -> None: ...
    def keys(self) -> Iterable[bytes]: ...


class StagedStore:
    """A :class:`TrendStore` that holds writes back until :meth:`drain`, so a batch of
    events costs one changelog record per key it touched instead of one per write."""

    def __init__(self, base: TrendStore) -> None:
        self.base = base
        self.staged: dict[bytes, bytes | None] = {}

    def get(self, key: bytes, /) -> Any:
        if key in self.staged:
            return self.staged[key]
        return self.base.get(key)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.staged[key] = value

    def __delitem__(self, key: bytes) -> None:
        self.staged[key] = None

    def keys(self) -> Iterable[bytes]:
        present = {k for k in self.base.keys() if self.staged.get(k, b"") is not None}  # noqa: SIM118 - a Protocol with keys(), no __iter__
        return present | {k for k, v in self.staged.items() if v is not None}

    def drain(self) -> list[tuple[bytes, bytes | None]]:
        """The staged writes (``None``: deleted), in the order first written; clears them."""
        changes = list(self.staged.items())
        self.staged.clear()
        return changes


@dataclass
class _PartitionState:
    sketch: SpaceSaving[str]
    # per tracked topic, the last source offset its counter took, per posts partition
    sketch_src: dict[str, dict[str, int]] = field(default_factory=dict)
    topic_keys: dict[str, set[bytes]] = field(default_factory=dict)
    watermark: dict[str, int] = field(default_factory=dict)
    saved_watermark: dict[str, int] = field(default_factory=dict)
    expired_at: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ApplyResult:
    """What happened to one event: ``counted``, ``duplicate`` or ``late``; and the
    hashtag evicted from the space-saving counter to make room, if any."""

    outcome: str
    evicted: str | None = None


class TrendCounter:
    """Applies trend events to the store, one partition of the trend-events topic at a
    time. In-memory indexes are rebuilt from the store after a restart or rebalance."""

    def __init__(self, store: TrendStore, config: TrendConfig) -> None:
        self.store = store
        self.config = config
        self._partitions: dict[int, _PartitionState] = {}

    def reset(self) -> None:
        """Forget in-memory indexes (call when partitions are assigned or revoked)."""
        self._partitions.clear()

    def tracked_hashtags(self) -> int:
        """Hashtags and key phrases with window counts, over this worker's partitions."""
        return sum(len(s.sketch) for s in self._partitions.values())

    def _state(self, partition: int) -> _PartitionState:
        state = self._partitions.get(partition)
        if state is not None:
            return state
        state = _PartitionState(SpaceSaving(self.config.hashtag_capacity))
        sketch_entries = []
        for raw in list(self.store.keys()):
            parts = decode_key(raw)
            if len(parts) < 2 or parts[1] != partition:
                continue
            if parts[0] == "b":
                state.topic_keys.setdefault(parts[3], set()).add(raw)
            elif parts[0] == "h":
                value = json.loads(self.store.get(raw))
                sketch_entries.append((parts[2], int(value["c"]), int(value["e"])))
                state.sketch_src[parts[2]] = {k: int(v) for k, v in value.get("src", {}).items()}
            elif parts[0] == "w":
                state.watermark = {
                    k: int(v) for k, v in json.loads(self.store.get(raw))["src"].items()
                }
                state.saved_watermark = dict(state.watermark)
        state.sketch.restore(sketch_entries)
        self._partitions[partition] = state
        return state

    def apply(self, event: TrendEvent, partition: int) -> ApplyResult:
        """Count ``event`` (read from ``partition`` of the trend-events topic) into one
        window of each size, unless it was counted already or is later than allowed."""
        state = self._state(partition)
        source = str(event.source_partition)
        starts = [
            (size, event.created_at_ms - event.created_at_ms % size)
            for size in self.config.bucket_sizes_ms
        ]
        keys = [encode_key("b", partition, size, event.topic, start) for size, start in starts]
        # each window is checked on its own: a crash may have saved some of an event's
        # windows and not others, and the redelivered event completes the rest
        fresh = [
            (key, value)
            for key, value in ((k, self._bucket(k)) for k in keys)
            if value["src"].get(source, -1) < event.source_offset
        ]
        # Lateness is judged within the post's own partition of the posts topic (the
        # order of a partition is fixed, so replays and restarts decide alike); windows
        # expire by the slowest partition's progress. The watermark is stored by
        # checkpoint() after a batch's windows, so a restarted worker resumes with the
        # watermark its stored counts were decided under, never a later one; redelivered
        # events move it as they did the first time.
        newest = state.watermark.get(source, event.created_at_ms)
        state.watermark[source] = max(newest, event.created_at_ms)
        if not fresh:
            return ApplyResult("duplicate")
        counted_before = len(fresh) < len(keys)  # accepted once: a crash lost some windows
        if event.created_at_ms < newest - self.config.lateness_ms and not counted_before:
            return ApplyResult("late")
        watermark = min(state.watermark.values())
        evicted = None
        # the counter, like a window, remembers the offsets it took: exact under redelivery
        sketch_src = state.sketch_src.get(event.topic, {})
        if (
            topic_kind(event.topic) in COUNTED_BY_SKETCH
            and sketch_src.get(source, -1) < event.source_offset
        ):
            evicted = state.sketch.offer(event.topic)
            if evicted is not None:
                self._forget(state, partition, evicted)
            sketch_src = state.sketch_src.setdefault(event.topic, sketch_src)
            sketch_src[source] = event.source_offset
            counted = state.sketch.counters[event.topic]
            self.store[encode_key("h", partition, event.topic)] = json.dumps(
                {"c": counted.count, "e": counted.error, "src": sketch_src}
            ).encode()
        sentiment = SENTIMENTS.index(event.sentiment)
        bucket_keys = state.topic_keys.setdefault(event.topic, set())
        for key, value in fresh:
            value["n"] += 1
            value["s"][sentiment] += 1
            value["src"][source] = event.source_offset
            self.store[key] = json.dumps(value, separators=(",", ":")).encode()
            bucket_keys.add(key)
        self._expire(state, event.topic, watermark)
        return ApplyResult("counted", evicted)

    def checkpoint(self, partition: int) -> None:
        """Store the partition's watermark if it moved. Call after each batch of the
        partition: written after the batch's windows (the changelog keeps that order), a
        stored watermark never runs ahead of the stored counts, so events redelivered
        after a crash are judged late or not exactly as they were the first time."""
        state = self._partitions.get(partition)
        if state is None or state.watermark == state.saved_watermark:
            return
        self.store[encode_key("w", partition)] = json.dumps({"src": state.watermark}).encode()
        state.saved_watermark = dict(state.watermark)

    def _bucket(self, key: bytes) -> dict[str, Any]:
        raw = self.store.get(key)
        if raw is None:
            return {"n": 0, "s": [0, 0, 0], "src": {}}
        value: dict[str, Any] = json.loads(raw)
        return value

    def _forget(self, state: _PartitionState, partition: int, topic: str) -> None:
        """Drop an evicted hashtag's windows and counter: memory stays bounded."""
        for key in state.topic_keys.pop(topic, set()):
            del self.store[key]
        state.sketch_src.pop(topic, None)
        key = encode_key("h", partition, topic)
        if self.store.get(key) is not None:
            del self.store[key]

    def _expire(self, state: _PartitionState, topic: str, watermark: int) -> None:
        """Delete this topic's windows older than each size's retention (checked once
        per smallest window of event time, not per event)."""
        step = min(self.config.bucket_sizes_ms)
        if watermark - state.expired_at.get(topic, -step) < step:
            return
        state.expired_at[topic] = watermark
        keys = state.topic_keys.get(topic, set())
        for key in list(keys):
            _, _, size, _, start = decode_key(key)
            if start + size * self.config.retention_buckets < watermark:
                del self.store[key]
                keys.discard(key)


@dataclass
class WindowCounts:
    """Posts and their sentiment mix in one window."""

    posts: int = 0
    sentiment: list[int] = field(default_factory=lambda: [0, 0, 0])

    def add(self, n: int, sentiment: list[int]) -> None:
        self.posts += n
        for i, s in enumerate(sentiment):
            self.sentiment[i] += s


class TrendSnapshot:
    """Every stored window, by (size, topic): ``{start_ms: WindowCounts}``. Built from
    a store's items or from its changelog (last value per key wins)."""

    def __init__(self) -> None:
        self.windows: dict[tuple[int, str], dict[int, WindowCounts]] = {}

    @classmethod
    def from_items(cls, items: Iterable[tuple[bytes, bytes | None]]) -> TrendSnapshot:
        snapshot = cls()
        for key, value in items:
            snapshot.put(key, value)
        return snapshot

    def put(self, key: bytes, value: bytes | None) -> None:
        """One store entry (``value`` None deletes it); non-window keys are ignored."""
        parts = decode_key(key)
        if parts[0] != "b":
            return
        _, _, size, topic, start = parts
        series = self.windows.setdefault((int(size), str(topic)), {})
        if value is None:
            series.pop(int(start), None)
            return
        doc = json.loads(value)
        series[int(start)] = WindowCounts(int(doc["n"]), [int(s) for s in doc["s"]])

    def sizes(self) -> list[int]:
        return sorted({size for size, _ in self.windows})

    def topics(self) -> Iterator[str]:
        return iter(sorted({topic for _, topic in self.windows}))

    def count(self, topic: str, start: int, end: int, size: int) -> WindowCounts:
        """Posts of ``topic`` in ``[start, end)``, summed from windows of ``size``."""
        total = WindowCounts()
        series = self.windows.get((size, topic))
        if not series:
            return total
        first = start + (-start) % size  # the first window starting at or after start
        if (end - first) // size > len(series):  # a long range over a sparse series
            for window_start, counts in series.items():
                if first <= window_start and window_start + size <= end:
                    total.add(counts.posts, counts.sentiment)
            return total
        for window_start in range(first, end - size + 1, size):
            found = series.get(window_start)
            if found is not None:
                total.add(found.posts, found.sentiment)
        return total


def _stored_size(snapshot_sizes: list[int], window_ms: int, step_ms: int) -> int:
    fitting = [s for s in snapshot_sizes if window_ms % s == 0 and step_ms % s == 0]
    if not fitting:
        raise ValueError(
            f"no stored window size divides {format_duration(window_ms)} with step "
            f"{format_duration(step_ms)}; stored: {[format_duration(s) for s in snapshot_sizes]}"
        )
    return max(fitting)


def ewma_baseline(history: list[int], alpha: float) -> tuple[float, float]:
    """Exponentially weighted mean and variance of past window counts, oldest first."""
    if not history:
        return 0.0, 0.0
    mean, var = float(history[0]), 0.0
    for x in history[1:]:
        diff = x - mean
        step = alpha * diff
        mean += step
        var = (1 - alpha) * (var + diff * step)
    return mean, var


def trend_score(count: int, mean: float, var: float) -> float:
    """How far this window's count is above its baseline, in standard deviations; the
    Poisson variance of the count itself (``mean``) keeps quiet topics from scoring high
    on a single post."""
    return (count - mean) / math.sqrt(var + mean + 1.0)


def rank_trends(
    snapshot: TrendSnapshot,
    at_ms: int,
    window_ms: int,
    step_ms: int | None = None,
    top_k: int = 10,
    min_support: int = 5,
    history: int = 24,
    alpha: float = 0.3,
    kinds: Iterable[str] = TOPIC_KINDS,
) -> dict[str, Any]:
    """The top-K trending topics in the window containing ``at_ms`` (tumbling, or
    hopping by ``step_ms``), scored against the previous ``history`` windows."""
    step = step_ms or window_ms
    wanted = set(kinds)
    sizes = snapshot.sizes()
    out: dict[str, Any] = {
        "window": format_duration(window_ms),
        "step": format_duration(step),
        "at_ms": at_ms,
        "topics": [],
        "posts": 0,
    }
    if not sizes:
        out.update(start_ms=None, end_ms=None)
        return out
    size = _stored_size(sizes, window_ms, step)
    end = at_ms - at_ms % step + step
    start = end - window_ms
    out.update(start_ms=start, end_ms=end)
    out["posts"] = snapshot.count(ALL_POSTS, start, end, size).posts
    ranked: list[dict[str, Any]] = []
    for topic in snapshot.topics():
        kind = topic_kind(topic)
        if kind not in wanted or (size, topic) not in snapshot.windows:
            continue
        now = snapshot.count(topic, start, end, size)
        if now.posts < min_support:
            continue
        past = [
            snapshot.count(topic, start - k * window_ms, end - k * window_ms, size).posts
            for k in range(history, 0, -1)
        ]
        mean, var = ewma_baseline(past, alpha)
        ranked.append(
            {
                "topic": topic,
                "kind": kind,
                "posts": now.posts,
                "baseline": round(mean, 3),
                "score": round(trend_score(now.posts, mean, var), 3),
                "sentiment": {
                    s: round(n / now.posts, 3)
                    for s, n in zip(SENTIMENTS, now.sentiment, strict=True)
                },
            }
        )
    ranked.sort(key=lambda t: (-t["score"], -t["posts"], t["topic"]))
    out["topics"] = ranked[:top_k]
    return out


def volume_series(
    snapshot: TrendSnapshot, topic: str, start_ms: int, end_ms: int, size: int
) -> list[tuple[int, WindowCounts]]:
    """A topic's counts per stored window of ``size`` over ``[start_ms, end_ms)``, zeros
    included (for plots)."""
    series = snapshot.windows.get((size, topic), {})
    first = start_ms - start_ms % size
    return [(t, series.get(t, WindowCounts())) for t in range(first, end_ms, size)]


def snapshot_items(store: Mapping[bytes, bytes]) -> Iterator[tuple[bytes, bytes]]:
    """A store's window entries (for :meth:`TrendSnapshot.from_items`)."""
    for key in list(store.keys()):
        value = store.get(key)
        if value is not None and key[:4] == b'["b"':
            yield key, value
