"""Trends on the hot path: what the topics stage adds to a batch, how fast the trends
agent counts compared with the pipeline that feeds it, and the memory of space-saving
hashtag counting against an exact counter. Ratios within one run."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections import Counter
from typing import Any

import numpy as np

from encoders.serving import ServedBundle
from streams.pipeline import PostPipeline
from streams.records import Envelope
from streams.samples import trend_stream
from streams.settings import Settings
from streams.stages.heavy_hitters import SpaceSaving
from streams.stages.topics import EmergingConfig, EmergingTopics, post_terms
from streams.stages.trends import StagedStore, TrendConfig, TrendCounter, trend_events


def bench_topics_stage(bundle: ServedBundle, n: int) -> dict[str, Any]:
    """One pipeline batch of ``n`` text posts: the topics stage (categories, hashtags,
    emerging-topic clustering) against the whole batch; then the trends agent's
    counting of the batch's events against an exact in-memory count (no deduplication,
    no store) and against the pipeline's own posts/s."""
    stream = trend_stream(days=1, every_min=1440 / n, burst_posts=0, emerging_posts=0)
    envelopes = [
        Envelope(value=p.value, partition=0, offset=i) for i, p in enumerate(stream.posts[:n])
    ]
    pipeline = PostPipeline(Settings(bundle_path=bundle.path, fetch_enabled=False), bundle)
    pipeline.process(envelopes[:8])  # warm-up
    start = time.perf_counter()
    outcome = pipeline.process(envelopes)
    batch_s = time.perf_counter() - start
    topics_s = outcome.timer.stages["topics"]
    events = outcome.trend_events

    counter = TrendCounter({}, TrendConfig())
    start = time.perf_counter()
    for event in events:
        counter.apply(event, 0)
    counting_s = time.perf_counter() - start

    exact: Counter[tuple[int, str, int]] = Counter()
    sizes = TrendConfig().bucket_sizes_ms
    start = time.perf_counter()
    for event in events:
        for size in sizes:
            exact[(size, event.topic, event.created_at_ms - event.created_at_ms % size)] += 1
    exact_s = time.perf_counter() - start
    return {
        "posts": len(outcome.analysed),
        "trend_events": len(events),
        "batch_s": batch_s,
        "topics_stage_s": topics_s,
        "topics_share_of_batch": topics_s / batch_s,
        "counting_events_per_s": len(events) / counting_s,
        "counting_vs_exact_in_memory": counting_s / max(exact_s, 1e-9),
        "counting_posts_per_s_vs_pipeline": (len(outcome.analysed) / counting_s)
        / (len(outcome.analysed) / batch_s),
    }


def bench_hashtag_memory(distinct: int = 200_000, capacity: int = 1000) -> dict[str, Any]:
    """Peak memory of counting ``distinct`` hashtags: space-saving vs an exact Counter."""

    def peak(count: Any) -> int:
        tracemalloc.start()
        count()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    def sketch() -> None:
        s: SpaceSaving[str] = SpaceSaving(capacity)
        for i in range(distinct):
            s.offer(f"#tag{i}")

    def exact() -> None:
        c: Counter[str] = Counter()
        for i in range(distinct):
            c[f"#tag{i}"] += 1

    sketch_bytes, exact_bytes = peak(sketch), peak(exact)
    return {
        "distinct_hashtags": distinct,
        "capacity": capacity,
        "space_saving_peak_bytes": sketch_bytes,
        "exact_counter_peak_bytes": exact_bytes,
        "memory_ratio": sketch_bytes / exact_bytes,
    }


def bench_gap_tracking(posts: int = 20_000, rounds: int = 3) -> dict[str, Any]:
    """The trends agent's per-record gap check (``TrendTracker.gap_before``, issue 15)
    against the same counting without it: one variable changed, same events, best of
    ``rounds`` each, alternating."""
    from prometheus_client import CollectorRegistry

    from exporters.prometheus import PipelineMetrics
    from streams.trending import TrendTracker

    records = [
        e.to_json()
        for i in range(posts)
        for e in trend_events(
            f"p{i}", 1_760_000_000_000 + i * 1000, "neutral", [f"category:c{i % 9}"], i % 4, i
        )
    ]
    metrics = PipelineMetrics(CollectorRegistry())

    def run(check_gaps: bool) -> float:
        tracker = TrendTracker(StagedStore({}), TrendConfig(), metrics, top_k=10)
        start = time.perf_counter()
        for offset, raw in enumerate(records):
            if check_gaps and tracker.gap_before(0, offset) is not None:
                raise AssertionError("a contiguous stream has no gaps")
            tracker.handle(raw, 0)
        return time.perf_counter() - start

    plain, checked = [], []
    for _ in range(rounds):
        plain.append(run(False))
        checked.append(run(True))
    return {
        "records": len(records),
        "records_per_s_with_gap_check": len(records) / min(checked),
        "gap_check_time_ratio": min(checked) / min(plain),
    }


class RestackingEmergingTopics(EmergingTopics):
    """Emerging topics the way before issue 16: every post stacks all the clusters'
    centroids and computes their norms again."""

    def _similarities(self, vector: np.ndarray) -> np.ndarray:
        centroids = np.stack([c.centroid for c in self.clusters])
        return np.asarray(centroids @ vector / np.maximum(np.linalg.norm(centroids, axis=1), 1e-12))


def bench_emerging_topics(bundle: ServedBundle, posts: int = 3000, rounds: int = 3) -> dict:
    """Emerging-topic clustering of real posts (the packaged election tweets' text
    embeddings, laid into the bundle's untrained fused vector as the worker does for a
    text-only post), with the kept centroid matrix against restacking the centroids
    for every post: one variable, same posts and topics, best of ``rounds`` each."""
    from encoders.training.corpora import load_corpus

    corpus = load_corpus("election-tweets-2016")[:posts]
    texts = [str(p["text"]) for p in corpus]
    terms = [post_terms(t) for t in texts]
    text = bundle.text.encode(texts)
    fused = np.zeros((len(texts), bundle.manifest.fusion.dim), dtype=np.float32)
    fused[:, : text.shape[1]] = text
    out: dict[str, Any] = {"posts": len(texts), "dim": int(fused.shape[1])}
    for name, embeddings in (("text_dim", text), ("fused_dim", fused)):
        times: dict[type[EmergingTopics], list[float]] = {
            EmergingTopics: [],
            RestackingEmergingTopics: [],
        }
        names: dict[type[EmergingTopics], list[str | None]] = {}
        for _ in range(rounds):
            for kind, took in times.items():
                emerging = kind(EmergingConfig())
                start = time.perf_counter()
                names[kind] = [
                    emerging.assign(e, t) for e, t in zip(embeddings, terms, strict=True)
                ]
                took.append(time.perf_counter() - start)
        if names[EmergingTopics] != names[RestackingEmergingTopics]:
            raise AssertionError("the two ways named different emerging topics")
        kept, restacked = min(times[EmergingTopics]), min(times[RestackingEmergingTopics])
        out[name] = {
            "posts_per_s": len(texts) / kept,
            "time_vs_restacking": kept / restacked,
            "topics_named": len({n for n in names[EmergingTopics] if n}),
        }
    return out


if __name__ == "__main__":
    from pathlib import Path

    served = ServedBundle(Path("models/default"))
    print(
        json.dumps(
            {
                "topics": bench_topics_stage(served, 128),
                "memory": bench_hashtag_memory(),
                "emerging_topics": bench_emerging_topics(served),
            },
            indent=2,
        )
    )
