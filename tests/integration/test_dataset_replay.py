"""Data sets from a Kafka topic replayed over a time range, and time-based splits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoders.training.data import EmbeddingCache, replay_topic, split_by_time
from encoders.training.synth import generate
from streams.broker import LocalBroker, ensure_topics
from streams.producer import produce
from streams.records import Engagement
from streams.settings import LOCAL_BROKER_PROFILE
from streams.stages.analyse import popularity_score


def test_replay_selects_by_event_time_and_skips_garbage(broker: LocalBroker) -> None:
    topic = "replay-posts"
    ensure_topics([broker.bootstrap], [topic], 2)
    posts = [p.doc for p in generate(30, seed=2)]  # created_at: 1_760_000_000_000 + i minutes
    lines = [json.dumps(p).encode() for p in posts] + [b"not json", b'{"no": "created_at"}']
    produce(lines, [broker.bootstrap], topic, LOCAL_BROKER_PROFILE, progress=False)
    start = 1_760_000_000_000 + 10 * 60_000
    end = 1_760_000_000_000 + 20 * 60_000
    got, counts = replay_topic(
        [broker.bootstrap],
        topic,
        start,
        end,
        idle_s=3.0,
        consumer_config=LOCAL_BROKER_PROFILE.kafka_consumer,
    )
    assert sorted(p["post_id"] for p in got) == sorted(p["post_id"] for p in posts[10:20])
    assert counts == {"messages": 32, "not_a_post": 2, "outside_time_range": 20, "posts": 10}


def test_time_split_puts_the_newest_posts_in_test() -> None:
    created = np.array([50, 10, 40, 30, 20, 60, 70, 80, 90, 100])
    assigned = split_by_time(created)
    assert set(created[assigned == 0]) == {10, 20, 30, 40, 50, 60, 70}
    assert set(created[assigned == 1]) == {80, 90}
    assert set(created[assigned == 2]) == {100}


def test_dataset_build_cli_from_a_topic(
    broker: LocalBroker, bundle_path: Path, tmp_path: Path
) -> None:
    topic = "replay-cli"
    ensure_topics([broker.bootstrap], [topic], 1)
    posts = [p.doc for p in generate(24, seed=9)]
    produce(
        [json.dumps(p).encode() for p in posts],
        [broker.bootstrap],
        topic,
        LOCAL_BROKER_PROFILE,
        progress=False,
    )
    # later counts, as 'postpulse collect' publishes them: on a topic and in a file
    ensure_topics([broker.bootstrap], [f"{topic}.engagement"], 1)
    updates = [
        {"post_id": posts[0]["post_id"], "observed_at": 2_000, "engagement": {"likes": 900}},
        {"post_id": posts[0]["post_id"], "observed_at": 1_000, "engagement": {"likes": 5}},
        {"post_id": posts[1]["post_id"], "observed_at": 1_000, "engagement": {"likes": 40}},
        {"post_id": "not-in-the-set", "observed_at": 1_000, "engagement": {"likes": 1}},
    ]
    produce(
        [json.dumps(u).encode() for u in updates] + [b"garbage"],
        [broker.bootstrap],
        f"{topic}.engagement",
        LOCAL_BROKER_PROFILE,
        progress=False,
    )
    file_update = {"post_id": posts[2]["post_id"], "observed_at": 1, "engagement": {"shares": 7}}
    (tmp_path / "e.engagement.jsonl").write_text(json.dumps(file_update) + "\n{broken\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "--log-level",
            "WARNING",
            "dataset",
            "build",
            "--engagement-topic",
            f"{topic}.engagement",
            "--engagement",
            str(tmp_path / "e.engagement.jsonl"),
            "--topic",
            topic,
            "--broker",
            broker.url,
            "--bundle",
            str(bundle_path),
            "--out",
            str(tmp_path / "ds"),
            "--split",
            "time",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    cache = EmbeddingCache.load(tmp_path / "ds" / "embeddings.npz")
    assert sorted(cache.post_ids.tolist()) == sorted(p["post_id"] for p in posts)
    newest = cache.created_at[cache.split == 2].min()
    assert newest > cache.created_at[cache.split == 0].max()
    card = json.loads((tmp_path / "ds" / "data_card.json").read_text())
    assert card["split_mode"] == "time" and card["replayed_posts"] == 24
    assert card["engagement_updates"] == {"posts_updated": 3, "records": 7, "invalid": 2}
    popularity = dict(zip(cache.post_ids.tolist(), cache.popularity.tolist(), strict=True))
    for post, counts in (
        (posts[0], {"likes": 900}),  # the newest observation wins, whatever the order
        (posts[1], {"likes": 40}),
        (posts[2], {"shares": 7}),
    ):
        expected = popularity_score(Engagement(**counts))
        assert popularity[post["post_id"]] == pytest.approx(expected, rel=1e-5)
    untouched = posts[3]
    assert popularity[untouched["post_id"]] == pytest.approx(
        popularity_score(Engagement(**untouched["engagement"])), rel=1e-5
    )
