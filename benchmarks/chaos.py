"""The chaos suite: a replay of real posts (election tweets, some with pictures, some
with video or audio, some broken) through the real durable broker, two posts workers and
a trends worker, while faults are injected — workers SIGKILLed, a worker added and
removed (rebalances), the broker restarted, Milvus stopped — and an independent plain
kafka-python consumer checks the contract: every produced message has exactly one kind
of outcome, Milvus holds exactly the distinct valid posts, and the trend counts equal
those a clean replay gives.

``python -m benchmarks.chaos --posts 10000`` (``make chaos``) runs the full form and
writes ``benchmarks/results/chaos.json``. ``run_chaos(1200, ..., milvus_outage_s=15)`` is the short form.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from encoders.training.corpora import load_corpus
from exporters.milvus import PostIndex, connect
from streams.broker import LocalBroker, ensure_topics, free_port
from streams.records import Analysis, DeadLetter
from streams.samples import av_posts, broken_posts, themed_image_png
from streams.settings import LOCAL_BROKER_PROFILE, Settings
from streams.stages.trends import (
    ALL_POSTS,
    TrendEvent,
    TrendSnapshot,
    extract_hashtags,
    topic_kind,
)
from streams.topics import all_topic_names, trends_changelog_topic
from streams.trending import ChangelogTrendReader
from streams.worker_process import MilvusLiteServer, WorkerProcess, worker_env

TREND_ENV = {
    "trend_windows": "1d",
    "trend_lateness": "3650d",  # replayed history: nothing counts as late
    "trend_hashtag_capacity": "100000",  # every hashtag tracked: counts are exact
    "trend_refresh_s": "2",
}


@dataclass
class ChaosPost:
    """A produced message and what must become of it."""

    value: bytes
    post_id: str | None
    valid: bool
    text: str = ""
    partition: int = -1
    offset: int = -1


def chaos_posts(count: int, seed: int = 9) -> list[ChaosPost]:
    """Real election tweets in time order: 10% with a picture, 2% video/audio posts, 3%
    broken records."""
    rng = random.Random(seed)
    tweets = sorted(load_corpus("election-tweets-2016"), key=lambda t: str(t["created_at"]))
    n_av, n_broken = max(2, count // 50), max(2, count * 3 // 100)
    n_tweets = count - n_av - n_broken
    out: list[ChaosPost] = []
    for i in range(n_tweets):
        tweet = {**tweets[i % len(tweets)], "post_id": f"chaos-{i:06d}"}
        if rng.random() < 0.1:
            png = themed_image_png(rng.choice(["sports", "food", "news"]), i)
            tweet["media"] = [{"kind": "image", "data_b64": base64.b64encode(png).decode()}]
        out.append(ChaosPost(json.dumps(tweet).encode(), tweet["post_id"], True, tweet["text"]))
    for sample in av_posts(n_av, seed=seed):
        # in the tweets' months: a post from years later would move the event-time
        # watermark past the retention of the tweets' windows, which are then dropped
        doc = json.loads(sample.value)
        doc["created_at"] = tweets[rng.randrange(min(n_tweets, len(tweets)))]["created_at"]
        out.append(ChaosPost(json.dumps(doc).encode(), sample.post_id, True, doc["text"]))
    for sample in broken_posts(n_broken, seed=seed):
        out.append(ChaosPost(sample.value, sample.post_id, False))
    # the extra posts go in at random places, the tweets keep their order
    tail = out[n_tweets:]
    head = out[:n_tweets]
    for post in tail:
        head.insert(rng.randrange(len(head) + 1), post)
    return head


def _read_budget_s(records: int) -> float:
    """How long reading ``records`` back from the durable broker may take: 120 s, or
    50 records/s (it reads several hundred a second, one S3 object per record)."""
    return max(120.0, records / 50)


@dataclass
class Fault:
    """One fault injected, and what it cost."""

    name: str
    at_outcomes: int
    seconds: float = 0.0
    note: str = ""
    # seconds into the run when it was injected
    at_s: float = 0.0


@dataclass
class OutcomeWatcher:
    """The independent consumer: analyses by post id, dead letters by source position,
    every record counted (redeliveries after a kill show as extra records)."""

    consumer: KafkaConsumer
    analyses_topic: str
    analyses: dict[str, Analysis] = field(default_factory=dict)
    # every category a post was given, over its redeliveries (more than one: the model
    # is not deterministic across batches, and trends would count the post twice)
    categories: dict[str, set[str]] = field(default_factory=dict)
    dead: dict[tuple[int | None, int | None], DeadLetter] = field(default_factory=dict)
    # when each post's first analysis reached the topic (epoch s, the record's timestamp)
    analysed_at: dict[str, float] = field(default_factory=dict)
    records: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def poll(self) -> None:
        for tp, batch in self.consumer.poll(timeout_ms=300).items():
            with self.lock:
                for record in batch:
                    self.records += 1
                    if tp.topic == self.analyses_topic:
                        a = Analysis.model_validate_json(record.value)
                        self.analyses[a.post_id] = a
                        self.analysed_at.setdefault(a.post_id, record.timestamp / 1000)
                        self.categories.setdefault(a.post_id, set()).add(a.category or "")
                    else:
                        d = DeadLetter.model_validate_json(record.value)
                        self.dead[(d.source_partition, d.source_offset)] = d

    def outcomes(self) -> int:
        return len(self.analyses) + len(self.dead)


class ChaosRun:
    """The processes of one run and the faults applied to them."""

    def __init__(self, work: Path, bundle: Path, milvus_outage_s: float) -> None:
        self.work = work
        self.milvus_outage_s = milvus_outage_s
        self.broker = LocalBroker(data_dir=work / "broker", log_file=work / "broker.log")
        self.broker.start()
        self.milvus = MilvusLiteServer(work / "milvus", free_port(), work / "milvus.log").start()
        self.settings = Settings(
            broker_url=self.broker.url,
            bundle_path=bundle,
            milvus_uri=self.milvus.uri,
            data_dir=work / "data",
            app_id="chaos",
            topic_posts="chaos.posts",
            topic_dlq="chaos.posts.dlq",
            topic_analyses="chaos.post-analyses",
            topic_trend_events="chaos.trend-events",
            **{k: v for k, v in TREND_ENV.items() if k != "trend_refresh_s"},  # type: ignore[arg-type]
        )
        ensure_topics([self.broker.bootstrap], all_topic_names(self.settings), 4)
        self.workers: dict[str, WorkerProcess] = {}
        self.faults: list[Fault] = []
        self.started = 0

    def start_worker(self, name: str, role: str = "posts") -> WorkerProcess:
        self.started += 1
        env = worker_env(
            self.settings,
            free_port(),
            worker_role=role,
            max_batch="16",
            # a Milvus Lite server: rows it acknowledged survive the Milvus fault only flushed
            milvus_flush_writes="true",
            **TREND_ENV,
        )
        worker = WorkerProcess(env, self.work / "logs" / f"{name}-{self.started}.log").start()
        self.workers[name] = worker
        return worker

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop(timeout=60)
        self.milvus.stop()
        self.broker.stop()


def _produce(run: ChaosRun, posts: list[ChaosPost]) -> None:
    # patient: the durable broker under two posts workers, a trends worker and Milvus
    # takes more than kafka-python's default 120 s to take a chunk of 1,400 posts one
    # record per batch, and a resend after an expiry could write a post twice
    producer = KafkaProducer(
        bootstrap_servers=[run.broker.bootstrap],
        **{
            **LOCAL_BROKER_PROFILE.kafka_producer,
            "max_request_size": 16 * 1024 * 1024,
            "delivery_timeout_ms": 1_800_000,
        },
    )
    try:
        futures = [(p, producer.send(run.settings.topic_posts, value=p.value)) for p in posts]
        producer.flush()
        for post, future in futures:
            meta = future.get(timeout=1800)
            post.partition, post.offset = meta.partition, meta.offset
    finally:
        producer.close()


def _faults(run: ChaosRun) -> list[tuple[str, Callable[[], str]]]:
    def kill(name: str) -> Callable[[], str]:
        def act() -> str:
            run.workers[name].kill()
            run.start_worker(name, "trends" if name == "trends" else "posts")
            return f"SIGKILL {name}, a new one started"

        return act

    def add() -> str:
        run.start_worker("c")
        return "third posts worker joined (rebalance)"

    def remove() -> str:
        code = run.workers.pop("c").stop(timeout=60)
        return f"third posts worker stopped with SIGTERM (exit {code}; rebalance)"

    def broker() -> str:
        run.broker.restart(down_s=3)
        return "durable broker stopped for 3 s and restarted"

    def milvus() -> str:
        run.milvus.stop()
        time.sleep(run.milvus_outage_s)
        run.milvus.start()
        return f"Milvus stopped for {run.milvus_outage_s:.0f} s"

    return [
        ("kill posts worker a", kill("a")),
        ("add a posts worker", add),
        ("restart the broker", broker),
        ("stop Milvus", milvus),
        ("kill posts worker b", kill("b")),
        ("remove a posts worker", remove),
        ("kill the trends worker", kill("trends")),
    ]


def _trend_totals(snapshot: TrendSnapshot) -> Counter[str]:
    totals: Counter[str] = Counter()
    size = max(snapshot.sizes(), default=0)
    for topic in snapshot.topics():
        if topic_kind(topic) in ("all", "category", "hashtag"):
            windows = snapshot.windows.get((size, topic), {})
            totals[topic] += sum(c.posts for c in windows.values())
    return totals


def _post_topics(post: ChaosPost, analysis: Analysis) -> list[str]:
    """The topics a clean replay counts an analysed post in: the volume pseudo-topic,
    its category, each distinct hashtag once."""
    category = [f"category:{analysis.category}"] if analysis.category else []
    return [ALL_POSTS, *category, *extract_hashtags(post.text)]


def _expected_totals(posts: list[ChaosPost], analyses: dict[str, Analysis]) -> Counter[str]:
    """What a clean replay counts, per topic."""
    totals: Counter[str] = Counter()
    for post in posts:
        analysis = analyses.get(post.post_id or "")
        if analysis is not None:
            totals.update(_post_topics(post, analysis))
    return totals


def _expected_posts(
    posts: list[ChaosPost], analyses: dict[str, Analysis], topics: set[str]
) -> dict[str, set[str]]:
    """For each of ``topics``, the post ids a clean replay counts in it."""
    out: dict[str, set[str]] = {t: set() for t in topics}
    for post in posts:
        analysis = analyses.get(post.post_id or "")
        if analysis is None or post.post_id is None:
            continue
        for topic in _post_topics(post, analysis):
            if topic in out:
                out[topic].add(post.post_id)
    return out


def _event_posts(bootstrap: str, topic_name: str, topics: set[str]) -> dict[str, set[str]]:
    """For each of ``topics``, the post ids with a trend event in the trend-events topic
    (read end to end with a plain consumer)."""
    out: dict[str, set[str]] = {t: set() for t in topics}
    consumer = KafkaConsumer(
        bootstrap_servers=[bootstrap],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **LOCAL_BROKER_PROFILE.kafka_consumer,
    )
    try:
        parts = [
            TopicPartition(topic_name, p) for p in consumer.partitions_for_topic(topic_name) or ()
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        budget_s = _read_budget_s(sum(end.values()))
        deadline = time.monotonic() + budget_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic_name} not read to its end in {budget_s:.0f} s")
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    event = TrendEvent.from_json(record.value)
                    if event.topic in out:
                        out[event.topic].add(event.post_id)
    finally:
        consumer.close()
    return out


def diagnose_trends(
    run: ChaosRun, posts: list[ChaosPost], watcher: OutcomeWatcher, differing: set[str]
) -> dict[str, Any]:
    """Why trend counts differ: per differing topic, posts that should count and have no
    trend event (lost upstream of the trends worker), posts with an event that should not
    count, and posts whose redeliveries were given different categories."""
    if not differing:
        return {}
    expected = _expected_posts(posts, watcher.analyses, differing)
    try:
        events = _event_posts(run.broker.bootstrap, run.settings.topic_trend_events, differing)
    except (KafkaError, TimeoutError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    flipped = sorted(p for p, cats in watcher.categories.items() if len(cats) > 1)
    return {
        "posts_given_two_categories": len(flipped),
        "examples_given_two_categories": flipped[:5],
        "topics": {
            topic: {
                "expected_without_event": sorted(expected[topic] - events[topic])[:5],
                "event_not_expected": sorted(events[topic] - expected[topic])[:5],
                "posts_with_events": len(events[topic]),
                "posts_expected": len(expected[topic]),
            }
            for topic in sorted(differing)[:10]
        },
    }


def run_chaos(
    posts_count: int,
    bundle: Path,
    work: Path,
    milvus_outage_s: float = 30.0,
    timeout_s: float = 1500.0,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the suite; returns the table (faults, losses, checks)."""
    posts = chaos_posts(posts_count)
    run = ChaosRun(work, bundle, milvus_outage_s)
    s = run.settings
    watcher = OutcomeWatcher(
        KafkaConsumer(
            s.topic_analyses,
            s.topic_dlq,
            bootstrap_servers=[run.broker.bootstrap],
            group_id="chaos-checker",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **LOCAL_BROKER_PROFILE.kafka_consumer,
        ),
        s.topic_analyses,
    )
    stop_polling = threading.Event()

    def poll_forever() -> None:
        while not stop_polling.is_set():
            try:
                watcher.poll()
            except Exception as exc:  # the broker restarting: the consumer reconnects
                progress(f"checker poll: {type(exc).__name__}: {exc}")
                time.sleep(1)

    started, started_epoch = time.monotonic(), time.time()
    try:
        for name in ("a", "b"):
            run.start_worker(name)
        run.start_worker("trends", "trends")
        for worker in run.workers.values():
            worker.wait_ready(timeout=180)
        poller = threading.Thread(target=poll_forever, daemon=True)
        poller.start()
        faults = _faults(run)
        chunks = [posts[i :: len(faults) + 1] for i in range(len(faults) + 1)]
        produced = 0
        for index, chunk in enumerate(chunks):
            _produce(run, chunk)
            produced += len(chunk)
            # the fault lands while this chunk is being processed
            target = produced - len(chunk) // 2
            deadline = time.monotonic() + 120
            while watcher.outcomes() < target and time.monotonic() < deadline:
                time.sleep(0.2)
            if index < len(faults):
                name, act = faults[index]
                before, t0 = watcher.outcomes(), time.monotonic()
                note = act()
                run.faults.append(
                    Fault(name, before, time.monotonic() - t0, note, round(t0 - started, 1))
                )
                progress(f"[{time.monotonic() - started:5.0f}s] {note} at {before} outcomes")
        deadline = time.monotonic() + timeout_s
        while watcher.outcomes() < len(posts) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # a late duplicate would show up now

        # the contract, checked per produced message
        lost, both = [], []
        for post in posts:
            analysed = post.post_id in watcher.analyses
            dead = (post.partition, post.offset) in watcher.dead
            if not analysed and not dead:
                lost.append(post.post_id or f"{post.partition}:{post.offset}")
            if analysed and dead:
                both.append(post.post_id)
        wrong = [p.post_id for p in posts if not p.valid and p.post_id in watcher.analyses]
        valid_ids = {p.post_id for p in posts if p.valid}
        refused = [d for d in watcher.dead.values() if d.post_id in valid_ids]
        client = connect(run.milvus.uri)
        try:
            stored = PostIndex(client, s.milvus_collection)
            milvus_count, milvus_ids = stored.count(), stored.post_ids(limit=len(posts) + 10)
        finally:
            client.close()
        expected_ids = set(watcher.analyses)
        expected_trends = _expected_totals(posts, watcher.analyses)
        reader = ChangelogTrendReader(
            [run.broker.bootstrap], trends_changelog_topic(s), LOCAL_BROKER_PROFILE
        )
        counted: Counter[str] = Counter()
        try:
            # the changelog holds a few records per post
            deadline = time.monotonic() + max(300.0, _read_budget_s(4 * len(posts)))
            while time.monotonic() < deadline:
                try:  # the reader goes on from where it was: a slow read is resumed
                    counted = _trend_totals(reader.snapshot(timeout_s=60))
                except (LookupError, TimeoutError, KafkaError) as exc:
                    progress(f"trend check: {type(exc).__name__}: {exc}")
                    time.sleep(2)
                    continue
                if counted == expected_trends:
                    break
                time.sleep(2)
        finally:
            reader.close()
        trend_diff = {
            t: (counted.get(t, 0), expected_trends.get(t, 0))
            for t in set(counted) | set(expected_trends)
            if counted.get(t, 0) != expected_trends.get(t, 0)
        }
        diagnosis = diagnose_trends(run, posts, watcher, set(trend_diff))
    finally:
        stop_polling.set()
        watcher.consumer.close()
        run.stop()
    return {
        "posts": len(posts),
        "valid_posts": len(valid_ids),
        "seconds": round(time.monotonic() - started, 1),
        "faults": [f.__dict__ for f in run.faults],
        "messages_without_outcome": len(lost),
        "lost_examples": lost[:10],
        "messages_with_two_kinds_of_outcome": len(both),
        "invalid_posts_analysed": len(wrong),
        "valid_posts_dead_lettered": len(refused),
        "valid_dead_letter_reasons": dict(Counter(d.reason.value for d in refused)),
        "output_records": watcher.records,
        "redelivered_records": watcher.records - watcher.outcomes(),
        "milvus_rows": milvus_count,
        "milvus_matches_analysed_posts": milvus_ids == expected_ids
        and milvus_count == len(expected_ids),
        "milvus_missing": len(expected_ids - milvus_ids),
        "milvus_extra": len(milvus_ids - expected_ids),
        # analysed posts Milvus does not hold, with when (s into the run) each was
        # analysed: to lay beside the faults' at_s
        "milvus_missing_examples": [
            {"post_id": i, "analysed_at_s": round(at - started_epoch, 1)}
            for at, i in sorted((watcher.analysed_at[i], i) for i in expected_ids - milvus_ids)
        ][:20],
        "trend_topics_compared": len(expected_trends),
        "trend_topics_differing": len(trend_diff),
        "trend_differences": dict(list(trend_diff.items())[:10]),
        "trend_diagnosis": diagnosis,
        # gaps in the trend events the trends agent was handed, filled from the broker
        "trend_gaps_filled": sum(
            log.read_text(errors="replace").count("were never delivered to the agent")
            for log in (work / "logs").glob("trends-*.log")
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    """The faults injected and what was lost."""
    print(f"\nchaos: {result['posts']} posts in {result['seconds']} s")
    print(f"{'fault':28} {'at outcomes':>11} {'took s':>7}  what")
    for f in result["faults"]:
        print(f"{f['name']:28} {f['at_outcomes']:>11} {f['seconds']:>7.1f}  {f['note']}")
    for key in (
        "messages_without_outcome",
        "messages_with_two_kinds_of_outcome",
        "invalid_posts_analysed",
        "valid_posts_dead_lettered",
        "redelivered_records",
        "milvus_rows",
        "milvus_matches_analysed_posts",
        "milvus_missing",
        "milvus_extra",
        "trend_topics_compared",
        "trend_topics_differing",
        "trend_gaps_filled",
    ):
        print(f"  {key:40} {result[key]}")
    if result["milvus_missing_examples"]:
        print(
            "  analysed, not in Milvus (post, s into the run):", result["milvus_missing_examples"]
        )
    if result["trend_differences"]:
        print("  trend counts (counted, clean replay):", result["trend_differences"])
        print("  diagnosis:", json.dumps(result["trend_diagnosis"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=10_000)
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--milvus-outage-s", type=float, default=30.0)
    parser.add_argument("--out", default="benchmarks/results/chaos.json")
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="run in DIR and keep it (broker log, Milvus data, worker logs) for a post-mortem",
    )
    args = parser.parse_args(argv)
    bundle = Path(args.bundle).resolve()
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        result = run_chaos(args.posts, bundle, Path(args.keep), args.milvus_outage_s)
    else:
        with tempfile.TemporaryDirectory(prefix="postpulse-chaos-") as tmp:
            result = run_chaos(args.posts, bundle, Path(tmp), args.milvus_outage_s)
    print_table(result)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ok = (
        result["messages_without_outcome"] == 0
        and result["messages_with_two_kinds_of_outcome"] == 0
        and result["milvus_matches_analysed_posts"]
        and result["trend_topics_differing"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
