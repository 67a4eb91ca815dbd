"""Search latency in Milvus Lite at 100k stored posts: the HNSW index (the default)
against an exact FLAT scan of the same rows, one query per call against batches of 32,
and with a filter. Ratios within one run; p50/p99 per query in milliseconds.

Run alone: ``python -m benchmarks.search --rows 100000`` (``make bench`` runs it too).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from exporters.milvus import EmbeddingRow, MilvusEmbeddingSink, connect
from streams.search import SearchFilters, SearchService
from streams.settings import Settings

CATEGORIES = ["sports", "news", "food", "travel", "music", "tech"]
T0 = 1_767_571_200_000


def synthetic_rows(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[EmbeddingRow]]:
    """``rows`` post rows whose vectors sit around 500 topic centres (as real posts
    cluster by subject), over 30 days, in six categories."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(500, dim)).astype(np.float32)
    topic = rng.integers(0, len(centres), rows)
    vectors = centres[topic] + 0.6 * rng.normal(size=(rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = [
        EmbeddingRow(
            post_id=f"b{i:07d}",
            embedding=vectors[i],
            created_at=T0 + int(rng.integers(0, 30 * 86_400_000)),
            platform="bench",
            category=CATEGORIES[int(topic[i]) % len(CATEGORIES)],
            sentiment="neutral",
            popularity=float(rng.random()),
            modality_mask=1,
            bundle_version="bench",
        )
        for i in range(rows)
    ]
    return vectors, out


def _store(uri: str, collection: str, index: str, rows: list[EmbeddingRow], dim: int) -> float:
    sink = MilvusEmbeddingSink(
        connect(uri), collection, dim, max_rows=2000, index_type=index, uri=uri
    )
    sink.setup()
    start = time.perf_counter()
    for row in tqdm(rows, desc=f"insert {index}", unit="row", leave=False):
        sink.add(row)
    sink.flush()
    sink.client.flush(collection)  # seal the segments so the index covers them
    sink.client.load_collection(collection)
    seconds = time.perf_counter() - start
    sink.close()
    return seconds


def _latencies(
    service: SearchService, queries: np.ndarray, batch: int, top_k: int, filters: SearchFilters
) -> tuple[list[float], list[list[str]]]:
    per_query: list[float] = []
    ids: list[list[str]] = []
    service.search(queries[:batch], filters, top_k)  # warm-up
    for start in range(0, len(queries), batch):
        chunk = queries[start : start + batch]
        t = time.perf_counter()
        pages = service.search(chunk, filters, top_k)
        per_query += [(time.perf_counter() - t) / len(chunk)] * len(chunk)
        ids += [[h.post_id for h in page] for page in pages]
    return per_query, ids


def _ms(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1000
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}


def bench_search(
    rows: int = 100_000, dim: int = 128, queries: int = 256, top_k: int = 10
) -> dict[str, Any]:
    """HNSW vs FLAT, single vs batched, unfiltered vs filtered; recall@k of HNSW
    against the exact FLAT answers."""
    vectors, stored = synthetic_rows(rows, dim)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, rows, queries)
    qs = vectors[picks] + 0.3 * rng.normal(size=(queries, dim)).astype(np.float32)
    workdir = Path(tempfile.mkdtemp(prefix="postpulse-search-bench-"))
    try:
        results: dict[str, Any] = {"rows": rows, "dim": dim, "queries": queries, "top_k": top_k}
        answers: dict[str, list[list[str]]] = {}
        category = SearchFilters(categories=("news",), since_ms=T0 + 10 * 86_400_000)
        for index in ("HNSW", "FLAT"):
            uri = str(workdir / f"{index}.db")
            insert_s = _store(uri, "bench", index, stored, dim)
            settings = Settings(milvus_uri=uri, milvus_collection="bench", milvus_index_type=index)
            with SearchService(settings) as service:
                single, ids = _latencies(service, qs, 1, top_k, SearchFilters())
                batched, _ = _latencies(service, qs, 32, top_k, SearchFilters())
                filtered, filtered_ids = _latencies(service, qs, 1, top_k, category)
            answers[index] = ids
            answers[index + "-filtered"] = filtered_ids
            results[index.lower()] = {
                "insert_rows_per_s": rows / insert_s,
                "single_ms": _ms(single),
                "batched_32_ms_per_query": _ms(batched),
                "filtered_ms": _ms(filtered),
            }
        hnsw, flat = results["hnsw"], results["flat"]

        def recall(approx: list[list[str]], exact: list[list[str]]) -> float:
            return float(
                np.mean(
                    [
                        len(set(a) & set(b)) / max(1, len(b))
                        for a, b in zip(approx, exact, strict=True)
                    ]
                )
            )

        results["recall_at_k"] = recall(answers["HNSW"], answers["FLAT"])
        results["filtered_recall_at_k"] = recall(answers["HNSW-filtered"], answers["FLAT-filtered"])
        results["hnsw_vs_flat_p50"] = hnsw["single_ms"]["p50"] / flat["single_ms"]["p50"]
        results["batched_vs_single_p50"] = (
            hnsw["batched_32_ms_per_query"]["p50"] / hnsw["single_ms"]["p50"]
        )
        results["filtered_vs_unfiltered_p50"] = (
            hnsw["filtered_ms"]["p50"] / hnsw["single_ms"]["p50"]
        )
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def describe(r: dict[str, Any]) -> str:
    h, f = r["hnsw"], r["flat"]
    return (
        f"search:        {r['rows']:,} posts ({r['dim']}-d): HNSW p50 {h['single_ms']['p50']:.2f} ms, "
        f"p99 {h['single_ms']['p99']:.2f} ms vs FLAT p50 {f['single_ms']['p50']:.2f} ms "
        f"(x{r['hnsw_vs_flat_p50']:.2f}); batches of 32 x{r['batched_vs_single_p50']:.2f} per "
        f"query; filtered x{r['filtered_vs_unfiltered_p50']:.2f}; recall@{r['top_k']} "
        f"{r['recall_at_k']:.3f} (filtered {r['filtered_recall_at_k']:.3f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128, help="the trained bundle's embedding")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args(argv)
    result = bench_search(args.rows, args.dim, args.queries)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(describe(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
