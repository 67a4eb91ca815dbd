"""Milvus: the post-embedding collection, a batching upsert sink, and similarity queries.

Milvus Lite (a local ``.db`` path) by default; any Milvus server by URI. Writes are
upserts keyed by ``post_id`` so a replay after a crash duplicates nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import (
    DataNotMatchException,
    DataTypeNotMatchException,
    MilvusException,
    MilvusUnavailableException,
    ParamError,
)

from exporters.base import BackpressureError, BatchingSink, RowsRejectedError

log = logging.getLogger(__name__)

VECTOR_FIELD = "embedding"
SCALAR_FIELDS: dict[str, tuple[DataType, dict[str, Any]]] = {
    "created_at": (DataType.INT64, {}),
    "platform": (DataType.VARCHAR, {"max_length": 64}),
    "category": (DataType.VARCHAR, {"max_length": 64}),
    "sentiment": (DataType.VARCHAR, {"max_length": 16}),
    "popularity": (DataType.FLOAT, {"nullable": True}),
    "modality_mask": (DataType.INT32, {}),
    "bundle_version": (DataType.VARCHAR, {"max_length": 64}),
}
OUTPUT_FIELDS = ["post_id", *SCALAR_FIELDS]


WRITE_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 5.0
_UNAVAILABLE = ("connect", "unavailable", "timeout", "deadline", "rate limit", "ratelimit")


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", "") or exc or type(exc).__name__)


def milvus_error(exc: BaseException, action: str) -> Exception:
    """A Milvus client error as the writer classifies it: rows refused for what they hold
    (:class:`RowsRejectedError`), Milvus busy or unreachable (:class:`BackpressureError`),
    or anything else as it is (retried a bounded number of times)."""
    text = f"Milvus {action} failed: {type(exc).__name__}: {_message(exc)}"
    if isinstance(exc, DataNotMatchException | DataTypeNotMatchException | ParamError):
        return RowsRejectedError(text)
    if isinstance(exc, MilvusUnavailableException | ConnectionError | TimeoutError):
        return BackpressureError(text, retry_after=1.0)
    if isinstance(exc, MilvusException) and any(w in _message(exc).lower() for w in _UNAVAILABLE):
        return BackpressureError(text, retry_after=1.0)
    if isinstance(exc, ValueError | TypeError | OverflowError):
        return RowsRejectedError(text)
    return RuntimeError(text)


class SchemaMismatchError(RuntimeError):
    """An existing collection's schema differs from what postpulse writes."""


@dataclass(frozen=True)
class EmbeddingRow:
    """One post's fused embedding and its filterable fields."""

    post_id: str
    embedding: np.ndarray
    created_at: int
    platform: str
    category: str
    sentiment: str
    popularity: float | None
    modality_mask: int
    bundle_version: str

    def to_entity(self) -> dict[str, Any]:
        """The row as Milvus expects it."""
        return {
            "post_id": self.post_id,
            VECTOR_FIELD: self.embedding.astype(np.float32).tolist(),
            "created_at": self.created_at,
            "platform": self.platform[:64],
            "category": self.category[:64],
            "sentiment": self.sentiment,
            "popularity": self.popularity,
            "modality_mask": self.modality_mask,
            "bundle_version": self.bundle_version[:64],
        }


def is_milvus_lite(uri: str) -> bool:
    """True for a Milvus Lite file path, False for a server URI."""
    return not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def connect(uri: str, token: str = "") -> MilvusClient:
    """A client for a Milvus server URI or a Milvus Lite file path (parent dirs created)."""
    if is_milvus_lite(uri):
        Path(uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    return MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)


def disconnect(client: MilvusClient, uri: str) -> None:
    """Close ``client``; for Milvus Lite also stop the in-process server so the file's
    lock is released (otherwise it is held until the process exits)."""
    client.close()
    if is_milvus_lite(uri):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(Path(uri).expanduser()))


def _describe(field: dict[str, Any]) -> tuple[str, int | None, int | None, bool]:
    params = field.get("params", {})
    dtype = field["type"]
    dim = params.get("dim")
    max_len = params.get("max_length")
    return (
        DataType(dtype).name,
        int(dim) if dim is not None else None,
        int(max_len) if max_len is not None else None,
        bool(field.get("is_primary", False)),
    )


def index_params(
    index_type: str, hnsw_m: int = 16, hnsw_ef_construction: int = 200
) -> dict[str, Any]:
    """Build parameters of the vector index (HNSW: graph degree and build depth)."""
    if index_type.upper() == "HNSW":
        return {"M": hnsw_m, "efConstruction": hnsw_ef_construction}
    if index_type.upper() == "IVF_FLAT":
        return {"nlist": 1024}
    return {}


def ensure_collection(
    client: MilvusClient,
    name: str,
    dim: int,
    index_type: str = "HNSW",
    build_params: dict[str, Any] | None = None,
) -> None:
    """Create the posts collection if missing; raise if an existing one differs."""
    expected: dict[str, tuple[str, int | None, int | None, bool]] = {
        "post_id": ("VARCHAR", None, 128, True),
        VECTOR_FIELD: ("FLOAT_VECTOR", dim, None, False),
    }
    for field_name, (dtype, params) in SCALAR_FIELDS.items():
        expected[field_name] = (dtype.name, None, params.get("max_length"), False)
    if client.has_collection(name):
        info = client.describe_collection(name)
        actual = {f["name"]: _describe(f) for f in info["fields"]}
        if actual != expected:
            diffs = [
                f"{k}: has {actual.get(k)}, needs {expected.get(k)}"
                for k in sorted(set(actual) | set(expected))
                if actual.get(k) != expected.get(k)
            ]
            raise SchemaMismatchError(
                f"Milvus collection {name!r} exists with an incompatible schema ("
                + "; ".join(diffs)
                + "). Use another collection name (POSTPULSE_MILVUS_COLLECTION) or drop it."
            )
        client.load_collection(name)
        return
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("post_id", DataType.VARCHAR, is_primary=True, max_length=128)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    for field_name, (dtype, params) in SCALAR_FIELDS.items():
        schema.add_field(field_name, dtype, **params)
    index = client.prepare_index_params()
    index.add_index(
        field_name=VECTOR_FIELD,
        index_type=index_type,
        metric_type="COSINE",
        params=index_params(index_type) if build_params is None else build_params,
    )
    try:
        client.create_collection(
            name, schema=schema, index_params=index, consistency_level="Strong"
        )
    except MilvusException:
        # two workers starting together: the other one created it first; check it
        if not client.has_collection(name):
            raise
        ensure_collection(client, name, dim, index_type, build_params)
        return
    log.info("created Milvus collection %s (dim %d, %s)", name, dim, index_type)


class MilvusEmbeddingSink(BatchingSink[EmbeddingRow]):
    """Upserts post embeddings in batches. ``flush_writes`` flushes after each upsert and
    delete, so that what Milvus acknowledged survives its restart: Milvus Lite keeps
    unflushed rows in memory only and loses them (benchmarks/milvus_durability.py), a
    server's WAL keeps them (and a server limits flushes). None: on for a Milvus Lite
    file ``uri``, off for a server URI (a ``milvus-lite server`` is one: set it on)."""

    name = "milvus"

    def __init__(
        self,
        client: MilvusClient,
        collection: str,
        dim: int,
        max_rows: int = 256,
        index_type: str = "HNSW",
        uri: str | None = None,
        build_params: dict[str, Any] | None = None,
        flush_writes: bool | None = None,
    ) -> None:
        super().__init__(max_rows)
        if flush_writes is None:
            flush_writes = uri is not None and is_milvus_lite(uri)
        self.flush_writes = flush_writes
        self.uri = uri
        self.client = client
        self.collection = collection
        self.dim = dim
        self.index_type = index_type
        self.build_params = build_params

    def setup(self) -> None:
        ensure_collection(
            self.client, self.collection, self.dim, self.index_type, self.build_params
        )

    def write_batch(self, batch: list[EmbeddingRow]) -> None:
        # Within a batch the last write of a post wins, as it would across batches.
        latest = {row.post_id: row for row in batch}
        try:
            self.client.upsert(
                self.collection, [r.to_entity() for r in latest.values()], timeout=WRITE_TIMEOUT_S
            )
            if self.flush_writes:
                self.client.flush(self.collection, timeout=WRITE_TIMEOUT_S)
                stored = self._stored(list(latest))
        except Exception as exc:
            raise milvus_error(exc, "upsert") from exc
        if self.flush_writes and len(stored) < len(latest):
            raise BackpressureError(
                f"Milvus lost {len(latest) - len(stored)} of the {len(latest)} rows it "
                "acknowledged before the flush (restarted in between?): writing them again",
                retry_after=1.0,
            )

    def _stored(self, post_ids: list[str]) -> set[str]:
        """Which of ``post_ids`` Milvus holds now (a strong read: the flush just done
        made them durable only if they are still there). A Milvus Lite server restarted
        between the upsert and the flush acknowledged both and lost the rows: the
        client's own reconnect-and-retry sends the flush to the new process. The new
        process also holds the collection released: it is loaded once and read again."""
        try:
            rows = self._get(post_ids)
        except MilvusException as exc:
            message = _message(exc).lower()
            if "released" not in message and "not loaded" not in message:
                raise
            self.client.load_collection(self.collection, timeout=WRITE_TIMEOUT_S)
            rows = self._get(post_ids)
        return {str(row["post_id"]) for row in rows}

    def _get(self, post_ids: list[str]) -> list[dict[str, Any]]:
        return list(
            self.client.get(
                self.collection,
                ids=post_ids,
                output_fields=["post_id"],
                timeout=WRITE_TIMEOUT_S,
                consistency_level="Strong",
            )
        )

    def delete(self, post_ids: list[str]) -> None:
        """Remove rows by post id (a post whose analysis could not be published)."""
        try:
            self.client.delete(self.collection, ids=post_ids, timeout=WRITE_TIMEOUT_S)
            if self.flush_writes:
                self.client.flush(self.collection, timeout=WRITE_TIMEOUT_S)
                kept = self._stored(post_ids)
        except Exception as exc:
            raise milvus_error(exc, "delete") from exc
        if self.flush_writes and kept:
            raise BackpressureError(
                f"Milvus still holds {len(kept)} of the {len(post_ids)} rows it deleted "
                "(restarted before the flush?): deleting them again",
                retry_after=1.0,
            )

    def check(self) -> None:
        try:
            self.client.has_collection(self.collection, timeout=PROBE_TIMEOUT_S)
        except Exception as exc:
            raise BackpressureError(f"Milvus unreachable: {_message(exc)}") from exc

    def close(self) -> None:
        if self.uri is None:
            self.client.close()
        else:
            disconnect(self.client, self.uri)


@dataclass(frozen=True)
class SimilarPost:
    """One search hit."""

    post_id: str
    score: float
    fields: dict[str, Any]


class PostIndex:
    """Read side of the collection: fetch embeddings, count, search by vector."""

    def __init__(self, client: MilvusClient, collection: str) -> None:
        self.client = client
        self.collection = collection
        client.load_collection(collection)

    def count(self) -> int:
        """Number of posts stored."""
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def post_ids(self, limit: int = 16384) -> set[str]:
        """All stored post ids (up to ``limit``)."""
        ids: set[str] = set()
        iterator = self.client.query_iterator(
            self.collection, batch_size=1000, limit=limit, filter="", output_fields=["post_id"]
        )
        while True:
            page = iterator.next()
            if not page:
                iterator.close()
                return ids
            ids.update(row["post_id"] for row in page)

    def get(self, post_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Stored rows (embedding included) by id; missing ids are absent."""
        if not post_ids:
            return {}
        rows = self.client.get(
            self.collection, ids=post_ids, output_fields=[*OUTPUT_FIELDS, VECTOR_FIELD]
        )
        return {row["post_id"]: dict(row) for row in rows}

    def search(
        self,
        vectors: np.ndarray,
        top_k: int = 10,
        filter_expr: str = "",
        offset: int = 0,
        search_params: dict[str, Any] | None = None,
    ) -> list[list[SimilarPost]]:
        """Cosine top-k (after skipping ``offset`` hits) for each query vector, one Milvus
        call for the whole batch."""
        params: dict[str, Any] = {"metric_type": "COSINE", "params": dict(search_params or {})}
        if offset:
            params["offset"] = offset
        results = self.client.search(
            self.collection,
            data=[v.astype(np.float32).tolist() for v in vectors],
            limit=top_k,
            filter=filter_expr,
            output_fields=OUTPUT_FIELDS,
            search_params=params,
        )
        return [
            [
                SimilarPost(
                    post_id=str(hit["post_id"] if "post_id" in hit else hit["id"]),
                    score=float(hit["distance"]),
                    fields=dict(hit.get("entity", {})),
                )
                for hit in hits
            ]
            for hits in results
        ]
