"""Does a Milvus Lite server keep the rows it acknowledged when it is stopped? Two
writers upsert batches of 15 rows (a fifth with 3 rows written before: redeliveries)
through ``MilvusEmbeddingSink`` and retry a failed batch, as the posts worker does,
while the server is stopped with SIGTERM for 10 s and started again on its folder;
then every written post id is looked up. One variable changes between the two runs: a
``flush`` after each upsert.

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


def run(flush: bool, work: Path, before_s: float = 15.0, down_s: float = 10.0) -> dict[str, Any]:
    server = MilvusLiteServer(work / "milvus", free_port("127.0.0.1"), work / "milvus.log").start()
    written: set[str] = set()
    lock, stop = threading.Lock(), threading.Event()

    def writer(number: int) -> None:
        rng, pick = np.random.default_rng(number), random.Random(number)
        client = connect(server.uri)
        sink = MilvusEmbeddingSink(client, COLLECTION, DIM, uri=server.uri)
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
                    if flush:
                        client.flush(COLLECTION)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/milvus_durability.json")
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
    Path(args.out).write_text(json.dumps({"runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
