"""Milvus Lite for real: upserts, schema drift, and the pipeline's embeddings in search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exporters.milvus import (
    EmbeddingRow,
    MilvusEmbeddingSink,
    PostIndex,
    SchemaMismatchError,
    connect,
    ensure_collection,
)
from streams.pipeline import PostPipeline
from streams.records import DeadLetterReason, Envelope
from streams.samples import broken_posts, valid_posts
from streams.search import SearchError, find_similar
from streams.settings import Settings


def _row(i: int, vec: np.ndarray) -> EmbeddingRow:
    return EmbeddingRow(f"p{i}", vec, 1000 + i, "x", "food", "neutral", None, 1, "v1")


def test_upsert_is_idempotent_and_batched(tmp_path: Path) -> None:
    client = connect(str(tmp_path / "m.db"))
    sink = MilvusEmbeddingSink(client, "posts", dim=8, max_rows=4)
    sink.setup()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10, 8)).astype(np.float32)
    for i in range(10):
        sink.add(_row(i, vectors[i]))
    sink.flush()
    for i in range(3):  # a replay after a crash
        sink.add(_row(i, vectors[i]))
    sink.flush()
    index = PostIndex(client, "posts")
    assert index.count() == 10
    assert index.post_ids() == {f"p{i}" for i in range(10)}
    hits = index.search(vectors[[4]], top_k=3)[0]
    assert hits[0].post_id == "p4" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].fields["category"] == "food" and hits[0].fields["popularity"] is None
    sink.close()


def test_incompatible_existing_collection_is_an_error(tmp_path: Path) -> None:
    client = connect(str(tmp_path / "m.db"))
    ensure_collection(client, "posts", dim=8)
    ensure_collection(client, "posts", dim=8)  # same schema: fine
    with pytest.raises(SchemaMismatchError, match="embedding"):
        ensure_collection(client, "posts", dim=16)
    assert client.has_collection("posts")  # never silently recreated
    client.close()


@pytest.fixture
def pipeline(settings_for, served_bundle):  # type: ignore[no-untyped-def]
    settings: Settings = settings_for()
    return PostPipeline(settings, served_bundle)


def test_pipeline_accounts_for_every_message(pipeline: PostPipeline) -> None:
    samples = valid_posts(40) + broken_posts(12)
    envs = [Envelope(value=s.value, offset=i) for i, s in enumerate(samples)]
    outcome = pipeline.process(envs)
    assert len(outcome.analysed) == 40 and len(outcome.dead_letters) == 12
    assert {a.analysis.post_id for a in outcome.analysed} == {s.post_id for s in samples[:40]}
    assert sorted(d.reason for d in outcome.dead_letters) == sorted(
        s.expected_reason for s in samples[40:] if s.expected_reason
    )
    for a in outcome.analysed:
        assert a.embedding.shape == (pipeline.bundle.dim,)
        assert np.linalg.norm(a.embedding) == pytest.approx(1.0, abs=1e-5)
        assert set(a.analysis.modalities) <= {"text", "image"} and a.analysis.modalities
        if "text" in a.analysis.modalities:
            assert a.analysis.category in a.analysis.category_probs
            assert sum(a.analysis.category_probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert outcome.timer.encoder_items["text"] > 0 and outcome.timer.encoder_items["image"] > 0


def test_zero_shot_category_baseline_beats_chance(pipeline: PostPipeline) -> None:
    samples = [s for s in valid_posts(200, seed=3) if b'"text"' in s.value]
    outcome = pipeline.process([Envelope(value=s.value) for s in samples])
    truth = {s.post_id: s.topic for s in samples}
    correct = sum(a.analysis.category == truth[a.analysis.post_id] for a in outcome.analysed)
    accuracy = correct / len(outcome.analysed)
    # 10 categories: chance is 0.1; the untrained baseline must be clearly better
    assert accuracy > 0.5, accuracy


def test_same_text_post_is_nearest_neighbour(
    pipeline: PostPipeline,
    settings_for,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    settings: Settings = settings_for()
    samples = valid_posts(60, seed=5)
    twin = json.loads(samples[17].value)
    twin["post_id"] = "twin-of-17"
    twin.pop("media", None)
    twin["text"] = json.loads(samples[17].value).get("text") or "fallback text"
    original = json.loads(samples[17].value)
    original.pop("media", None)
    original["text"] = twin["text"]
    envs = [Envelope(value=s.value) for s in samples[:17] + samples[18:]]
    envs += [
        Envelope(value=json.dumps(original).encode()),
        Envelope(value=json.dumps(twin).encode()),
    ]
    outcome = pipeline.process(envs)
    client = connect(settings.milvus_uri)
    sink = MilvusEmbeddingSink(
        client, settings.milvus_collection, pipeline.bundle.dim, uri=settings.milvus_uri
    )
    sink.setup()
    for a in outcome.analysed:
        sink.add(
            EmbeddingRow(
                a.analysis.post_id,
                a.embedding,
                a.analysis.created_at_ms,
                a.analysis.platform,
                a.analysis.category or "",
                a.analysis.sentiment,
                a.analysis.popularity,
                a.modality_mask,
                a.analysis.bundle_version,
            )
        )
    sink.flush()
    sink.close()
    hits = find_similar(settings, post_id="twin-of-17", top_k=3)
    assert hits[0].post_id == original["post_id"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    by_text = find_similar(settings, text=twin["text"], top_k=2)
    assert {h.post_id for h in by_text} == {"twin-of-17", original["post_id"]}
    with pytest.raises(SearchError, match="not stored"):
        find_similar(settings, post_id="nope")
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "--log-level",
            "WARNING",
            "similar",
            "twin-of-17",
            "--milvus-uri",
            settings.milvus_uri,
            "--collection",
            settings.milvus_collection,
            "--top-k",
            "2",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    rank, post_id, score = cli.stdout.splitlines()[2].split()[:3]  # title, header, hits
    assert (rank, post_id) == ("1.", original["post_id"]) and float(score) == pytest.approx(1.0)
    as_json = subprocess.run(
        [*cli.args, "--json", "--platform", original["platform"]], capture_output=True, text=True
    )
    hits = json.loads(as_json.stdout)["hits"]
    assert hits[0]["post_id"] == original["post_id"]
    assert {h["platform"] for h in hits} == {original["platform"]}


def test_dead_letter_for_oversized_text_keeps_the_original(pipeline: PostPipeline) -> None:
    value = json.dumps(
        {
            "post_id": "big",
            "platform": "x",
            "author_id": "u",
            "created_at": 1_700_000_000_000,
            "text": "x" * 30_000,
        }
    ).encode()
    outcome = pipeline.process([Envelope(value=value, topic="posts", partition=2, offset=77)])
    (dead,) = outcome.dead_letters
    assert dead.reason is DeadLetterReason.TEXT_TOO_LONG and dead.original == value
    assert (dead.source_partition, dead.source_offset) == (2, 77)
