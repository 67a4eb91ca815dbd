"""The demo's multimodal mix end to end (issue 16): every lever together against the way
before, in one run, and the produce -> analysed latency at half the measured capacity.

The posts are the demo's: ``mixed_stream`` (about half text only, a fifth with a
picture, the rest text with a picture, a tenth with short videos or audio clips;
generated media at social-thumbnail sizes), all valid. Worker configurations, in order:

  A  before issue 16, as far as settings reach: fp32 bundle, sequential pipeline,
     ungated OCR, ONNX Runtime spinning, one padded text run per batch, one decode
     thread (``POSTPULSE_CPU_THREADS=1``, ONNX Runtime still on every core)
  B  every lever but int8: the defaults (overlap, OCR gate, sleeping threads, length
     buckets, decode pool)
  C  B with the int8 bundle

(The OCR models' move into postpulse's sessions is not a setting: A has it too, so A
is faster than the code before issue 16 and A -> C understates the gain.) Then C again
with the posts produced at half of C's measured posts/s, one at a time on their own
schedule, for the latency a steady stream sees. ``python -m benchmarks.multimodal``
prints the table and writes ``benchmarks/results/multimodal.json`` (about 5 minutes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.run import bench_end_to_end
from benchmarks.text_path import run_configs
from encoders.bundle import write_default_bundle
from streams.samples import mixed_stream
from streams.settings import Settings, compute_threads


def demo_mix(posts: int, seed: int = 7) -> list[bytes]:
    return [s.value for s in mixed_stream(posts, 0, seed=seed, av=posts // 10)]


def configs(cores: int) -> list[tuple[str, str, dict[str, str]]]:
    before = {
        "PIPELINE_OVERLAP": "false",
        "OCR_GATE_SIDE": "0",
        "ONNX_SPIN_WAIT": "true",
        "TEXT_LENGTH_BUCKETS": "false",
        "CPU_THREADS": "1",
        "INTRA_OP_THREADS": str(cores),
    }
    return [("A_before", "fp32", before), ("B_levers_fp32", "fp32", {}), ("C_all_int8", "int8", {})]


def bench_multimodal(bundle: Path, posts: int, int8_bundle: Path | None) -> dict[str, Any]:
    values = demo_mix(posts)
    work = Path(tempfile.mkdtemp(prefix="postpulse-multimodal-"))
    try:
        if int8_bundle is None:
            int8_bundle = work / "int8"
            print("exporting the int8 bundle (postpulse export --precision int8) ...")
            write_default_bundle(int8_bundle, precision="int8")
        bundles = {"fp32": bundle, "int8": int8_bundle}
        runs = run_configs(configs(compute_threads(Settings())), bundles, values, work)
        half = runs["C_all_int8"]["posts_per_s"] / 2
        print(f"end to end, paced at {half:.1f} posts/s (half of C's capacity) ...")
        paced = bench_end_to_end(
            bundles["int8"], len(values), 32, work, values=values, name="C_paced", rate=half
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a = runs["A_before"]["posts_per_s"]
    return {
        "posts": len(values),
        "runs": runs,
        "paced_at_half_capacity": paced,
        "vs_A_before": {name: run["posts_per_s"] / a for name, run in runs.items()},
        "int8_vs_fp32_with_levers": runs["C_all_int8"]["posts_per_s"]
        / runs["B_levers_fp32"]["posts_per_s"],
        "p50_latency_s_at_half_capacity": paced["latency_s"]["p50"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--int8-bundle", type=Path, help="an int8 bundle already exported")
    parser.add_argument("--posts", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/multimodal.json"))
    args = parser.parse_args(argv)
    result = bench_multimodal(args.bundle.resolve(), args.posts, args.int8_bundle)
    for name, run in result["runs"].items():
        print(
            f"{name:15} {run['posts_per_s']:6.1f} posts/s  x{result['vs_A_before'][name]:.2f}  "
            f"p50 {run['latency_s']['p50']:.2f}s (all produced at once)"
        )
    paced = result["paced_at_half_capacity"]
    print(
        f"C paced at {paced['rate']:.1f} posts/s: latency p50 {paced['latency_s']['p50']:.2f}s "
        f"p99 {paced['latency_s']['p99']:.2f}s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
