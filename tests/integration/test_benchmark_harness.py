"""The benchmark harness computes what it claims (correctness only; never timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.gpu import bench_torch_proxy
from benchmarks.padding import compare
from benchmarks.run import bench_image_encoder, bench_text_encoder, bench_text_preprocessing
from benchmarks.search import bench_search
from benchmarks.trends import bench_gap_tracking, bench_hashtag_memory, bench_topics_stage
from encoders.bundle import load_manifest
from encoders.quantize import held_texts
from encoders.runtime import CPU
from encoders.serving import ServedBundle


def test_encoder_benchmarks_compare_the_same_outputs(served_bundle: ServedBundle) -> None:
    text = bench_text_encoder(served_bundle, 6)
    image = bench_image_encoder(served_bundle, 3)
    for result in (text, image):
        assert result["max_abs_diff"] <= 1e-4  # ONNX and PyTorch computed the same thing
        assert (
            result["onnx_batched_items_per_s"] > 0
            and result["torch_eager_per_item_items_per_s"] > 0
        )
        ratio = result["onnx_batched_items_per_s"] / result["torch_eager_per_item_items_per_s"]
        assert abs(result["speedup"] - ratio) <= 1e-9 * ratio


def test_text_preprocessing_benchmark_reports_consistent_shares(
    served_bundle: ServedBundle,
) -> None:
    result = bench_text_preprocessing(served_bundle, 16, repeats=1)
    assert result["texts"] == 16
    parts = result["normalize_social_s"] + result["token_bags_s"]
    assert parts > 0 and abs(result["share_of_text_path"] - parts / result["text_path_s"]) < 1e-9
    assert result["slowdown_vs_without"] >= 1.0


def test_trends_benchmark_measures_the_batch_it_counts(served_bundle: ServedBundle) -> None:
    result = bench_topics_stage(served_bundle, 24)
    assert result["posts"] == 24
    assert result["trend_events"] >= 2 * 24  # every post: volume + category (+ hashtag)
    assert 0 < result["topics_stage_s"] < result["batch_s"]
    assert (
        abs(result["topics_share_of_batch"] - result["topics_stage_s"] / result["batch_s"]) < 1e-9
    )
    memory = bench_hashtag_memory(distinct=20_000, capacity=100)
    assert memory["memory_ratio"] < 0.5  # 100 counters against 20,000
    gaps = bench_gap_tracking(posts=500, rounds=1)
    assert gaps["records"] == 1000  # volume + category per post, all of them counted
    assert gaps["gap_check_time_ratio"] > 0


def test_search_benchmark_compares_indexes_on_the_same_rows() -> None:
    result = bench_search(rows=1500, dim=16, queries=40, top_k=5)
    assert result["rows"] == 1500 and result["queries"] == 40
    for index in ("hnsw", "flat"):
        timing = result[index]
        assert 0 < timing["single_ms"]["p50"] <= timing["single_ms"]["p99"]
        assert timing["insert_rows_per_s"] > 0
    # HNSW answers are compared with the exact FLAT answers of the same queries
    assert 0.5 <= result["recall_at_k"] <= 1.0
    ratio = result["hnsw"]["single_ms"]["p50"] / result["flat"]["single_ms"]["p50"]
    assert abs(result["hnsw_vs_flat_p50"] - ratio) <= 1e-9 * ratio


def test_padding_benchmark_times_both_ways_on_the_same_takes(served_bundle: ServedBundle) -> None:
    texts = held_texts(40)
    row = compare(served_bundle.text, texts, (16,), rounds=2)["16"]
    assert served_bundle.text.buckets  # left on, as the worker has it
    for mode in ("on", "off"):
        assert len(row[mode]["items_per_s"]) == 2
        assert 0 < row[mode]["take_ms_p50"] <= row[mode]["take_ms_p95"]
    ratio = float(np.median(row["on"]["items_per_s"]) / np.median(row["off"]["items_per_s"]))
    assert abs(row["on_vs_off_items_per_s"] - ratio) <= 1e-9 * ratio


def test_gpu_script_runs_in_one_go_and_says_it_measured_the_cpu(bundle_path: Path) -> None:
    """``benchmarks/gpu.py --smoke`` as a GPU host would run it: one process, one JSON
    line on stdout. On this machine ONNX Runtime has no CUDA: every model is measured on
    the CPU provider and the result says that no GPU figure was taken."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--bundle", str(bundle_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])
    assert result["measured_on"] == [CPU] and result["gpu_measured"] is False
    assert "no ONNX figure here is a GPU figure" in result["note"]
    onnx = result["onnx_items_per_s"]
    for modality in load_manifest(bundle_path).encoders:
        assert onnx[modality]["provider"] == CPU
        assert all(onnx[modality][str(b)] > 0 for b in result["batches"]), onnx[modality]
    assert "skipped" in onnx["fusion"]  # the test bundle's fusion is untrained
    assert "skipped" in result["torch_cuda_fp16_proxy_items_per_s"]
    decode = result["image_decode_preprocess"]
    assert decode["one_thread_images_per_s"] > 0 and decode["all_cores_images_per_s"] > 0


def test_gpu_script_torch_proxy_runs_the_encoders_from_their_weights(bundle_path: Path) -> None:
    """The PyTorch proxy's code path, on the CPU in fp32 (on a GPU host: CUDA fp16)."""
    proxy = bench_torch_proxy(bundle_path, (2, 3), 0.0, 1, device="cpu")
    assert proxy["device"] == "cpu" and proxy["dtype"] == "float32"
    for modality in ("text", "image", "video"):
        assert all(proxy[modality][b] > 0 for b in ("2", "3")), proxy[modality]
