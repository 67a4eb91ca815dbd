"""Similarity search over the stored fused embeddings: by post id, by text, by uploaded
image, audio or video (encoded by the same pipeline as the stream), with filters and
pagination; near-duplicates of a post; groups of posts about the same event.

Used by ``postpulse similar/post/duplicates/events`` and by the HTTP API
(:mod:`streams.api`). Milvus Lite by default, any Milvus server by URI.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.milvus import (
    OUTPUT_FIELDS,
    VECTOR_FIELD,
    PostIndex,
    SimilarPost,
    connect,
    disconnect,
)
from streams.settings import Settings
from streams.stages.trends import parse_duration

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from streams.pipeline import PostPipeline

log = logging.getLogger(__name__)

MEDIA_KINDS = ("image", "audio", "video")
MAX_TOP_K = 1000
MAX_OFFSET = 10_000


class SearchError(RuntimeError):
    """The query cannot be answered; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SearchFilters:
    """Conditions on the stored scalar fields; empty means no condition. Time bounds are
    epoch milliseconds, ``since`` inclusive, ``until`` exclusive; a popularity bound
    excludes posts without a popularity score."""

    since_ms: int | None = None
    until_ms: int | None = None
    platforms: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    sentiments: tuple[str, ...] = ()
    min_popularity: float | None = None
    max_popularity: float | None = None

    def expr(self, exclude_ids: Sequence[str] = ()) -> str:
        """The Milvus boolean expression (strings JSON-quoted, so quotes are escaped)."""
        terms: list[str] = []
        if self.since_ms is not None:
            terms.append(f"created_at >= {int(self.since_ms)}")
        if self.until_ms is not None:
            terms.append(f"created_at < {int(self.until_ms)}")
        for name, values in (
            ("platform", self.platforms),
            ("category", self.categories),
            ("sentiment", self.sentiments),
        ):
            if values:
                terms.append(f"{name} in {json.dumps(list(values), ensure_ascii=False)}")
        if self.min_popularity is not None:
            terms.append(f"popularity >= {float(self.min_popularity)!r}")
        if self.max_popularity is not None:
            terms.append(f"popularity <= {float(self.max_popularity)!r}")
        if exclude_ids:
            terms.append(f"post_id not in {json.dumps(list(exclude_ids))}")
        return " and ".join(terms)

    def matches(self, row: dict[str, Any]) -> bool:
        """The same conditions on a stored row, in Python (for callers without Milvus)."""
        created = int(row["created_at"])
        popularity = row.get("popularity")
        return (
            (self.since_ms is None or created >= self.since_ms)
            and (self.until_ms is None or created < self.until_ms)
            and (not self.platforms or row["platform"] in self.platforms)
            and (not self.categories or row["category"] in self.categories)
            and (not self.sentiments or row["sentiment"] in self.sentiments)
            and (
                self.min_popularity is None
                or (popularity is not None and popularity >= self.min_popularity)
            )
            and (
                self.max_popularity is None
                or (popularity is not None and popularity <= self.max_popularity)
            )
        )


@dataclass(frozen=True)
class MediaQuery:
    """An uploaded image, audio clip or video to search by."""

    kind: str
    data: bytes
    mime: str | None = None


@dataclass
class EventGroup:
    """Posts about the same event: each is at least ``threshold`` similar to another
    member posted within the time window. ``group_id`` is the earliest member's id."""

    group_id: str
    post_ids: list[str]
    start_ms: int
    end_ms: int
    categories: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "size": len(self.post_ids),
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "categories": self.categories,
            "post_ids": self.post_ids,
        }


def hit_json(hit: SimilarPost) -> dict[str, Any]:
    """A search hit as the API and ``--json`` print it."""
    return {"post_id": hit.post_id, "score": round(hit.score, 6), **hit.fields}


class SearchService:
    """One Milvus connection, the collection's read side, and (on the first query that
    needs it) the encoders and fusion of the configured bundle."""

    def __init__(self, settings: Settings, client: MilvusClient | None = None) -> None:
        self.settings = settings
        self._owns_client = client is None
        try:
            self.client = client or connect(
                settings.milvus_uri, settings.milvus_token.get_secret_value()
            )
        except Exception as exc:
            raise SearchError(
                f"cannot open Milvus at {settings.milvus_uri}: {exc} (a Milvus Lite file is "
                "locked while a worker uses it: stop the worker, or serve the file with "
                "'milvus-lite server' and use its URI)",
                status=503,
            ) from exc
        self._index: PostIndex | None = None
        self._pipeline: PostPipeline | None = None
        self._queries = 0

    def close(self) -> None:
        if self._owns_client:
            disconnect(self.client, self.settings.milvus_uri)

    def __enter__(self) -> SearchService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def index(self) -> PostIndex:
        if self._index is None:
            name = self.settings.milvus_collection
            if not self.client.has_collection(name):
                raise SearchError(
                    f"no collection {name!r} at {self.settings.milvus_uri}: run a worker first",
                    status=503,
                )
            self._index = PostIndex(self.client, name)
        return self._index

    # --- reading posts -------------------------------------------------------------

    def _row(self, post_id: str) -> dict[str, Any]:
        rows = self.index.get([post_id])
        if post_id not in rows:
            raise SearchError(f"post {post_id!r} is not stored", status=404)
        return dict(rows[post_id])

    def get_post(self, post_id: str) -> dict[str, Any]:
        """A stored post's analysis fields (no embedding); ``SearchError`` 404 if absent."""
        row = self._row(post_id)
        return {k: row[k] for k in OUTPUT_FIELDS if k in row}

    def embedding_of(self, post_id: str) -> np.ndarray:
        return np.asarray(self._row(post_id)[VECTOR_FIELD], dtype=np.float32)

    # --- searching -----------------------------------------------------------------

    def search(
        self,
        vectors: np.ndarray,
        filters: SearchFilters | None = None,
        top_k: int = 10,
        offset: int = 0,
        exclude_ids: Sequence[str] = (),
    ) -> list[list[SimilarPost]]:
        """Cosine top-k after ``offset`` for each query vector, in one Milvus call."""
        check_page(top_k, offset)
        expr = (filters or SearchFilters()).expr(exclude_ids)
        return self.index.search(
            np.atleast_2d(vectors),
            top_k=top_k,
            filter_expr=expr,
            offset=offset,
            search_params=self.search_params(top_k + offset),
        )

    def search_params(self, depth: int) -> dict[str, Any]:
        """Index-specific search parameters (HNSW's ``ef`` at least the page depth)."""
        params: dict[str, Any] = {}
        if self.settings.milvus_index_type.upper() == "HNSW":
            params["ef"] = max(self.settings.milvus_search_ef, depth)
        return params

    def similar_to_post(
        self, post_id: str, filters: SearchFilters | None = None, top_k: int = 10, offset: int = 0
    ) -> list[SimilarPost]:
        """Posts most similar to a stored post (the post itself excluded)."""
        vector = self.embedding_of(post_id)
        return self.search(vector, filters, top_k, offset, exclude_ids=[post_id])[0]

    def similar_to_query(
        self,
        text: str | None = None,
        media: Sequence[MediaQuery] = (),
        filters: SearchFilters | None = None,
        top_k: int = 10,
        offset: int = 0,
    ) -> list[SimilarPost]:
        """Posts most similar to a text and/or uploaded media."""
        return self.search(self.embed_query(text, media), filters, top_k, offset)[0]

    def embed_query(self, text: str | None = None, media: Sequence[MediaQuery] = ()) -> np.ndarray:
        """The fused embedding of a query post made of ``text`` and ``media``, computed by
        the stream's own pipeline (validation, decoding limits, encoders, fusion); a query
        the stream would dead-letter is refused with the same reason (422)."""
        from streams.records import DeadLetter, Envelope

        if not (text and text.strip()) and not media:
            raise SearchError("a query needs text or media", status=422)
        for item in media:
            if item.kind not in MEDIA_KINDS:
                raise SearchError(
                    f"unknown media kind {item.kind!r}; use one of {list(MEDIA_KINDS)}", status=422
                )
        self._queries += 1
        doc: dict[str, Any] = {
            "post_id": f"query-{self._queries}",
            "platform": "query",
            "author_id": "query",
            "created_at": int(time.time() * 1000),
            "text": text or "",
            "media": [
                {"kind": m.kind, "data_b64": base64.b64encode(m.data).decode()}
                | ({"mime": m.mime} if m.mime else {})
                for m in media
            ],
        }
        outcome = self.pipeline.process(
            [Envelope(value=json.dumps(doc).encode(), partition=-1, offset=self._queries)]
        )
        if outcome.dead_letters:
            dead: DeadLetter = outcome.dead_letters[0]
            raise SearchError(f"query refused: {dead.reason.value}: {dead.detail}", status=422)
        return outcome.analysed[0].embedding.astype(np.float32)

    @property
    def pipeline(self) -> PostPipeline:
        if self._pipeline is None:
            from streams.pipeline import PostPipeline, served_bundle

            self._pipeline = PostPipeline(self.settings, served_bundle(self.settings))
        return self._pipeline

    # --- near-duplicates and events ------------------------------------------------

    def near_duplicates(
        self, post_id: str, threshold: float | None = None, top_k: int = 50
    ) -> list[SimilarPost]:
        """Stored posts at least ``threshold`` similar to ``post_id`` (reposts,
        re-encoded or cropped media), most similar first."""
        limit = self.settings.near_duplicate_threshold if threshold is None else threshold
        hits = self.similar_to_post(post_id, top_k=top_k)
        return [h for h in hits if h.score >= limit]

    def rows(self, filters: SearchFilters, limit: int) -> Iterator[dict[str, Any]]:
        """Stored rows (embedding included) that match ``filters``; at most ``limit``."""
        iterator = self.client.query_iterator(
            self.index.collection,
            batch_size=1000,
            limit=limit,
            filter=filters.expr(),
            output_fields=[*OUTPUT_FIELDS, VECTOR_FIELD],
        )
        try:
            while page := iterator.next():
                yield from page
        finally:
            iterator.close()

    def event_groups(
        self,
        since_ms: int,
        until_ms: int,
        threshold: float | None = None,
        window_ms: int | None = None,
        min_size: int = 2,
    ) -> list[EventGroup]:
        """Groups of posts created in ``[since_ms, until_ms)`` about the same event: linked
        when at least ``threshold`` similar and posted within ``window_ms`` of each other
        (single linkage), largest first. Refuses ranges over ``event_max_posts`` posts."""
        s = self.settings
        threshold = s.event_threshold if threshold is None else threshold
        window = parse_duration(s.event_window) if window_ms is None else window_ms
        cap = s.event_max_posts
        rows = list(self.rows(SearchFilters(since_ms=since_ms, until_ms=until_ms), cap + 1))
        if len(rows) > cap:
            raise SearchError(
                f"more than {cap} posts in the range: narrow it (or raise "
                "POSTPULSE_EVENT_MAX_POSTS)",
                status=422,
            )
        return group_events(rows, threshold, window, min_size)


def group_events(
    rows: list[dict[str, Any]], threshold: float, window_ms: int, min_size: int = 2
) -> list[EventGroup]:
    """Single-linkage groups over rows with ``post_id``, ``created_at``, ``category`` and
    the embedding; blockwise, so memory stays O(block x n)."""
    if not rows:
        return []
    rows = sorted(rows, key=lambda r: (int(r["created_at"]), str(r["post_id"])))
    vectors = np.asarray([r[VECTOR_FIELD] for r in rows], dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    times = np.asarray([int(r["created_at"]) for r in rows], dtype=np.int64)
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    block = 512
    for start in range(0, len(rows), block):
        end = min(start + block, len(rows))
        # rows are time-sorted: only later rows within the window can link
        last = int(np.searchsorted(times, times[end - 1] + window_ms, side="right"))
        sims = vectors[start:end] @ vectors[start:last].T
        close = np.abs(times[start:end, None] - times[None, start:last]) <= window_ms
        for i, j in zip(*np.nonzero((sims >= threshold) & close), strict=True):
            a, b = find(start + int(i)), find(start + int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)  # the root is the earliest member
    members: dict[int, list[int]] = {}
    for i in range(len(rows)):
        members.setdefault(find(i), []).append(i)
    groups = []
    for root, idx in members.items():
        if len(idx) < min_size:
            continue
        categories: dict[str, int] = {}
        for i in idx:
            cat = str(rows[i].get("category") or "")
            categories[cat] = categories.get(cat, 0) + 1
        groups.append(
            EventGroup(
                group_id=str(rows[root]["post_id"]),
                post_ids=[str(rows[i]["post_id"]) for i in idx],
                start_ms=int(times[idx[0]]),
                end_ms=int(times[idx[-1]]),
                categories=dict(sorted(categories.items(), key=lambda kv: -kv[1])),
            )
        )
    groups.sort(key=lambda g: (-len(g.post_ids), g.start_ms, g.group_id))
    return groups


def check_page(top_k: int, offset: int) -> None:
    if not 1 <= top_k <= MAX_TOP_K:
        raise SearchError(f"top_k must be 1..{MAX_TOP_K}, not {top_k}", status=422)
    if not 0 <= offset <= MAX_OFFSET:
        raise SearchError(f"offset must be 0..{MAX_OFFSET}, not {offset}", status=422)


def find_similar(
    settings: Settings, post_id: str | None = None, text: str | None = None, top_k: int = 10
) -> list[SimilarPost]:
    """Top-k posts by cosine similarity to a stored post or a text (one-shot helper)."""
    if (post_id is None) == (text is None):
        raise SearchError("give exactly one of post_id or text")
    with SearchService(settings) as service:
        if post_id is not None:
            return service.similar_to_post(post_id, top_k=top_k)
        return service.similar_to_query(text=text, top_k=top_k)
