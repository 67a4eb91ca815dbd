"""Trends on the real broker: a replayed multi-day stream with a burst, out of order;
the same answer on a second replay and after a worker is SIGKILLed mid-replay; an
emerging topic named by its terms; ``postpulse trends`` and ``GET /trends`` agree."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streams.broker import LocalBroker
from streams.cli import main
from streams.samples import TrendStream, trend_stream
from streams.settings import LOCAL_BROKER_PROFILE, Settings
from streams.stages.trends import ALL_POSTS, TrendSnapshot, extract_hashtags, topic_kind
from streams.topics import trends_changelog_topic
from streams.trending import ChangelogTrendReader, trends_query
from streams.worker_process import WorkerProcess
from tests.workers import produce_all, start_worker

pytestmark = pytest.mark.integration

HOUR = 3_600_000
TREND_ENV = {"trend_refresh_s": "1", "trend_lateness": "30m"}


@pytest.fixture(scope="module")
def stream() -> TrendStream:
    return trend_stream()


def counted_posts(snapshot: TrendSnapshot, topic: str = ALL_POSTS) -> int:
    size = max(snapshot.sizes(), default=0)
    return sum(c.posts for c in snapshot.windows.get((size, topic), {}).values())


def wait_counted(reader: ChangelogTrendReader, at_least: int, timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    counted = 0
    while time.monotonic() < deadline:
        try:
            counted = counted_posts(reader.snapshot())
        except LookupError:
            counted = 0
        if counted >= at_least:
            return counted
        time.sleep(1.0)
    raise TimeoutError(f"only {counted} of {at_least} posts counted in trends")


def expected_totals(stream: TrendStream) -> Counter[str]:
    """Posts per compared topic over the whole stream: every post once in the volume
    pseudo-topic and once in its category; each hashtag as many times as posts carry it."""
    totals: Counter[str] = Counter()
    for post in stream.posts:
        totals[ALL_POSTS] += 1
        totals["category:*"] += 1
        totals.update(extract_hashtags(json.loads(post.value)["text"]))
    return totals


def counted_totals(snapshot: TrendSnapshot) -> Counter[str]:
    totals: Counter[str] = Counter()
    for topic in snapshot.topics():
        kind = topic_kind(topic)
        if kind in ("all", "hashtag"):
            totals[topic] += counted_posts(snapshot, topic)
        elif kind == "category":
            totals["category:*"] += counted_posts(snapshot, topic)
    return totals


def wait_complete(
    reader: ChangelogTrendReader, stream: TrendStream, timeout_s: float = 300
) -> TrendSnapshot:
    """The trends once every compared topic has all its posts. Topics are keyed to
    different partitions of the trend-events topic, which the trends worker does not
    drain in step: the volume pseudo-topic being complete says nothing of the others."""
    expected = expected_totals(stream)
    deadline = time.monotonic() + timeout_s
    counted: Counter[str] = Counter()
    while time.monotonic() < deadline:
        try:
            snapshot = reader.snapshot()
        except LookupError:
            snapshot = TrendSnapshot()
        counted = counted_totals(snapshot)
        if counted == expected:
            return snapshot
        time.sleep(1.0)
    raise TimeoutError(f"trends incomplete: expected {dict(expected)}, counted {dict(counted)}")


def trends_cli(settings: Settings, *args: str) -> int:
    """``postpulse trends ...`` against the app of ``settings``."""
    return main(["trends", "--broker", settings.broker_url, "--app-id", settings.app_id, *args])


def answers(snapshot: TrendSnapshot, settings: Settings, stream: TrendStream) -> dict[str, Any]:
    """The deterministic part of the trends: categories and hashtags (emerging topics come
    from each worker's own online clustering, so a restarted worker may name them anew)."""
    times = {
        "before": stream.burst_start_ms - 2 * HOUR + 1,
        "during": stream.burst_start_ms + HOUR // 2,
        "after": stream.burst_end_ms + 3 * HOUR,
    }
    return {
        name: trends_query(
            snapshot, settings, window=window, at_ms=at, kinds=["category", "hashtag"]
        )
        for name, at in times.items()
        for window in ("1h",)
    } | {
        "day": trends_query(
            snapshot, settings, window="1d", at_ms=times["during"], kinds=["category", "hashtag"]
        ),
        "hopping": trends_query(
            snapshot, settings, window="1h", step="5m", at_ms=times["during"], kinds=["hashtag"]
        ),
    }


def start_pair(settings: Settings, logs: Path, tag: str) -> tuple[WorkerProcess, WorkerProcess]:
    """A posts worker and a trends worker (its own Faust app and Milvus Lite file)."""
    posts = start_worker(settings, logs / f"posts{tag}.log", **TREND_ENV).start()
    trends = start_worker(
        settings, logs / f"trends{tag}.log", worker_role="trends", **TREND_ENV
    ).start()
    return posts, trends


def replay(
    broker: LocalBroker,
    settings: Settings,
    stream: TrendStream,
    logs: Path,
    kill_at: int | None = None,
) -> tuple[TrendSnapshot, WorkerProcess, ChangelogTrendReader]:
    """Produce the stream to a fresh app; optionally SIGKILL both workers once ``kill_at``
    posts are counted and start new ones. Returns the final snapshot and the live trends
    worker (its posts worker is stopped)."""
    logs.mkdir(parents=True, exist_ok=True)
    posts, trends = start_pair(settings, logs, "1")
    reader = ChangelogTrendReader(
        [broker.bootstrap], trends_changelog_topic(settings), LOCAL_BROKER_PROFILE
    )
    try:
        posts.wait_ready()
        trends.wait_ready()
        produce_all(broker, settings, stream.posts)
        if kill_at is not None:
            wait_counted(reader, kill_at)
            posts.kill()
            trends.kill()
            assert counted_posts(reader.snapshot()) < len(stream.posts), "killed too late"
            posts, trends = start_pair(settings, logs, "2")
            posts.wait_ready()
            trends.wait_ready()
        wait_complete(reader, stream)
        time.sleep(3)  # a post counted twice would show up now
        snapshot = reader.snapshot()
        assert counted_totals(snapshot) == expected_totals(stream)
    except BaseException:
        reader.close()
        trends.stop()
        raise
    finally:
        posts.stop()
    return snapshot, trends, reader


def test_burst_replay_restart_and_emerging_topic(
    broker: LocalBroker,
    settings_for,  # type: ignore[no-untyped-def]
    stream: TrendStream,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first_settings: Settings = settings_for(broker, prefix="trends1", **TREND_ENV)
    snapshot, worker, reader = replay(broker, first_settings, stream, tmp_path / "run1")
    try:
        first = answers(snapshot, first_settings, stream)
        assert first["during"]["topics"][0]["topic"] == stream.burst_topic, first["during"]
        assert first["during"]["topics"][0]["posts"] == 40
        assert stream.burst_topic not in [t["topic"] for t in first["before"]["topics"]]
        assert stream.burst_topic not in [t["topic"] for t in first["after"]["topics"]]
        assert first["hopping"]["topics"][0]["topic"] == stream.burst_topic

        # the volcano posts have no hashtag and no category of theirs: an emerging topic
        at = stream.emerging_start_ms + 2 * HOUR - 1
        emerging = trends_query(snapshot, first_settings, window="1d", at_ms=at, kinds=["emerging"])
        names = [t["topic"] for t in emerging["topics"]]
        assert any(
            {"volcano", "lava", "ash"} & set(n.removeprefix("emerging:").split()) for n in names
        ), names

        # the CLI and the worker's HTTP page give the same JSON
        during = stream.burst_start_ms + HOUR // 2
        assert trends_cli(first_settings, "--window", "1h", "--at", str(during), "--json") == 0
        cli = json.loads(capsys.readouterr().out)
        url = f"http://127.0.0.1:{worker.web_port}/trends?window=1h&at={during}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert json.loads(resp.read()) == cli
        assert cli["topics"][0]["topic"] == stream.burst_topic
        plot = tmp_path / "trends.png"
        assert (
            trends_cli(first_settings, "plot", "--since", str(stream.start_ms), "--out", str(plot))
            == 0
        )
        assert (tmp_path / "trends.png").stat().st_size > 10_000
        metrics = worker.metrics()
        assert 'postpulse_trend_events_total{outcome="late"} 0.0' in metrics
        assert "postpulse_trend_rank{" in metrics
    finally:
        reader.close()
        worker.stop()

    # a second replay of the same stream into a fresh app: the same answers
    second_settings: Settings = settings_for(broker, prefix="trends2", **TREND_ENV)
    snapshot, worker, reader = replay(broker, second_settings, stream, tmp_path / "run2")
    reader.close()
    worker.stop()
    assert answers(snapshot, second_settings, stream) == first

    # and once more with the worker SIGKILLed a third of the way through
    third_settings: Settings = settings_for(broker, prefix="trends3", **TREND_ENV)
    snapshot, worker, reader = replay(
        broker, third_settings, stream, tmp_path / "run3", kill_at=len(stream.posts) // 3
    )
    metrics = worker.metrics()
    reader.close()
    worker.stop()
    assert answers(snapshot, third_settings, stream) == first
    print("restarted worker:", [ln for ln in metrics.splitlines() if "trend_events_total" in ln])


def test_gap_fetcher_reads_exactly_the_missing_offsets(broker: LocalBroker) -> None:
    from kafka import KafkaProducer

    from streams.broker import ensure_topics
    from streams.trending import TrendEventFetcher

    ensure_topics([broker.bootstrap], ["gap.trend-events"], 2)
    producer = KafkaProducer(
        bootstrap_servers=[broker.bootstrap], **LOCAL_BROKER_PROFILE.kafka_producer
    )
    for i in range(30):
        producer.send("gap.trend-events", value=f"event-{i}".encode(), partition=1)
    producer.flush()
    producer.close()
    fetcher = TrendEventFetcher([broker.bootstrap], "gap.trend-events", LOCAL_BROKER_PROFILE)
    try:
        assert fetcher.fetch(1, 12, 17) == [f"event-{i}".encode() for i in range(12, 17)]
        assert fetcher.fetch(1, 0, 2) == [b"event-0", b"event-1"]  # the consumer is reused
        with pytest.raises(TimeoutError):  # offsets that do not exist yet: bounded wait
            fetcher.fetch(1, 28, 40, timeout_s=2)
    finally:
        fetcher.close()
