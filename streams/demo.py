"""``postpulse demo``: the whole pipeline on embedded defaults, then a summary.

Starts the local broker and a worker, generates sample posts (some deliberately
broken), produces them, waits until every one is analysed or dead-lettered, prints
counts, dead-letter reasons, throughput, latency, trending topics of a generated
two-day stream and similarity queries, and shuts everything down.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from encoders.bundle import load_manifest
from streams.broker import LocalBroker, ensure_topics, free_port
from streams.output_reader import CollectedOutputs, OutputReader
from streams.producer import produce
from streams.samples import SamplePost, broken_posts, mixed_stream, trend_stream
from streams.search import find_similar
from streams.settings import LOCAL_BROKER_PROFILE, Settings
from streams.stages.trends import ALL_POSTS
from streams.topics import all_topic_names, trends_changelog_topic
from streams.trending import ChangelogTrendReader, trends_query
from streams.worker_process import WorkerProcess


def run_demo(bundle: Path, workdir: Path, valid: int, broken: int, timeout_s: float) -> int:
    """Run the demo; returns the process exit code (0 when every post was accounted for)."""
    manifest = load_manifest(bundle)  # fail fast, with a clear message, before starting anything
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    if manifest.fusion.trained:
        # posts from the same synthetic world the demo model was trained on
        from encoders.training.synth import generate

        truth = generate(valid, seed=4242)
        samples = [
            SamplePost(json.dumps(p.doc).encode(), str(p.doc["post_id"]), p.category) for p in truth
        ]
        samples += broken_posts(broken, seed=8)
        random.Random(7).shuffle(samples)
    else:
        samples = mixed_stream(valid, broken, av=min(30, valid // 10))
    (workdir / "posts.jsonl").write_bytes(b"\n".join(s.value for s in samples) + b"\n")
    print(f"postpulse demo: {valid} valid + {broken} broken sample posts -> {workdir}/posts.jsonl")

    with LocalBroker(log_file=workdir / "broker.log") as broker:
        print(f"broker: tansu on {broker.url}")
        settings = Settings(
            broker_url=broker.url,
            bundle_path=bundle,
            milvus_uri=str(workdir / "milvus.db"),
            data_dir=workdir,
            web_port=free_port(),
        )
        ensure_topics([broker.bootstrap], all_topic_names(settings), settings.topic_partitions)
        env = {
            "POSTPULSE_BROKER_URL": settings.broker_url,
            "POSTPULSE_BUNDLE_PATH": str(bundle),
            "POSTPULSE_MILVUS_URI": settings.milvus_uri,
            "POSTPULSE_DATA_DIR": str(workdir),
            "POSTPULSE_WEB_PORT": str(settings.web_port),
        }
        worker = WorkerProcess(env, workdir / "worker.log").start()
        # trends are counted by their own worker (own Faust app and consumer group)
        trends_worker = WorkerProcess(
            env | {"POSTPULSE_WORKER_ROLE": "trends", "POSTPULSE_WEB_PORT": str(free_port())},
            workdir / "trends-worker.log",
        ).start()
        reader = OutputReader(
            [broker.bootstrap], settings.topic_analyses, settings.topic_dlq, LOCAL_BROKER_PROFILE
        )
        try:
            worker.wait_ready()
            trends_worker.wait_ready()
            print(
                f"worker: pid {worker.process.pid if worker.process else '?'}, metrics on "
                f"http://127.0.0.1:{settings.web_port}/metrics, log {workdir}/worker.log"
            )
            started = time.monotonic()
            produce(
                (s.value for s in samples),
                [broker.bootstrap],
                settings.topic_posts,
                LOCAL_BROKER_PROFILE,
                total=len(samples),
            )
            with tqdm(total=len(samples), unit="post", desc="analysed") as bar:

                def progress(outputs: object) -> None:
                    bar.n = reader.outputs.accounted
                    bar.refresh()

                complete = reader.wait_for(
                    lambda o: o.accounted >= len(samples), timeout_s, on_progress=progress
                )
            elapsed = time.monotonic() - started
            metrics = worker.metrics()
            first = reader.outputs  # the sample posts' outputs, before the trend stream
            outputs = CollectedOutputs(
                analyses=dict(first.analyses),
                analysis_written_ms=dict(first.analysis_written_ms),
                dead_letters=dict(first.dead_letters),
            )
            trend_lines = (
                _run_trends(settings, broker, reader, len(samples), timeout_s) if complete else []
            )
        finally:
            reader.close()
            code = worker.stop()
            trends_worker.stop()
    _print_summary(outputs, len(samples), elapsed, metrics)
    print("\n".join(trend_lines))
    labelled = [s for s in samples if s.topic and s.post_id in outputs.analyses]
    if manifest.fusion.trained and labelled:
        hits = sum(outputs.analyses[str(s.post_id)].category == s.topic for s in labelled)
        print(
            f"trained category head: {hits}/{len(labelled)} correct on these synthetic posts "
            f"({hits / len(labelled):.0%})"
        )
    if not complete:
        print(
            f"demo FAILED: only {outputs.accounted}/{len(samples)} posts accounted for "
            f"after {timeout_s:.0f}s (see {workdir}/worker.log)"
        )
        return 1
    _print_similarity(settings, reader.outputs)
    print(f"worker stopped cleanly (exit {code}); broker stopped. Done.")
    return 0


def _run_trends(
    settings: Settings, broker: LocalBroker, reader: OutputReader, before: int, timeout_s: float
) -> list[str]:
    """Produce two simulated days of hashtagged text posts with a burst and a new
    subject, wait until the trends agent has counted them, and describe the trends."""
    stream = trend_stream(days=2, every_min=12, burst_posts=40, emerging_posts=30)
    print(
        f"\ntrends: {len(stream.posts)} text posts over two simulated days (a burst, a new subject)"
    )
    produce(
        (p.value for p in stream.posts),
        [broker.bootstrap],
        settings.topic_posts,
        LOCAL_BROKER_PROFILE,
        total=len(stream.posts),
    )
    changelog = ChangelogTrendReader(
        [broker.bootstrap], trends_changelog_topic(settings), LOCAL_BROKER_PROFILE
    )
    try:
        reader.wait_for(lambda o: o.accounted >= before + len(stream.posts), timeout_s)
        deadline = time.monotonic() + 120
        counted = 0
        while time.monotonic() < deadline:
            snapshot = changelog.snapshot()
            day = max(snapshot.sizes(), default=0)
            counted = sum(  # the trend stream's posts (the samples are dated elsewhere)
                c.posts
                for start, c in snapshot.windows.get((day, ALL_POSTS), {}).items()
                if start + day > stream.start_ms
            )
            if counted >= len(stream.posts):
                break
            time.sleep(1)
    finally:
        changelog.close()
    lines = ["\n=== trends (postpulse trends --window 1h --at ...) ==="]
    if counted < len(stream.posts):
        return [*lines, f"only {counted} of {len(stream.posts)} posts counted in trends so far"]
    for label, at, window, kinds in (
        ("during the #eclipse burst", stream.burst_start_ms + 1_800_000, "1h", None),
        ("emerging topics, day 3", stream.emerging_start_ms + 7_200_000 - 1, "1d", ["emerging"]),
    ):
        body = trends_query(snapshot, settings, window=window, at_ms=at, kinds=kinds)
        top = ", ".join(
            f"{t['topic']} ({t['posts']} posts, score {t['score']:.1f})" for t in body["topics"][:3]
        )
        lines.append(
            f"{label} ({body['window']} window): {top or 'nothing above the minimum support'}"
        )
    return lines


def _print_summary(outputs: object, expected: int, elapsed: float, metrics: str) -> None:
    from streams.output_reader import CollectedOutputs

    assert isinstance(outputs, CollectedOutputs)
    analyses = list(outputs.analyses.values())
    reasons = Counter(d.reason.value for d in outputs.dead_letters.values())
    print("\n=== postpulse demo summary ===")
    print(f"posts produced:      {expected}")
    print(f"analysed:            {len(analyses)}")
    print(f"dead-lettered:       {len(outputs.dead_letters)}")
    for reason, n in sorted(reasons.items()):
        print(f"  {reason:<22} {n}")
    print(
        f"throughput:          {outputs.accounted / elapsed:.1f} posts/s over {elapsed:.1f}s "
        "(produce -> all outputs written, one worker)"
    )
    if analyses:
        lat = np.asarray([a.latency_ms for a in analyses])
        print(
            f"latency (produce -> analysed): p50 {np.percentile(lat, 50):.0f} ms, "
            f"p99 {np.percentile(lat, 99):.0f} ms"
        )
        mods = Counter("+".join(a.modalities) for a in analyses)
        print("modalities:          " + ", ".join(f"{k} {v}" for k, v in mods.most_common()))
        cats = Counter(a.category or "-" for a in analyses)
        print("categories:          " + ", ".join(f"{k} {v}" for k, v in cats.most_common()))
        pops = np.asarray([a.popularity for a in analyses if a.popularity is not None])
        if pops.size:
            print(
                f"popularity:          mean {pops.mean():.2f}, min {pops.min():.2f}, max {pops.max():.2f} "
                "(log engagement)"
            )
        sents = Counter(a.sentiment for a in analyses)
        print("sentiment:           " + ", ".join(f"{k} {v}" for k, v in sents.most_common()))
        print(f"bundle:              {analyses[0].bundle_version} ({analyses[0].fusion})")
    for line in metrics.splitlines():
        if line.startswith("postpulse_bundle_info{") and 'provider="' in line:
            provider = line.split('provider="', 1)[1].split('"', 1)[0]
            print(f"runtime:             ONNX Runtime, {provider}")


def _print_similarity(settings: Settings, outputs: object) -> None:
    from streams.output_reader import CollectedOutputs

    assert isinstance(outputs, CollectedOutputs)
    with_text = sorted(pid for pid, a in outputs.analyses.items() if "text" in a.modalities)
    if not with_text:
        return
    query = with_text[0]
    print(f"\nsimilar to {query}: {outputs.analyses[query].category} post")
    for hit in find_similar(settings, post_id=query, top_k=5):
        a = outputs.analyses.get(hit.post_id)
        print(f"  {hit.post_id:<20} score {hit.score:.3f}  {a.category if a else '?'}")
    text = "who won the football match tonight?"
    print(f"\nsimilar to the text {text!r}:")
    for hit in find_similar(settings, text=text, top_k=5):
        a = outputs.analyses.get(hit.post_id)
        print(f"  {hit.post_id:<20} score {hit.score:.3f}  {a.category if a else '?'}")
