"""Trend counting, scoring, heavy hitters and emerging topics, without a broker."""

from __future__ import annotations

import json
import random
import tracemalloc

import numpy as np
import pytest

from streams.stages.heavy_hitters import SpaceSaving
from streams.stages.topics import EmergingConfig, EmergingTopics, key_phrases, post_terms
from streams.stages.trends import (
    ALL_POSTS,
    StagedStore,
    TrendConfig,
    TrendCounter,
    TrendEvent,
    TrendSnapshot,
    ewma_baseline,
    extract_hashtags,
    format_duration,
    parse_duration,
    rank_trends,
    snapshot_items,
    topic_kind,
    trend_events,
)

HOUR = 3_600_000
T0 = 1_760_000_400_000 - 1_760_000_400_000 % (24 * HOUR)


def test_space_saving_memory_is_bounded_under_a_million_distinct_hashtags() -> None:
    sketch: SpaceSaving[str] = SpaceSaving(1000)
    rng = random.Random(3)
    heavy = {f"#heavy{i}": 0 for i in range(5)}
    tracemalloc.start()
    for i in range(1_000_000):
        if rng.random() < 0.02:  # 2% of the stream: five heavy hashtags among 1M unique ones
            tag = f"#heavy{rng.randrange(5)}"
            heavy[tag] += 1
        else:
            tag = f"#tag{i}"
        sketch.offer(tag)
        assert len(sketch) <= 1000
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(sketch._heap) <= 4 * 1000 + 16
    assert peak < 2_000_000, f"peak {peak} bytes"  # ~1,000 counters, not 1,000,000
    top = dict(sketch.top(5))
    assert set(top) == set(heavy)
    for tag, true in heavy.items():
        assert sketch.guaranteed(tag) <= true <= top[tag]


def test_space_saving_restore_continues_where_it_left_off() -> None:
    a: SpaceSaving[str] = SpaceSaving(3)
    for tag in "aabbbcd":
        a.offer(tag)
    b: SpaceSaving[str] = SpaceSaving(3)
    b.restore((k, c.count, c.error) for k, c in a.counters.items())
    assert a.offer("e") == b.offer("e")
    assert {k: c.count for k, c in a.counters.items()} == {
        k: c.count for k, c in b.counters.items()
    }


def test_hashtags_and_durations() -> None:
    assert extract_hashtags("Go #Olympics! #olympics #2024 #ＴＥＳＴ a#b &#39;") == [
        "#olympics",
        "#test",
    ]
    assert parse_duration("5m") == 300_000 and parse_duration("90") == 90_000
    assert format_duration(86_400_000) == "1d" and format_duration(1500) == "1500ms"
    with pytest.raises(ValueError, match="duration"):
        parse_duration("five minutes")


def event(
    topic: str, minute: float, offset: int, sentiment: str = "neutral", src: int = 0
) -> TrendEvent:
    return TrendEvent(topic, T0 + int(minute * 60_000), sentiment, f"p{src}-{offset}", src, offset)


def test_counter_counts_once_per_post_and_refuses_late_posts() -> None:
    store: dict[bytes, bytes] = {}
    counter = TrendCounter(store, TrendConfig(lateness_ms=10 * 60_000))
    assert counter.apply(event("#a", 0, 1, "positive"), 0).outcome == "counted"
    assert counter.apply(event("#a", 3, 2, "negative"), 0).outcome == "counted"
    # redelivered after a crash: the window remembers the source offset
    assert counter.apply(event("#a", 3, 2, "negative"), 0).outcome == "duplicate"
    assert counter.apply(event("#a", 60, 3), 0).outcome == "counted"
    # out of order within the lateness bound still counts; beyond it does not
    assert counter.apply(event("#a", 52, 4), 0).outcome == "counted"
    assert counter.apply(event("#a", 40, 5), 0).outcome == "late"
    # another source partition has its own offsets and watermark input
    assert counter.apply(event("#a", 55, 2, src=1), 0).outcome == "counted"
    snapshot = TrendSnapshot.from_items(snapshot_items(store))
    hour = snapshot.count("#a", T0, T0 + HOUR, HOUR)
    assert hour.posts == 4 and hour.sentiment == [1, 2, 1]
    assert snapshot.count("#a", T0, T0 + 5 * 60_000, 300_000).posts == 2


def test_counter_rebuilds_its_indexes_from_the_store_after_a_restart() -> None:
    store: dict[bytes, bytes] = {}
    config = TrendConfig(hashtag_capacity=2)
    first = TrendCounter(store, config)
    for i, tag in enumerate(["#a", "#a", "#b"]):
        first.apply(event(tag, i, i), 0)
    restarted = TrendCounter(store, config)  # a new process with the restored table
    assert restarted.apply(event("#b", 2, 2), 0).outcome == "duplicate"
    result = restarted.apply(event("#c", 4, 3), 0)
    assert result.evicted == "#b"  # the smallest counter goes, with its windows
    assert not [k for k in store if b'"#b"' in k]
    assert restarted.tracked_hashtags() == 2


def test_a_redelivered_event_completes_windows_a_crash_left_unsaved() -> None:
    store: dict[bytes, bytes] = {}
    TrendCounter(store, TrendConfig()).apply(event("#a", 0, 7), 0)
    day_key = next(k for k in store if k.startswith(b'["b",0,86400000'))
    del store[day_key]  # the crash lost this window's changelog record
    assert TrendCounter(store, TrendConfig()).apply(event("#a", 0, 7), 0).outcome == "counted"
    snapshot = TrendSnapshot.from_items(snapshot_items(store))
    assert snapshot.count("#a", T0, T0 + 24 * HOUR, 24 * HOUR).posts == 1
    assert snapshot.count("#a", T0, T0 + 300_000, 300_000).posts == 1


def test_staged_batches_leave_the_same_table_as_event_by_event() -> None:
    events = [
        event(f"#t{i % 7}", i * 0.7, i, "positive" if i % 3 else "negative") for i in range(400)
    ]

    class CountingDict(dict[bytes, bytes]):
        writes = 0

        def __setitem__(self, key: bytes, value: bytes) -> None:
            CountingDict.writes += 1
            super().__setitem__(key, value)

    direct = CountingDict()
    counter = TrendCounter(direct, TrendConfig(hashtag_capacity=4))
    for e in events:
        counter.apply(e, 0)
        counter.checkpoint(0)
    table: dict[bytes, bytes] = {}
    staged = StagedStore(table)
    batched = TrendCounter(staged, TrendConfig(hashtag_capacity=4))
    writes = 0
    for start in range(0, len(events), 50):
        for e in events[start : start + 50]:
            batched.apply(e, 0)
        batched.checkpoint(0)
        for key, value in staged.drain():  # what the agent writes to the table's changelog
            writes += 1
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    assert table == direct
    # one record per touched key per batch instead of one per write
    assert writes < CountingDict.writes / 2, (writes, CountingDict.writes)


def run_batches(
    table: dict[bytes, bytes], batches: list[list[TrendEvent]], cut: int | None = None
) -> list[str]:
    """Count ``batches`` as the agent does (staged, checkpoint, drain into ``table``);
    with ``cut``, the process dies after that many changelog writes of the last batch.
    Returns the outcomes."""
    staged = StagedStore(table)
    counter = TrendCounter(
        staged, TrendConfig(bucket_sizes_ms=(300_000, HOUR), lateness_ms=600_000)
    )
    outcomes = []
    for i, batch in enumerate(batches):
        outcomes += [counter.apply(e, 0).outcome for e in batch]
        counter.checkpoint(0)
        writes = staged.drain()
        if cut is not None and i == len(batches) - 1:
            writes = writes[:cut]
        for key, value in writes:
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    return outcomes


def test_a_crash_anywhere_in_a_batch_changes_no_count_after_the_restart() -> None:
    # out of order within the 10-minute lateness bound: minutes 7 and 3 come after 12
    first = [event("#a", m, i) for i, m in enumerate([0, 2, 5])]
    second = [event("#a", m, 3 + i) for i, m in enumerate([12, 7, 3, 25, 16, 40, 33])]
    whole: dict[bytes, bytes] = {}
    assert "late" not in run_batches(whole, [first, second])
    for cut in range(0, 11):  # the second batch writes 7 + 1 windows, a counter, a watermark
        table: dict[bytes, bytes] = {}
        run_batches(table, [first, second], cut=cut)
        # a restarted worker gets the second batch again (its offsets were not committed)
        outcomes = run_batches(table, [second])
        assert "late" not in outcomes, (cut, outcomes)
        assert table == whole, cut


def test_hashtag_windows_stay_bounded_in_the_store() -> None:
    store: dict[bytes, bytes] = {}
    counter = TrendCounter(store, TrendConfig(hashtag_capacity=50))
    for i in range(5000):
        counter.apply(event(f"#t{i}", i / 100, i), 0)
    hashtag_keys = [k for k in store if b'"#t' in k]
    assert len(hashtag_keys) <= 50 * (3 + 1)  # three window sizes and a counter each


def test_expired_windows_are_deleted() -> None:
    store: dict[bytes, bytes] = {}
    counter = TrendCounter(store, TrendConfig(bucket_sizes_ms=(HOUR,), retention_buckets=2))
    for i in range(6):
        counter.apply(event("#a", i * 60, i), 0)
    starts = sorted(json.loads(k)[4] for k in store if k.startswith(b'["b"'))
    assert starts[0] >= T0 + 2 * HOUR and len(starts) <= 4


def burst_snapshot() -> TrendSnapshot:
    posts = []
    for hour in range(48):
        for k in range(6):  # a steady topic: six posts an hour
            posts.append((T0 + hour * HOUR + k * 600_000, "neutral", ["#steady"]))
        if hour == 30:  # the burst: 40 posts in one hour, mostly negative
            for k in range(40):
                mood = "negative" if k % 4 else "positive"
                posts.append((T0 + hour * HOUR + k * 60_000, mood, ["#storm", "#steady"]))
    store: dict[bytes, bytes] = {}
    counter = TrendCounter(store, TrendConfig())
    for offset, (ts, mood, topics) in enumerate(sorted(posts)):
        for e in trend_events(f"p{offset}", ts, mood, topics, 0, offset):
            assert counter.apply(e, 0).outcome == "counted"
    return TrendSnapshot.from_items(snapshot_items(store))


def test_a_burst_ranks_first_during_it_and_is_absent_before() -> None:
    snapshot = burst_snapshot()
    during = rank_trends(snapshot, T0 + 30 * HOUR + 1, HOUR)
    assert during["topics"][0]["topic"] == "#storm"
    assert during["topics"][0]["posts"] == 40
    assert during["topics"][0]["sentiment"]["negative"] == 0.75
    assert during["posts"] == 46
    before = rank_trends(snapshot, T0 + 29 * HOUR + 1, HOUR)
    assert "#storm" not in [t["topic"] for t in before["topics"]]
    steady = rank_trends(snapshot, T0 + 20 * HOUR, HOUR)["topics"]
    assert steady[0]["topic"] == "#steady" and abs(steady[0]["score"]) < 1.0
    # a hopping window (2 h every hour) sums the stored one-hour windows
    hop = rank_trends(snapshot, T0 + 31 * HOUR + 1, 2 * HOUR, HOUR, min_support=1)
    storm = next(t for t in hop["topics"] if t["topic"] == "#storm")
    assert storm["posts"] == 40 and hop["start_ms"] == T0 + 30 * HOUR
    assert ALL_POSTS not in [t["topic"] for t in during["topics"]]
    with pytest.raises(ValueError, match="divides"):
        rank_trends(snapshot, T0, 7 * 60_000)


def test_ewma_baseline() -> None:
    assert ewma_baseline([], 0.3) == (0.0, 0.0)
    mean, var = ewma_baseline([10] * 20, 0.3)
    assert mean == pytest.approx(10) and var == pytest.approx(0)
    mean, var = ewma_baseline([0, 10] * 20, 0.5)
    assert 3 < mean < 7 and var > 10


def test_trend_events_round_trip_and_reject_malformed_records() -> None:
    events = trend_events("p1", T0, "positive", ["category:sports", "#a", "#a"], 2, 17)
    assert [e.topic for e in events] == [ALL_POSTS, "category:sports", "#a"]
    assert TrendEvent.from_json(events[2].to_json()) == events[2]
    with pytest.raises(ValueError, match="malformed"):
        TrendEvent.from_json(b'{"topic": "#a"}')
    with pytest.raises(ValueError, match="sentiment"):
        TrendEvent.from_json(events[0].to_json().replace(b"positive", b"happy"))


def test_emerging_topic_is_found_and_named_by_its_typical_terms() -> None:
    rng = np.random.default_rng(0)
    dim = 64
    centres = {name: rng.normal(size=dim) for name in ("volcano", "a", "b", "c")}
    vocab = {
        "volcano": ["volcano", "lava", "eruption", "ash"],
        "a": ["market", "prices", "shares"],
        "b": ["match", "goal", "league"],
        "c": ["recipe", "dinner", "pasta"],
    }
    emerging = EmergingTopics(EmergingConfig(similarity=0.8, min_support=5))
    names = []
    for i in range(200):
        subject = ["a", "b", "c"][i % 3] if i < 120 or i % 2 else "volcano"
        vec = centres[subject] + rng.normal(scale=0.15, size=dim)
        words = [*rng.choice(vocab[subject], size=2, replace=False), "people", "news"]
        names.append((subject, emerging.assign(vec, words)))
    volcano = {n for s, n in names if s == "volcano" and n}
    assert len(volcano) == 1
    name = volcano.pop()
    assert name.startswith("emerging:")
    assert set(name.removeprefix("emerging:").split()) <= {"volcano", "lava", "eruption", "ash"}
    assert len(emerging.clusters) == 4


def test_key_phrases() -> None:
    assert key_phrases("The total solar eclipse right now is unbelievable! #Eclipse") == [
        "phrase:total solar eclipse"
    ]
    assert key_phrases("Volcano update: ash cloud drifting east, lava flowing @bob") == [
        "phrase:volcano update",
        "phrase:ash cloud drifting",
        "phrase:lava flowing",
    ]
    assert key_phrases("Sunset over the beach") == []
    assert topic_kind("phrase:ash cloud") == "phrase"


def test_post_terms() -> None:
    assert post_terms("The LAVA is flowing!! https://x.y/z @bob #VolcanoWatch") == [
        "lava",
        "flowing",
        "volcano",
        "watch",
        "volcanowatch",
    ]


def test_emerging_clusters_are_evicted_without_comparing_centroids() -> None:
    # with more distinct posts than max_clusters, eviction must pick a cluster that is not
    # the first: list.remove compared dataclasses holding numpy arrays and raised
    emerging = EmergingTopics(EmergingConfig(max_clusters=4, similarity=0.99, min_support=2))
    rng = np.random.default_rng(2)
    for i in range(40):
        emerging.assign(rng.normal(size=16).astype(np.float32), [f"w{i}", "shared"])
        emerging.clusters[0].last_seen = 10**9  # never the oldest: the victim lies further on
    assert len(emerging.clusters) == 4


def test_emerging_posts_join_the_cluster_whose_current_centroid_is_most_similar() -> None:
    """The kept centroid matrix and norms answer as comparing the post with every
    cluster's centroid as it is now would, through joins, new clusters and evictions."""
    emerging = EmergingTopics(EmergingConfig(max_clusters=8, similarity=0.5, min_support=3))
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(12, 32))
    joins = starts = 0
    for _ in range(600):
        vec = centres[rng.integers(12)] + rng.normal(scale=0.5, size=32)
        before = [(c.posts, c.centroid.copy()) for c in emerging.clusters]
        sims = [float(c @ vec / np.linalg.norm(c) / np.linalg.norm(vec)) for _, c in before]
        emerging.assign(vec, ["word"])
        grown = [
            k for k, (posts, _) in enumerate(before) if emerging.clusters[k].posts == posts + 1
        ]
        if sims and max(sims) >= 0.5:
            assert grown == [int(np.argmax(sims))]
            joins += 1
        else:
            assert not grown
            starts += 1
    assert joins > 100 and starts > 20 and len(emerging.clusters) == 8


def test_a_post_whose_derived_topics_raise_still_counts_category_and_hashtags() -> None:
    from streams.stages.topics import TopicExtractor
    from tests.unit.test_outputs_and_fusion import _analysed

    class Exploding(EmergingTopics):
        def assign(self, embedding: np.ndarray, terms: list[str]) -> str | None:
            raise RuntimeError("boom")

    extractor = TopicExtractor(Exploding())
    posts = [_analysed(i) for i in range(3)]
    for p in posts:
        p.decoded.validated.post.__dict__["text"] = "great match #worldcup tonight"
        p.analysis = p.analysis.model_copy(update={"category_probs": {"food": 0.2}})
    result = extractor(posts)
    assert result.errors == 3
    topics = sorted({e.topic for e in result.events})
    assert "#worldcup" in topics and any(t.startswith("category:") for t in topics)
    assert len({e.post_id for e in result.events}) == 3


def test_tracker_finds_offsets_its_consumer_skipped_and_remembers_across_restarts() -> None:
    from prometheus_client import CollectorRegistry

    from exporters.prometheus import PipelineMetrics
    from streams.trending import TrendTracker

    table: dict[bytes, bytes] = {}
    staged = StagedStore(table)
    metrics = PipelineMetrics(CollectorRegistry())
    tracker = TrendTracker(staged, TrendConfig(), metrics, top_k=5)
    assert tracker.gap_before(0, 40) is None  # nothing stored: where it starts is unknown
    assert tracker.gap_before(0, 41) is None
    assert tracker.gap_before(1, 7) is None
    assert tracker.gap_before(0, 44) == (42, 44)  # 42 and 43 never came
    assert tracker.gap_before(0, 43) is None  # a redelivery is not a gap
    tracker.end_batch(0)
    tracker.end_batch(1)
    table.update((k, v) for k, v in staged.drain() if v is not None)
    assert json.loads(table[b'["o",0]']) == {"next": 45}
    # a restarted worker (the table recovered from its changelog) expects 45 and 8
    restarted = TrendTracker(StagedStore(table), TrendConfig(), metrics, top_k=5)
    assert restarted.gap_before(0, 45) is None
    assert restarted.gap_before(1, 10) == (8, 10)
    restarted.reset()  # a rebalance: read again from the table
    assert restarted.gap_before(0, 47) == (45, 47)
