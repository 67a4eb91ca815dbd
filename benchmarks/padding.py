"""Pad less (issue 16): length buckets against one padded run per batch, in one run.

The text encoder pads every text of a run to the run's longest one, and a transformer
spends as much on a padding position as on a token. With ``buckets`` on, a batch's
texts are ordered by token count and cut into the runs that :func:`length_runs` finds
cheapest; off, a batch is one run padded to its longest text (the old way at the
worker's batch of 32).

Parts, each changing one variable:

(a) the cost model's constants: ONNX Runtime times of single runs of a controlled grid
    of shapes (rows x width, a repeated real token id: the cost does not depend on the
    ids; synthetic input on purpose), fitted to ``time = a + b * rows * width + c * rows
    * width ** 2``; ``a / b`` is what one run costs in padded positions
    (``RUN_COST_TOKENS``) and ``b / c`` the width at which attention doubles a
    position's cost (``ATTENTION_WIDTH``);
(b) real posts in arrival order, cut into takes of 32, 64 and 128: buckets off vs on
    at each take size, alternating in rounds: items/s and the time to encode one take
    (the latency a larger take adds);
(c) the same for a mixed set of real-length texts (election tweets and Reuters news,
    3:1), where lengths vary far more;
(d) how much the embeddings move: the largest absolute difference, buckets on vs off.

As a reference only, (b) also reports the 3,000 texts sorted by token count before
being cut into batches of 32, which no stream can do (it would wait for every post).

``python -m benchmarks.padding`` prints the table and writes
``benchmarks/results/padding.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from encoders.quantize import held_texts
from encoders.serving import ServedBundle
from encoders.text import ATTENTION_WIDTH, RUN_COST_TOKENS, TextEncoder
from encoders.training.corpora import load_corpus

TAKES = (32, 64, 128)


def _encoder(bundle: Path) -> TextEncoder:
    return ServedBundle(bundle, device="cpu", ocr=False, stt=False).text


def fit_run_cost(encoder: TextEncoder, repeats: int = 5) -> dict[str, Any]:
    """Least-squares fit of one run's time to ``a + b * rows * width`` over a grid."""
    token = int(encoder.tokenizer(["news"])["input_ids"][0, 1])
    shapes = [(r, w) for r in (1, 2, 4, 8, 16, 32) for w in (8, 16, 32, 64, 128, 256)]
    times = []
    for rows, width in shapes:
        feed = {
            "input_ids": np.full((rows, width), token, dtype=np.int64),
            "attention_mask": np.ones((rows, width), dtype=np.int64),
        }
        encoder.model.run(feed)  # warm this shape
        best = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder.model.run(feed)
            best.append(time.perf_counter() - start)
        times.append(float(np.median(best)))
    x = np.array([[1.0, r * w, r * w * w] for r, w in shapes])
    y = np.array(times)
    # relative errors count alike for small and large runs
    (a, b, c), *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    predicted = x @ np.array([a, b, c])
    return {
        "run_s": float(a),
        "position_s": float(b),
        "run_cost_tokens": float(a / b),
        "attention_width": float(b / c) if c > 0 else None,
        "max_relative_error": float(np.max(np.abs(predicted - y) / y)),
        "in_code": {"run_cost_tokens": RUN_COST_TOKENS, "attention_width": ATTENTION_WIDTH},
        "shapes": len(shapes),
    }


def encode_in_takes(
    encoder: TextEncoder, texts: list[str], take: int, buckets: bool
) -> dict[str, Any]:
    """Encode ``texts`` in arrival-order takes of ``take``, buckets on or off: items/s
    and the seconds each take took."""
    encoder.buckets = buckets
    per_take = []
    start = time.perf_counter()
    for first in range(0, len(texts), take):
        t0 = time.perf_counter()
        encoder.encode(texts[first : first + take], chunk=take)
        per_take.append(time.perf_counter() - t0)
    return {"items_per_s": len(texts) / (time.perf_counter() - start), "take_s": per_take}


def compare(encoder: TextEncoder, texts: list[str], takes: tuple[int, ...], rounds: int):
    """Buckets off vs on at each take size, alternating within each round."""
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {str(t): {"off": [], "on": []} for t in takes}
    for _ in range(rounds):
        for take in takes:
            for mode in ("off", "on"):
                raw[str(take)][mode].append(encode_in_takes(encoder, texts, take, mode == "on"))
    out: dict[str, Any] = {}
    for take, modes in raw.items():
        row: dict[str, Any] = {}
        for mode, passes in modes.items():
            rates = [p["items_per_s"] for p in passes]
            latencies = np.concatenate([p["take_s"] for p in passes])
            row[mode] = {
                "items_per_s": rates,
                "take_ms_p50": float(np.percentile(latencies, 50) * 1000),
                "take_ms_p95": float(np.percentile(latencies, 95) * 1000),
            }
        row["on_vs_off_items_per_s"] = float(
            np.median(row["on"]["items_per_s"]) / np.median(row["off"]["items_per_s"])
        )
        out[take] = row
    return out


def bench_padding(
    bundle: Path, n: int = 3000, mixed: int = 1000, rounds: int = 3
) -> dict[str, Any]:
    encoder = _encoder(bundle)
    tweets = [str(p["text"]) for p in load_corpus("election-tweets-2016")[:n]]
    real_length = held_texts(mixed)
    rng = np.random.default_rng(0)
    real_length = [real_length[i] for i in rng.permutation(len(real_length))]  # arrival mix
    (
        encode_in_takes(encoder, tweets[:256], 32, True),
        encode_in_takes(encoder, tweets[:256], 32, False),
    )  # warm
    cost = fit_run_cost(encoder)
    tweets_cmp = compare(encoder, tweets, TAKES, rounds)
    mixed_cmp = compare(encoder, real_length, (32,), rounds)
    counts = encoder.tokenizer(tweets)["attention_mask"].sum(axis=1)
    sorted_all = [tweets[i] for i in np.argsort(counts, kind="stable")]
    sorted_rates = [
        encode_in_takes(encoder, sorted_all, 32, False)["items_per_s"] for _ in range(rounds)
    ]
    encoder.buckets = False
    off = encoder.encode(real_length[:256], chunk=32)
    encoder.buckets = True
    on = encoder.encode(real_length[:256], chunk=32)
    baseline = float(np.median(tweets_cmp["32"]["off"]["items_per_s"]))
    return {
        "tweets": len(tweets),
        "mixed_texts": len(real_length),
        "rounds": rounds,
        "run_cost_fit": cost,
        "tweets_by_take": tweets_cmp,
        "mixed_by_take": mixed_cmp,
        "tweets_sorted_first_items_per_s": sorted_rates,
        "sorted_first_vs_arrival_take32_off": float(np.median(sorted_rates)) / baseline,
        "max_abs_diff_on_vs_off": float(np.abs(on - off).max()),
    }


def describe(r: dict[str, Any]) -> str:
    fit = r["run_cost_fit"]
    lines = [
        f"cost fit: one run = {fit['run_cost_tokens']:.0f} padded positions, attention width "
        f"{fit['attention_width'] or float('inf'):.0f} (worst relative error "
        f"{fit['max_relative_error']:.2f}; the code uses {fit['in_code']})"
    ]
    base = float(np.median(r["tweets_by_take"]["32"]["off"]["items_per_s"]))
    for label, table in (("tweets", r["tweets_by_take"]), ("mixed", r["mixed_by_take"])):
        for take, row in table.items():
            on_rate = float(np.median(row["on"]["items_per_s"]))
            extra = f", x{on_rate / base:.2f} of tweets take 32 off" if label == "tweets" else ""
            lines.append(
                f"{label} take {take}: buckets on x{row['on_vs_off_items_per_s']:.2f} items/s "
                f"vs off{extra}; take p50 {row['off']['take_ms_p50']:.0f} -> "
                f"{row['on']['take_ms_p50']:.0f} ms, p95 {row['off']['take_ms_p95']:.0f} -> "
                f"{row['on']['take_ms_p95']:.0f} ms"
            )
    lines.append(
        f"reference: all tweets sorted first x{r['sorted_first_vs_arrival_take32_off']:.2f}; "
        f"embeddings on vs off max abs diff {r['max_abs_diff_on_vs_off']:.1e}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--mixed", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/padding.json")
    args = parser.parse_args(argv)
    result = bench_padding(Path(args.bundle).resolve(), args.texts, args.mixed, args.rounds)
    print(describe(result))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
