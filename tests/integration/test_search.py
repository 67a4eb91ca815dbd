"""Similarity search on a real Milvus Lite collection: reposted images and texts find
their originals; filters and pagination agree with brute force; uploads are encoded by
the stream's own pipeline; same-event groups."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoders.serving import ServedBundle
from exporters.milvus import EmbeddingRow, MilvusEmbeddingSink, connect
from streams.broker import free_port
from streams.outputs import embedding_row
from streams.pipeline import PostPipeline
from streams.records import Envelope
from streams.samples import NearDuplicateSet, near_duplicate_set, repost_image, repost_text
from streams.search import MediaQuery, SearchError, SearchFilters, SearchService
from streams.settings import Settings

pytestmark = pytest.mark.integration


def store_posts(settings: Settings, bundle: ServedBundle, values: list[bytes]) -> None:
    """Run posts through the stream's pipeline and upsert them as a worker would."""
    pipeline = PostPipeline(settings, bundle)
    outcome = pipeline.process(
        [Envelope(value=v, partition=0, offset=i) for i, v in enumerate(values)]
    )
    assert not outcome.dead_letters, outcome.dead_letters[:3]
    sink = MilvusEmbeddingSink(
        connect(settings.milvus_uri),
        settings.milvus_collection,
        bundle.dim,
        index_type=settings.milvus_index_type,
        uri=settings.milvus_uri,
    )
    sink.setup()
    for analysed in outcome.analysed:
        sink.add(embedding_row(analysed))
    sink.flush()
    sink.close()


@pytest.fixture(scope="module")
def reposts() -> NearDuplicateSet:
    return near_duplicate_set()


@pytest.fixture(scope="module")
def repost_settings(
    tmp_path_factory: pytest.TempPathFactory, served_bundle: ServedBundle, reposts: NearDuplicateSet
) -> Settings:
    folder = tmp_path_factory.mktemp("search")
    settings = Settings(
        bundle_path=served_bundle.path,
        milvus_uri=str(folder / "milvus.db"),
        fetch_enabled=False,
        data_dir=folder,
    )
    store_posts(settings, served_bundle, [p.value for p in reposts.posts])
    return settings


def test_reposts_find_their_originals(repost_settings: Settings, reposts: NearDuplicateSet) -> None:
    with SearchService(repost_settings) as service:
        assert service.index.count() == len(reposts.posts)
        top = {v: service.similar_to_post(v, top_k=1)[0].post_id for v in reposts.variant_of}
        found = sum(top[v] == o for v, o in reposts.variant_of.items())
        share = found / len(reposts.variant_of)
        misses = {v: top[v] for v, o in reposts.variant_of.items() if top[v] != o}
        print(f"original is the top hit for {share:.0%} of {len(top)} reposts; misses {misses}")
        assert share >= 0.95, misses

        # the near-duplicate threshold: precision and recall over every repost's hits
        # (a hit is right when it is the repost's original)
        def precision_recall(threshold: float) -> tuple[float, float]:
            tp = fp = 0
            for variant, original in reposts.variant_of.items():
                hits = service.near_duplicates(variant, threshold)
                assert all(h.score >= threshold for h in hits)
                tp += original in [h.post_id for h in hits]
                fp += sum(1 for h in hits if h.post_id != original)
            return tp / max(1, tp + fp), tp / len(reposts.variant_of)

        for threshold in (0.85, 0.875, 0.9, 0.925, 0.95):
            p, r = precision_recall(threshold)
            print(f"near-duplicates at {threshold}: precision {p:.2f}, recall {r:.2f}")
        precision, recall = precision_recall(repost_settings.near_duplicate_threshold)
        assert precision >= 0.8 and recall >= 0.6, (precision, recall)


def test_uploaded_media_and_text_are_encoded_like_posts(
    repost_settings: Settings, reposts: NearDuplicateSet
) -> None:
    originals = {json.loads(p.value)["post_id"]: json.loads(p.value) for p in reposts.posts}
    with SearchService(repost_settings) as service:
        hits_ok = 0
        images = [i for i in originals if i.startswith("img-") and not i.endswith("repost")]
        for post_id in images[:10]:
            # a new repost of the picture, never stored: it is uploaded as the query
            import base64

            data = base64.b64decode(originals[post_id]["media"][0]["data_b64"])
            upload = repost_image(data, seed=999)
            hits = service.similar_to_query(media=[MediaQuery("image", upload)], top_k=2)
            hits_ok += bool({post_id, f"{post_id}-repost"} & {h.post_id for h in hits})
        assert hits_ok >= 9, hits_ok
        texts = [i for i in originals if i.startswith("txt-") and not i.endswith("repost")]
        for post_id in texts[:10]:
            query = repost_text(originals[post_id]["text"], seed=999)
            hits = service.similar_to_query(text=query, top_k=2)
            assert {post_id, f"{post_id}-repost"} & {h.post_id for h in hits}, (query, hits)
        # what the stream would dead-letter is refused with the stream's reason
        with pytest.raises(SearchError, match="query refused") as refused:
            service.similar_to_query(media=[MediaQuery("image", b"not an image at all")])
        assert refused.value.status == 422
        with pytest.raises(SearchError, match="text or media"):
            service.similar_to_query(text="  ")


# --- filters and pagination against brute force ---------------------------------------

PLATFORMS = ["mastodon", "bluesky", "reddit"]
CATEGORIES = ["sports", "news", "food", "travel"]
SENTIMENTS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus 2.3 standalone server (PyPI ``milvus``) on free ports, or a skip."""
    exe = Path(sys.executable).parent / "milvus-server"
    if not exe.exists():
        pytest.skip("the milvus package (Milvus standalone server) is not installed")
    folder = tmp_path_factory.mktemp("milvus-server")
    proxy, etcd = free_port(), free_port()
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(exe),
            "--data",
            str(folder / "data"),
            "--proxy-port",
            str(proxy),
            "--etcd-port",
            str(etcd),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{proxy}"
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                client = connect(uri)
                client.list_collections()
                client.close()
                break
            except Exception as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"Milvus standalone did not start ({exc}); see {log.name}")
                time.sleep(2)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):  # it ignores SIGTERM
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module", params=["milvus-lite", "milvus-server"])
def random_rows(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, list[EmbeddingRow]]:
    """400 random rows in Milvus Lite, and in a Milvus standalone server when one starts
    (Milvus 2.3 has no nullable fields: there every row has a popularity)."""
    server = request.param == "milvus-server"
    uri = request.getfixturevalue("milvus_server") if server else None
    rng = np.random.default_rng(5)
    rows = [
        EmbeddingRow(
            post_id=f"r{i:04d}",
            embedding=rng.normal(size=24).astype(np.float32),
            created_at=1_767_571_200_000 + int(rng.integers(0, 10 * 86_400_000)),
            platform=str(rng.choice(PLATFORMS)),
            category=str(rng.choice(CATEGORIES)),
            sentiment=str(rng.choice(SENTIMENTS)),
            popularity=None if rng.random() < 0.2 and not server else float(rng.random()),
            modality_mask=1,
            bundle_version="test",
        )
        for i in range(400)
    ]
    folder = tmp_path_factory.mktemp("filters")
    # HNSW as in production; a search depth over the row count makes it exhaustive, so
    # the comparison with brute force is exact
    settings = Settings(
        milvus_uri=uri or str(folder / "milvus.db"),
        milvus_collection="random",
        milvus_search_ef=512,
    )
    sink = MilvusEmbeddingSink(connect(settings.milvus_uri), "random", 24, uri=settings.milvus_uri)
    sink.setup()
    for row in rows:
        sink.add(row)
    sink.flush()
    sink.close()
    return settings, rows


def brute_force(
    rows: list[EmbeddingRow], query: np.ndarray, filters: SearchFilters, top_k: int, offset: int
) -> list[tuple[str, float]]:
    q = query / np.linalg.norm(query)
    scored = []
    for row in rows:
        fields: dict[str, Any] = {
            "created_at": row.created_at,
            "platform": row.platform,
            "category": row.category,
            "sentiment": row.sentiment,
            "popularity": row.popularity,
        }
        if filters.matches(fields):
            v = row.embedding / np.linalg.norm(row.embedding)
            scored.append((row.post_id, float(v @ q)))
    scored.sort(key=lambda t: -t[1])
    return scored[offset : offset + top_k]


@pytest.mark.parametrize(
    "filters",
    [
        SearchFilters(),
        SearchFilters(platforms=("reddit",)),
        SearchFilters(categories=("news", "food"), sentiments=("positive",)),
        SearchFilters(
            since_ms=1_767_571_200_000 + 2 * 86_400_000, until_ms=1_767_571_200_000 + 6 * 86_400_000
        ),
        SearchFilters(min_popularity=0.25, max_popularity=0.75, platforms=("mastodon", "bluesky")),
    ],
    ids=["none", "platform", "category+sentiment", "time", "popularity+platform"],
)
def test_filters_and_pages_match_brute_force(
    random_rows: tuple[Settings, list[EmbeddingRow]], filters: SearchFilters
) -> None:
    settings, rows = random_rows
    rng = np.random.default_rng(hash(filters.expr()) % 2**32)
    queries = rng.normal(size=(3, 24)).astype(np.float32)
    with SearchService(settings) as service:
        for offset in (0, 7, 20):
            pages = service.search(queries, filters, top_k=7, offset=offset)  # one batched call
            assert len(pages) == len(queries)
            for query, page in zip(queries, pages, strict=True):
                expected = brute_force(rows, query, filters, 7, offset)
                assert [h.post_id for h in page] == [pid for pid, _ in expected]
                assert [h.score for h in page] == pytest.approx([s for _, s in expected], abs=1e-4)
                for hit in page:  # the hits carry their fields, and they pass the filter
                    assert filters.matches(hit.fields), hit
        # a stored post is never its own hit, on any page
        first = rows[0].post_id
        page = service.similar_to_post(first, top_k=5)
        assert first not in [h.post_id for h in page]
        assert [h.post_id for h in page] == [
            pid for pid, _ in brute_force(rows[1:], rows[0].embedding, SearchFilters(), 5, 0)
        ]


def test_bad_pages_and_unknown_posts_are_clear_errors(
    random_rows: tuple[Settings, list[EmbeddingRow]],
) -> None:
    settings, _ = random_rows
    with SearchService(settings) as service:
        with pytest.raises(SearchError, match="top_k") as bad:
            service.search(np.ones(24, dtype=np.float32), top_k=0)
        assert bad.value.status == 422
        with pytest.raises(SearchError, match="not stored") as missing:
            service.similar_to_post("nope")
        assert missing.value.status == 404
    with SearchService(Settings(milvus_uri=settings.milvus_uri, milvus_collection="none")) as s:
        with pytest.raises(SearchError, match="no collection") as absent:
            s.get_post("x")
        assert absent.value.status == 503


def test_same_event_groups(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    t0 = 1_767_571_200_000
    hour = 3_600_000
    rows = []
    centres = rng.normal(size=(3, 32))
    for e, centre in enumerate(centres):  # three events, six posts each within two hours
        for k in range(6):
            vec = centre + rng.normal(scale=0.15, size=32)
            rows.append((f"e{e}-{k}", vec, t0 + e * 24 * hour + k * 20 * 60_000))
    # the same picture again two days after its event: another event, not linked
    rows.append(("late-twin", centres[0] + rng.normal(scale=0.15, size=32), t0 + 48 * hour + 1))
    for i in range(40):  # unrelated posts
        rows.append((f"bg{i}", rng.normal(size=32), t0 + int(rng.integers(0, 72 * hour))))
    settings = Settings(milvus_uri=str(tmp_path / "m.db"))
    sink = MilvusEmbeddingSink(connect(settings.milvus_uri), "posts", 32, uri=settings.milvus_uri)
    sink.setup()
    for post_id, vec, ts in rows:
        sink.add(
            EmbeddingRow(post_id, vec.astype(np.float32), ts, "x", "news", "neutral", None, 1, "t")
        )
    sink.flush()
    sink.close()
    with SearchService(settings) as service:
        groups = service.event_groups(t0, t0 + 80 * hour, threshold=0.9, window_ms=6 * hour)
        assert [sorted(g.post_ids) for g in groups] == [
            sorted(f"e{e}-{k}" for k in range(6)) for e in range(3)
        ]
        assert [g.group_id for g in groups] == ["e0-0", "e1-0", "e2-0"]
        assert groups[0].start_ms == t0 and groups[0].end_ms == t0 + 5 * 20 * 60_000
        # a range that cuts an event keeps the part inside it
        cut = service.event_groups(t0 + 41 * 60_000, t0 + 24 * hour, 0.9, 6 * hour)
        assert [sorted(g.post_ids) for g in cut] == [[f"e0-{k}" for k in range(3, 6)]]


def test_cli_mirrors_the_search_operations(
    repost_settings: Settings, reposts: NearDuplicateSet, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    where = ["--milvus-uri", repost_settings.milvus_uri]
    bundle = ["--bundle", str(repost_settings.bundle_path)]
    assert main(["post", "txt-003", *where, "--json"]) == 0
    post = json.loads(capsys.readouterr().out)
    assert post["post_id"] == "txt-003" and "embedding" not in post

    assert main(["duplicates", "txt-003-repost", *where, "--json"]) == 0
    dups = json.loads(capsys.readouterr().out)["hits"]
    assert dups[0]["post_id"] == "txt-003"
    assert all(h["score"] >= repost_settings.near_duplicate_threshold for h in dups)

    text = json.loads(next(p.value for p in reposts.posts if p.post_id == "txt-003"))["text"]
    assert main(["similar", "--text", text, *where, *bundle, "--top-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["post_id"] == "txt-003"
    assert main(["similar", "txt-003", *where, "--top-k", "2", "--offset", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[0] == "2." and len(table) == 4  # title, header, ranks 2 and 3

    start = json.loads(reposts.posts[0].value)["created_at"]
    span = ["--since", str(start), "--until", str(start + 86_400_000)]
    assert main(["events", *where, *span, "--threshold", "0.9", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert groups and all(g["size"] >= 2 for g in groups)
    # a text and its repost (posted 200 minutes later, within the 6h window) group together
    pairs = [set(g["post_ids"]) for g in groups]
    assert {"txt-003", "txt-003-repost"} in pairs or any(
        {"txt-003", "txt-003-repost"} <= p for p in pairs
    )
    first = groups[0]["group_id"]
    assert main(["events", *where, *span, "--group", first]) == 0
    assert first in capsys.readouterr().out
    assert main(["events", *where, *span, "--group", "no-such-group"]) == 1
    assert main(["post", "missing-post", *where]) == 2
    assert "not stored" in capsys.readouterr().err
