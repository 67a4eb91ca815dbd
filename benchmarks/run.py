"""postpulse benchmarks, one run, ratios against baselines measured in the same run.

(a) end to end on the real broker: posts/s and p50/p99 latency from produce to the
    Milvus upsert, with batching (``max_batch`` 32) against one post per batch;
(b) encoders: batched ONNX Runtime against per-item PyTorch eager on the same inputs;
(c) trends, media decoding, speech and OCR paths (benchmarks/trends.py, media.py);
(d) search in Milvus Lite at 100k posts: HNSW against FLAT (benchmarks/search.py).

Absolute numbers vary from machine to machine and run to run; the ratios are the
result. Run: ``make bench`` (writes benchmarks/results/latest.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import media, search, trends, validation
from encoders.bundle import load_manifest
from encoders.image import preprocess_image, synthetic_image
from encoders.registry import get_encoder_spec
from encoders.serving import ServedBundle
from encoders.text import TextTokenizer
from streams.broker import LocalBroker, ensure_topics, free_port
from streams.output_reader import OutputReader
from streams.producer import produce
from streams.samples import valid_posts
from streams.settings import LOCAL_BROKER_PROFILE, Settings
from streams.topics import all_topic_names
from streams.worker_process import WorkerProcess


def _percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
    }


def bench_end_to_end(
    bundle: Path,
    posts: int,
    max_batch: int,
    workdir: Path,
    flush_writes: bool | None = None,
    values: list[bytes] | None = None,
    env: dict[str, str] | None = None,
    name: str | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """Produce ``posts`` posts at once (or ``rate`` a second) to a ready worker; time until
    all are in Milvus.
    ``flush_writes`` sets the worker's ``milvus_flush_writes`` (None: its default);
    ``values`` are the records to send (default: ``posts`` synthetic valid posts, all
    of which must be analysed), ``env`` more worker settings, ``name`` the run's files."""
    if name is None:
        name = f"{max_batch}" if flush_writes is None else f"{max_batch}-flush-{flush_writes}"
    flush_env = {} if flush_writes is None else {"POSTPULSE_MILVUS_FLUSH_WRITES": str(flush_writes)}
    flush_env.update(env or {})
    if values is None:
        values = [s.value for s in valid_posts(posts, seed=99)]
    posts = len(values)
    with LocalBroker(log_file=workdir / "broker.log") as broker:
        settings = Settings(broker_url=broker.url, bundle_path=bundle)
        ensure_topics([broker.bootstrap], all_topic_names(settings), settings.topic_partitions)
        worker = WorkerProcess(
            {
                "POSTPULSE_BROKER_URL": broker.url,
                "POSTPULSE_BUNDLE_PATH": str(bundle),
                "POSTPULSE_MILVUS_URI": str(workdir / f"milvus-{name}.db"),
                "POSTPULSE_DATA_DIR": str(workdir / f"data-{name}"),
                "POSTPULSE_WEB_PORT": str(port := free_port()),
                "POSTPULSE_MAX_BATCH": str(max_batch),
                "POSTPULSE_MAX_WAIT_MS": "50",
                **flush_env,
            },
            workdir / f"worker-{name}.log",
        ).start()
        reader = OutputReader(
            [broker.bootstrap], settings.topic_analyses, settings.topic_dlq, LOCAL_BROKER_PROFILE
        )
        try:
            worker.wait_ready()
            reader.poll(100)  # join the reader's group before the clock starts
            start_ms = time.time() * 1000
            if rate is None:
                produce(
                    values,
                    [broker.bootstrap],
                    settings.topic_posts,
                    LOCAL_BROKER_PROFILE,
                    progress=False,
                )
            else:
                produce_paced(values, [broker.bootstrap], settings.topic_posts, rate)
            if not reader.wait_for(lambda o: len(o.analyses) >= posts, timeout_s=900):
                raise RuntimeError(f"only {len(reader.outputs.analyses)}/{posts} analysed")
            stages = worker_stage_seconds(port)
        finally:
            reader.close()
            worker.stop()
    out = reader.outputs
    # analysis records are published after the Milvus upsert: their broker timestamp
    # bounds "written to Milvus"; the post's produce time is processed_at - latency.
    latencies = [
        (out.analysis_written_ms[pid] - (a.processed_at_ms - a.latency_ms)) / 1000
        for pid, a in out.analyses.items()
    ]
    last_ms = max(out.analysis_written_ms.values())
    elapsed = (last_ms - start_ms) / 1000
    return {
        "posts": posts,
        "rate": rate,
        "max_batch": max_batch,
        "elapsed_s": elapsed,
        "posts_per_s": posts / elapsed,
        "latency_s": _percentiles(latencies),
        "stage_seconds": stages,
        "stage_share_of_elapsed": {k: v / elapsed for k, v in stages.items()},
    }


def produce_paced(values: list[bytes], bootstrap: list[str], topic: str, rate: float) -> None:
    """Send ``values`` at ``rate`` messages a second (each sent on its own schedule, not
    in bursts), then wait for every ack."""
    from kafka import KafkaProducer

    from streams.producer import post_key

    producer = KafkaProducer(bootstrap_servers=bootstrap, **LOCAL_BROKER_PROFILE.kafka_producer)
    try:
        start = time.perf_counter()
        futures = []
        for i, value in enumerate(values):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(producer.send(topic, key=post_key(value), value=value))
            producer.flush()
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()


def worker_stage_seconds(port: int) -> dict[str, float]:
    """The worker's summed seconds per pipeline stage and per encoder, from its
    ``/metrics`` page (``postpulse_stage_duration_seconds``, ``..._encoder_...``)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "postpulse_stage_duration_seconds_sum":
                out[sample.labels["stage"]] = sample.value
            elif sample.name == "postpulse_encoder_duration_seconds_sum":
                out[f"encoder_{sample.labels['modality']}"] = sample.value
    return out


def _onnx_vs_torch(
    n: int,
    onnx_batched: Callable[[], np.ndarray],
    torch_per_item: Callable[[int], Any],
) -> dict[str, Any]:
    """Time one batched ONNX call against ``n`` per-item PyTorch calls (after a warm-up)."""
    import torch

    with torch.no_grad():
        onnx_batched()
        torch_per_item(0)
        start = time.perf_counter()
        onnx_out = onnx_batched()
        onnx_s = time.perf_counter() - start
        start = time.perf_counter()
        rows = [torch_per_item(i) for i in range(n)]
        torch_s = time.perf_counter() - start
    diff = float(np.abs(torch.cat(rows).numpy() - onnx_out).max())
    return {
        "items": n,
        "onnx_batched_items_per_s": n / onnx_s,
        "torch_eager_per_item_items_per_s": n / torch_s,
        "speedup": torch_s / onnx_s,
        "max_abs_diff": diff,
    }


def bench_text_encoder(bundle: ServedBundle, n: int) -> dict[str, Any]:
    """MiniLM: batched ONNX Runtime vs per-sentence PyTorch eager."""
    import torch

    texts = [json.loads(s.value).get("text", "short caption") for s in valid_posts(n, seed=5)]
    module = get_encoder_spec(load_manifest(bundle.path).encoders["text"].name).build_module()
    tokenizer = TextTokenizer(bundle.path / "text" / "tokenizer.json")

    def one(i: int) -> Any:
        feed = tokenizer([texts[i]])
        return module(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]))

    return _onnx_vs_torch(n, lambda: bundle.text.encode(texts), one)


def bench_text_preprocessing(bundle: ServedBundle, n: int, repeats: int = 3) -> dict[str, Any]:
    """What social-media normalisation and token bags add to the text path: their time
    against the whole ``encode_with_tokens`` call that includes them (same texts, same run)."""
    from encoders.text import TokenBags, normalize_social

    extras = ["😂🔥", "https://t.co/abc123 via @someone", "#ThrowbackThursday &amp; more", ""]
    texts = [
        f"{json.loads(s.value).get('text', 'caption')} {extras[i % len(extras)]}"
        for i, s in enumerate(valid_posts(n, seed=6))
    ]
    tokenizer = bundle.text.tokenizer
    feed = tokenizer(texts)
    bundle.text.encode_with_tokens(texts)  # warm-up
    full = norm = bags = float("inf")
    for _ in range(repeats):  # best of: the least disturbed run
        start = time.perf_counter()
        bundle.text.encode_with_tokens(texts)
        full = min(full, time.perf_counter() - start)
        start = time.perf_counter()
        for t in texts:
            normalize_social(t)
        norm = min(norm, time.perf_counter() - start)
        start = time.perf_counter()
        TokenBags.empty(n, tokenizer.max_tokens).fill(
            list(range(n)), feed["input_ids"], tokenizer.special_ids
        )
        bags = min(bags, time.perf_counter() - start)
    return {
        "texts": n,
        "text_path_s": full,
        "normalize_social_s": norm,
        "token_bags_s": bags,
        "share_of_text_path": (norm + bags) / full,
        "slowdown_vs_without": full / max(full - norm - bags, 1e-9),
    }


def bench_image_encoder(bundle: ServedBundle, n: int) -> dict[str, Any]:
    """EfficientNet-Lite0: batched ONNX Runtime vs per-image PyTorch eager."""
    import torch

    pixels = np.stack([preprocess_image(synthetic_image(i)) for i in range(n)])
    module = get_encoder_spec(load_manifest(bundle.path).encoders["image"].name).build_module()
    return _onnx_vs_torch(
        n,
        lambda: bundle.image.encode(pixels),
        lambda i: module(torch.from_numpy(pixels[i : i + 1])),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--out", default="benchmarks/results/latest.json")
    parser.add_argument("--posts", type=int, default=400)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--search-rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    bundle_path = Path(args.bundle).resolve()
    served = ServedBundle(bundle_path)
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "provider": served.provider,
        "bundle_version": served.version,
    }
    print("encoders: batched ONNX Runtime vs per-item PyTorch eager ...")
    results["text_encoder"] = bench_text_encoder(served, args.texts)
    results["image_encoder"] = bench_image_encoder(served, args.images)
    results["text_preprocessing"] = bench_text_preprocessing(served, args.texts)
    results["validation"] = validation.bench_validation()
    print("trends: topics stage, trend counting, hashtag memory ...")
    results["trends"] = {
        "topics_stage": trends.bench_topics_stage(served, 128),
        "hashtag_memory": trends.bench_hashtag_memory(),
        "trend_gap_check": trends.bench_gap_tracking(),
        "emerging_topics": trends.bench_emerging_topics(served),
    }
    print("media: decode paths, temporal model, speech embedding, speech to text, OCR ...")
    results["video_decode"] = media.bench_video_decode()
    results["audio_decode"] = media.bench_audio_decode()
    results["temporal_model"] = media.bench_temporal_model(served)
    results["speech_embedding"] = media.bench_speech_embedding(served)
    results["speech_to_text"] = media.bench_speech_to_text(served)
    results["ocr"] = media.bench_ocr(served)
    del served
    print(f"search: Milvus Lite at {args.search_rows:,} posts, HNSW vs FLAT ...")
    results["search"] = search.bench_search(args.search_rows)
    workdir = Path(tempfile.mkdtemp(prefix="postpulse-bench-"))
    try:
        print("end to end on the local broker: one post per batch (baseline) ...")
        baseline = bench_end_to_end(bundle_path, args.posts, 1, workdir)
        print("end to end on the local broker: batches of up to 32 ...")
        batched = bench_end_to_end(bundle_path, args.posts, 32, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["end_to_end"] = {
        "baseline_batch_1": baseline,
        "batched_32": batched,
        "throughput_ratio": batched["posts_per_s"] / baseline["posts_per_s"],
        "p50_latency_ratio": batched["latency_s"]["p50"] / baseline["latency_s"]["p50"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    t, i, e = results["text_encoder"], results["image_encoder"], results["end_to_end"]
    print(
        f"text encoder:  ONNX batched {t['onnx_batched_items_per_s']:.0f}/s vs torch per-item "
        f"{t['torch_eager_per_item_items_per_s']:.0f}/s -> x{t['speedup']:.2f}"
    )
    print(
        f"image encoder: ONNX batched {i['onnx_batched_items_per_s']:.0f}/s vs torch per-item "
        f"{i['torch_eager_per_item_items_per_s']:.0f}/s -> x{i['speedup']:.2f}"
    )
    print(
        f"end to end:    batch 32 {batched['posts_per_s']:.1f} posts/s "
        f"(p50 {batched['latency_s']['p50']:.2f}s, p99 {batched['latency_s']['p99']:.2f}s) vs "
        f"batch 1 {baseline['posts_per_s']:.1f} posts/s "
        f"(p50 {baseline['latency_s']['p50']:.2f}s, p99 {baseline['latency_s']['p99']:.2f}s) "
        f"-> throughput x{e['throughput_ratio']:.2f}"
    )
    tp = results["text_preprocessing"]
    print(
        f"text prep:     normalisation + token bags are {tp['share_of_text_path']:.1%} of the "
        f"text path (x{tp['slowdown_vs_without']:.3f} vs without)"
    )
    ts, hm = results["trends"]["topics_stage"], results["trends"]["hashtag_memory"]
    print(
        f"trends:        topics stage {ts['topics_share_of_batch']:.1%} of a batch; counting "
        f"x{ts['counting_posts_per_s_vs_pipeline']:.1f} the pipeline's posts/s "
        f"(x{ts['counting_vs_exact_in_memory']:.0f} the time of a bare in-memory count); "
        f"space-saving memory x{hm['memory_ratio']:.3f} of an exact counter"
    )
    v, tm, se = results["video_decode"], results["temporal_model"], results["speech_embedding"]
    st, oc = results["speech_to_text"], results["ocr"]
    print(
        f"video decode:  keyframes {v['keyframe_decode_s']:.3f}s vs full {v['full_decode_s']:.3f}s "
        f"for {v['sampled_frames']} frames -> x{v['speedup']:.2f}"
    )
    print(f"temporal:      ONNX batched x{tm['speedup']:.2f} vs torch per video")
    print(f"speech emb.:   shared batches x{se['speedup']:.2f} vs one clip per call")
    print(
        f"speech->text:  batched x{st['speedup']:.2f} vs one clip per call "
        f"({st['batched_clips_per_s']:.1f} clips/s)"
    )
    print(
        f"OCR:           {oc['postpulse_images_per_s']:.1f} img/s, x{oc['speedup']:.2f} vs package default"
    )
    print(search.describe(results["search"]))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
