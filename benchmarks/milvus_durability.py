"""Does a Milvus Lite server keep the rows it acknowledged when it is stopped? Two
writers upsert batches of 15 rows (a fifth with 3 rows written before: redeliveries)
through ``MilvusEmbeddingSink`` and retry a failed batch, as the posts worker does,
while the server is stopped with SIGTERM for 10 s and started again on its folder;
then every written post id is looked up. One variable changes between the two runs: the
sink's ``flush_writes`` (a flush after each upsert). Then what the flush costs the worker:
the end-to-end benchmark of ``benchmarks/run.py`` (a worker on the local broker and a
Milvus Lite file, batches of up to 32) with ``milvus_flush_writes`` off and on, in turns,
and what it does to searches of a Lite file afterwards.

Found with the chaos suite (issue 15): 15 analysed posts had no Milvus row after the
Milvus fault. ``python -m benchmarks.milvus_durability`` prints the table and writes
``benchmarks/results/milvus_durability.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run import bench_end_to_end
from exporters.milvus import EmbeddingRow, MilvusEmbeddingSink, PostIndex, connect
from streams.broker import free_port
from streams.worker_process import MilvusLiteServer

DIM = 64
COLLECTION = "durability"


def _row(i: int, rng: np.random.Generator) -> EmbeddingRow:
    return EmbeddingRow(
        post_id=f"post-{i:07d}",
        embedding=rng.random(DIM, dtype=np.float32),
        created_at=1_450_000_000_000 + i,
        platform="twitter",
        category="politics",
        sentiment="neutral",
        popularity=0.5,
        modality_mask=1,
        bundle_version="durability",
    )


def run(
    flush: bool, work: Path, before_s: float = 15.0, down_s: float = 10.0, min_before: int = 0
) -> dict[str, Any]:
    """Write for ``before_s`` (and until ``min_before`` rows are acknowledged, at most a
    minute more), stop the server for ``down_s``, write ``before_s`` more, look up."""
    server = MilvusLiteServer(work / "milvus", free_port("127.0.0.1"), work / "milvus.log").start()
    written: set[str] = set()
    lock, stop = threading.Lock(), threading.Event()

    def writer(number: int) -> None:
        rng, pick = np.random.default_rng(number), random.Random(number)
        client = connect(server.uri)
        sink = MilvusEmbeddingSink(client, COLLECTION, DIM, uri=server.uri, flush_writes=flush)
        if number == 0:
            sink.setup()
        else:
            time.sleep(3)  # the collection exists by then
        next_id = number * 1_000_000
        while not stop.is_set():
            batch = [_row(next_id + i, rng) for i in range(15)]
            with lock:
                again = pick.sample(sorted(written), 3) if written and pick.random() < 0.2 else []
            batch += [_row(int(post_id.split("-")[1]), rng) for post_id in again]
            while not stop.is_set():
                try:
                    sink.write_batch(batch)
                    break
                except Exception:  # Milvus down: the worker retries the same batch
                    time.sleep(2)
            else:
                break
            with lock:
                written.update(r.post_id for r in batch)
            next_id += 15

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(2)]
    try:
        for t in threads:
            t.start()
        time.sleep(before_s)
        waited_until = time.monotonic() + 60
        while len(written) < min_before and time.monotonic() < waited_until:
            time.sleep(0.2)
        with lock:
            before = set(written)
        server.stop()
        time.sleep(down_s)
        server.start()
        time.sleep(before_s)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        client = connect(server.uri)
        try:
            stored = PostIndex(client, COLLECTION).post_ids(limit=10**7)
        finally:
            client.close()
    finally:
        stop.set()
        server.stop()
    missing = written - stored
    return {
        "flush_after_upsert": flush,
        "rows_acknowledged": len(written),
        "acknowledged_before_the_stop": len(before),
        "missing": len(missing),
        "missing_of_those_before_the_stop": len(missing & before),
        "missing_of_those_after_the_restart": len(missing - before),
    }


def throughput(bundle: Path, posts: int, rounds: int) -> dict[str, Any]:
    """Worker posts/s and p50 latency with the flush off and on, ``rounds`` turns each."""
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(rounds):
        for flush in (False, True):
            with tempfile.TemporaryDirectory(prefix="postpulse-milvus-e2e-") as tmp:
                result = bench_end_to_end(bundle, posts, 32, Path(tmp), flush_writes=flush)
            runs["on" if flush else "off"].append(result)

    def median(key: str, of: str) -> float:
        values = [r[key] if key != "p50" else r["latency_s"]["p50"] for r in runs[of]]
        return float(np.median(values))

    return {
        "posts": posts,
        "runs": runs,
        "posts_per_s_ratio": median("posts_per_s", "on") / median("posts_per_s", "off"),
        "p50_latency_ratio": median("p50", "on") / median("p50", "off"),
    }


def search_after(flush: bool, work: Path, batches: int = 600, size: int = 16) -> dict[str, Any]:
    """Write ``batches`` batches to a Milvus Lite file through the sink, then time
    top-10 searches: flushed segments are sealed and indexed, unflushed rows are one
    growing segment that every search scans."""
    rng = np.random.default_rng(7)
    uri = str(work / "search.db")
    client = connect(uri)
    try:
        sink = MilvusEmbeddingSink(client, COLLECTION, DIM, uri=uri, flush_writes=flush)
        sink.setup()
        start = time.perf_counter()
        for b in range(batches):
            sink.write_batch([_row(b * size + i, rng) for i in range(size)])
        write_s = time.perf_counter() - start
        client.load_collection(COLLECTION)
        times = []
        for _ in range(50):
            query = rng.random((1, DIM), dtype=np.float32).tolist()
            start = time.perf_counter()
            client.search(COLLECTION, query, limit=10)
            times.append(time.perf_counter() - start)
    finally:
        client.close()
    return {
        "flush_after_upsert": flush,
        "rows": batches * size,
        "write_ms_per_batch": write_s / batches * 1000,
        "search_p50_ms": float(np.median(times)) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/milvus_durability.json")
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--posts", type=int, default=800, help="posts per end-to-end run")
    parser.add_argument("--rounds", type=int, default=4, help="end-to-end runs per setting")
    args = parser.parse_args(argv)
    results = []
    for flush in (False, True):
        with tempfile.TemporaryDirectory(prefix="postpulse-milvus-") as tmp:
            results.append(run(flush, Path(tmp)))
    print(f"{'flush':>6} {'acknowledged':>12} {'missing':>8} {'before stop':>12} {'after':>6}")
    for r in results:
        print(
            f"{r['flush_after_upsert']!s:>6} {r['rows_acknowledged']:>12} {r['missing']:>8} "
            f"{r['missing_of_those_before_the_stop']:>12} "
            f"{r['missing_of_those_after_the_restart']:>6}"
        )
    searches = []
    for flush in (False, True):
        with tempfile.TemporaryDirectory(prefix="postpulse-milvus-") as tmp:
            searches.append(search_after(flush, Path(tmp)))
    off, on = searches
    print(
        f"Lite file, {on['rows']} rows in batches of 16: flush x"
        f"{on['write_ms_per_batch'] / off['write_ms_per_batch']:.1f} write time per batch "
        f"({on['write_ms_per_batch']:.1f} vs {off['write_ms_per_batch']:.1f} ms), search p50 x"
        f"{on['search_p50_ms'] / off['search_p50_ms']:.2f} "
        f"({on['search_p50_ms']:.1f} vs {off['search_p50_ms']:.1f} ms)"
    )
    cost = throughput(Path(args.bundle).resolve(), args.posts, args.rounds)
    print(
        f"worker with the flush: x{cost['posts_per_s_ratio']:.2f} posts/s, "
        f"x{cost['p50_latency_ratio']:.2f} p50 latency (median of {args.rounds} runs each)"
    )
    Path(args.out).write_text(
        json.dumps({"runs": results, "search": searches, "worker": cost}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
