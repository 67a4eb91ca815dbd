"""Similar posts by post id or free text (``postpulse similar``)."""

from __future__ import annotations

import numpy as np

from exporters.milvus import PostIndex, SimilarPost, connect, disconnect
from streams.settings import Settings


class SimilarityError(RuntimeError):
    """The query cannot be answered (no collection, unknown post...)."""


def find_similar(
    settings: Settings, post_id: str | None = None, text: str | None = None, top_k: int = 10
) -> list[SimilarPost]:
    """Top-k posts by cosine similarity of fused embeddings; the query post is excluded."""
    if (post_id is None) == (text is None):
        raise SimilarityError("give exactly one of post_id or text")
    try:
        client = connect(settings.milvus_uri, settings.milvus_token.get_secret_value())
    except Exception as exc:
        raise SimilarityError(
            f"cannot open Milvus at {settings.milvus_uri}: {exc} "
            "(a Milvus Lite file is locked while a worker uses it: stop the worker, "
            "or serve it with 'milvus-lite server' / use a Milvus server URI)"
        ) from exc
    try:
        if not client.has_collection(settings.milvus_collection):
            raise SimilarityError(
                f"no collection {settings.milvus_collection!r} at {settings.milvus_uri}: "
                "run a worker first"
            )
        client.load_collection(settings.milvus_collection)
        index = PostIndex(client, settings.milvus_collection)
        if post_id is not None:
            rows = index.get([post_id])
            if post_id not in rows:
                raise SimilarityError(f"post {post_id!r} is not in {settings.milvus_collection!r}")
            query = np.asarray([rows[post_id]["embedding"]], dtype=np.float32)
            hits = index.search(query, top_k=top_k + 1)[0]
            return [h for h in hits if h.post_id != post_id][:top_k]
        from encoders.serving import ServedBundle

        bundle = ServedBundle(
            settings.bundle_path, settings.device, settings.intra_op_threads, ocr=False, stt=False
        )
        assert text is not None
        return index.search(bundle.embed_texts([text]), top_k=top_k)[0]
    finally:
        disconnect(client, settings.milvus_uri)
