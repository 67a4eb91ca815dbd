"""The Faust app: topics, the post agent, and the worker's web pages.

Built by :func:`create_app` from explicit settings and components; nothing here reads
the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from encoders.serving import ServedBundle
from exporters.milvus import MilvusEmbeddingSink, connect, index_params
from exporters.prometheus import CONTENT_TYPE, PipelineMetrics
from streams.health import DrainTimeout, WorkerHealth
from streams.outputs import OutputPolicy, OutputWriter, dead_letter_budget
from streams.pipeline import BatchOutcome, PostPipeline, served_bundle
from streams.records import Envelope
from streams.settings import Settings, bootstrap_servers, broker_profile
from streams.spill import SpillFile
from streams.stages.trends import StagedStore, TrendEvent
from streams.topics import TRENDS_TABLE, raw_topic, trends_app_id, trends_changelog_topic
from streams.trending import (
    ChangelogTrendReader,
    TrendEventFetcher,
    TrendTracker,
    parse_at,
    trend_config,
    trends_query,
)

log = logging.getLogger(__name__)

# With the pipeline overlapped, at most this many batches that are processed and not
# yet written wait for the write in flight (then they are written together).
OVERLAP_MAX_BATCHES = 4


@dataclass
class WorkerComponents:
    """What the agent needs, built once per process."""

    settings: Settings
    bundle: ServedBundle | None  # None for ``worker_role="trends"`` (no encoders, no Milvus)
    pipeline: PostPipeline | None
    sink: MilvusEmbeddingSink | None
    metrics: PipelineMetrics
    executor: ThreadPoolExecutor
    health: WorkerHealth = field(default_factory=WorkerHealth)


def build_components(
    settings: Settings, registry: CollectorRegistry | None = None
) -> WorkerComponents:
    """Load the bundle, connect Milvus (creating the collection if missing), make metrics.
    A trends worker needs neither."""
    health = WorkerHealth(stall_after_s=settings.liveness_stall_s)
    if settings.worker_role == "trends":
        return WorkerComponents(
            settings=settings,
            bundle=None,
            pipeline=None,
            sink=None,
            metrics=PipelineMetrics(registry or CollectorRegistry()),
            executor=ThreadPoolExecutor(max_workers=3, thread_name_prefix="postpulse"),
            health=health,
        )
    bundle = served_bundle(settings)
    metrics = PipelineMetrics(registry or CollectorRegistry())
    metrics.bundle_info.labels(
        bundle.version, bundle.manifest.fusion.strategy, bundle.provider
    ).set(1)
    client = connect(settings.milvus_uri, settings.milvus_token.get_secret_value())
    sink = MilvusEmbeddingSink(
        client,
        settings.milvus_collection,
        bundle.dim,
        max_rows=settings.milvus_flush_rows,
        index_type=settings.milvus_index_type,
        uri=settings.milvus_uri,
        flush_writes=settings.milvus_flush_writes,
        build_params=index_params(
            settings.milvus_index_type, settings.milvus_hnsw_m, settings.milvus_hnsw_ef_construction
        ),
    )
    sink.setup()
    log.info(
        "bundle %s (%s) on %s; Milvus %s/%s",
        bundle.version,
        bundle.manifest.fusion.strategy,
        bundle.provider,
        settings.milvus_uri,
        settings.milvus_collection,
    )
    return WorkerComponents(
        settings=settings,
        bundle=bundle,
        pipeline=PostPipeline(settings, bundle),
        sink=sink,
        metrics=metrics,
        executor=ThreadPoolExecutor(max_workers=2, thread_name_prefix="postpulse"),
        health=health,
    )


def envelope_of(event: Any) -> Envelope:
    """The raw message behind a Faust event."""
    message = event.message
    value = message.value if isinstance(message.value, bytes) else event.value
    return Envelope(
        value=value if isinstance(value, bytes) else bytes(value or b""),
        key=message.key if isinstance(message.key, bytes) else None,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )


def offset_ranges(envelopes: list[Envelope]) -> dict[int, tuple[int, int]]:
    """(first, last) offset per partition of a batch, for health and drain logs."""
    ranges: dict[int, tuple[int, int]] = {}
    for env in envelopes:
        if env.partition is None or env.offset is None:
            continue
        first, last = ranges.get(env.partition, (env.offset, env.offset))
        ranges[env.partition] = (min(first, env.offset), max(last, env.offset))
    return ranges


CHANGELOG_ATTEMPTS = 8
GAP_FILL_ATTEMPTS = 5


async def write_changelog(table: Any, written: list[tuple[int, bytes, bytes | None]]) -> None:
    """Send each (partition, key, value) to the table's changelog and wait until the
    broker has them; failed sends are sent again (bounded: after
    ``CHANGELOG_ATTEMPTS`` the error is raised and the batch stays unacked)."""
    pending = written
    for attempt in range(1, CHANGELOG_ATTEMPTS + 1):
        futures = [
            table.send_changelog(p, k, v, value_serializer="raw" if v is None else None)
            for p, k, v in pending
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [w for w, r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
        if not failed:
            return
        errors = {type(r).__name__ for r in results if isinstance(r, BaseException)}
        log.warning(
            "%d changelog record(s) not written (%s); attempt %d of %d",
            len(failed),
            ", ".join(sorted(errors)),
            attempt,
            CHANGELOG_ATTEMPTS,
        )
        pending = failed
        await asyncio.sleep(min(0.5 * 2**attempt, 10.0))
    raise RuntimeError(f"{len(pending)} changelog record(s) could not be written")


def add_trend_counting(
    app: faust.App, settings: Settings, trend_topic: Any, metrics: PipelineMetrics
) -> TrendTracker:
    """The trends table, the agent that counts trend events into it, and the timer that
    refreshes the trend gauges (``worker_role="trends"`` only)."""
    # keyed by table key bytes (JSON), values JSON bytes: the changelog is plain JSON
    table = app.Table(
        TRENDS_TABLE,
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.topic_partitions,
    )
    staged = StagedStore(table.data)  # the table's store: written back per batch
    tracker = TrendTracker(staged, trend_config(settings), metrics, settings.trend_top_k)

    async def count_trends(stream: Any) -> None:
        # Batches, one partition at a time: each key a batch touched is written to the
        # table and its changelog once (per event it would be ~4 records per post-topic,
        # which fills Faust's producer buffer and stalls every agent of the worker).
        async for events in stream.noack_take(settings.trend_batch, within=0.5):
            by_partition: dict[int, list[Any]] = {}
            for event in events:
                by_partition.setdefault(event.message.partition, []).append(event)
            written: list[tuple[int, bytes, bytes | None]] = []
            try:
                for partition, group in by_partition.items():
                    for event in group:
                        gap = tracker.gap_before(partition, event.message.offset)
                        if gap is not None:
                            for raw in await fill_gap(partition, *gap):
                                tracker.handle(raw, partition)
                        tracker.handle(event.value, partition)
                    tracker.end_batch(partition)  # watermark, next offset: after the windows
                    for key, value in staged.drain():
                        tracker.written(key, value)
                        written.append((partition, key, value))
            except BaseException:
                # nothing of the batch is kept (the table is written below, only when
                # every partition's group is done): it stays unacked and is counted again
                staged.drain()
                tracker.reset()
                raise
            for _, key, value in written:  # keys carry their partition: no group reads another's
                if value is None:
                    table.data.pop(key, None)
                else:
                    table.data[key] = value
            # the events are acked only once their windows are in the changelog: acked
            # first, a worker killed before the producer flushed could lose their counts
            # (docs/decisions.md: "The trends agent acks events after ...")
            await write_changelog(table, written)
            for event in events:
                await stream.ack(event)
            await asyncio.sleep(0)

    fetcher = TrendEventFetcher(
        bootstrap_servers(settings.broker_url),
        settings.topic_trend_events,
        broker_profile(settings),
    )

    async def fill_gap(partition: int, start: int, end: int) -> list[bytes]:
        """Trend events the consumer skipped, read from the broker (bounded attempts;
        then the batch fails unacked, as when its changelog cannot be written)."""
        log.warning(
            "trend-events[%d]: offsets %d..%d were never delivered to the agent; "
            "reading them from the broker",
            partition,
            start,
            end - 1,
        )
        loop = asyncio.get_running_loop()
        for attempt in range(1, GAP_FILL_ATTEMPTS + 1):
            try:
                values = await loop.run_in_executor(None, fetcher.fetch, partition, start, end)
            except Exception as exc:  # the broker away: try again, boundedly
                log.warning("gap fill attempt %d failed: %s: %s", attempt, type(exc).__name__, exc)
                fetcher.close()
                await asyncio.sleep(min(0.5 * 2**attempt, 10.0))
                continue
            metrics.trend_gap_records.inc(len(values))
            return values
        raise RuntimeError(f"trend-events[{partition}] offsets {start}..{end - 1} unreadable")

    async def refresh_trends() -> None:
        tracker.refresh()

    app.agent(trend_topic, name="count_trends", concurrency=1)(count_trends)
    app.timer(settings.trend_refresh_s)(refresh_trends)
    return tracker


def create_app(components: WorkerComponents) -> faust.App:
    """The postpulse Faust app with its agent and web pages."""
    settings = components.settings
    profile = broker_profile(settings)
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    role = settings.worker_role
    app = faust.App(
        trends_app_id(settings) if role == "trends" else settings.app_id,
        broker=settings.broker_url,
        store="memory://",
        autodiscover=False,
        datadir=str(settings.data_dir / "faust"),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        topic_partitions=settings.topic_partitions,
        **profile.faust,
    )
    posts = raw_topic(app, settings.topic_posts, settings)
    analyses = raw_topic(app, settings.topic_analyses, settings)
    dead_letters = raw_topic(app, settings.topic_dlq, settings)
    trend_topic = raw_topic(app, settings.topic_trend_events, settings)
    reader = ChangelogTrendReader(
        bootstrap_servers(settings.broker_url), trends_changelog_topic(settings), profile
    )

    async def send_analysis(key: bytes | None, value: bytes) -> None:
        await (await analyses.send(key=key, value=value, force=True))

    async def send_dead_letter(key: bytes | None, value: bytes) -> None:
        await (await dead_letters.send(key=key, value=value, force=True))

    async def send_trend_events(events: list[TrendEvent]) -> None:
        # enqueue in order (a window deduplicates by source offset), then await the acks
        pending = [
            await trend_topic.send(key=e.topic.encode(), value=e.to_json(), force=True)
            for e in events
        ]
        await asyncio.gather(*pending)

    async def send_trend_event(key: bytes | None, value: bytes) -> None:
        await (await trend_topic.send(key=key, value=value, force=True))

    health = components.health
    writer = OutputWriter(
        components.sink,
        send_analysis,
        send_dead_letter,
        components.metrics,
        executor=components.executor,
        policy=OutputPolicy(
            retry_budget_s=settings.output_retry_budget_s,
            max_attempts=settings.output_max_attempts,
            max_backoff_s=settings.output_retry_max_s,
            max_original_bytes=dead_letter_budget(
                profile.max_request_bytes, settings.dlq_max_original_bytes
            ),
        ),
        send_trend_events=send_trend_events,
        send_trend_event=send_trend_event,
        spill=SpillFile(
            settings.data_dir / "spill" / "spill.jsonl",
            settings.spill_max_bytes,
            settings.spill_backups,
        ),
        health=health,
    )
    within = settings.max_wait_ms / 1000.0

    async def process_posts(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        pipeline = components.pipeline
        assert pipeline is not None, "a posts worker has a pipeline"
        Taken = tuple[list[Any], BatchOutcome]

        async def take() -> AsyncIterator[Taken]:
            # noack_take: events are acked by us, after their outputs are durable.
            async for events in stream.noack_take(settings.max_batch, within=within):
                envelopes = [envelope_of(e) for e in events]
                health.batch_started(len(envelopes), offset_ranges(envelopes))
                outcome = await loop.run_in_executor(
                    components.executor, pipeline.process, envelopes
                )
                yield events, outcome

        async def finish(group: list[Taken]) -> bool:
            """Write the outputs of consecutive batches, then ack their messages in
            order; False when a drain ran out of time first (the batches stay
            uncommitted and are redelivered)."""
            try:
                await writer.write_all([outcome for _, outcome in group])
            except DrainTimeout as exc:
                health.drain_timed_out = True
                log.error("stopping with outputs unwritten: %s", exc)
                return False
            for events, _ in group:
                for event in events:
                    await stream.ack(event)
                health.batch_done()
            return True

        if not settings.pipeline_overlap:  # take, process, write, ack: one at a time
            async for taken in take():
                if not await finish([taken]):
                    return
                if health.drain_requested:
                    log.info("drained: the last batch's outputs are written; stopping")
                    return
            return

        # Overlapped: the next batch is validated, decoded and encoded while the last
        # ones are written. One write at a time, in the order the batches were taken;
        # the batches done while a write is slow go together into the next one (a group
        # commit: one Milvus flush), and the writer keeps going until none is left (a
        # batch must not wait for a next one that may never come). At most
        # OVERLAP_MAX_BATCHES wait, after which taking waits for the writer. Acks stay
        # in order, each after its outputs and every earlier batch's are durable.
        ready: list[Taken] = []

        async def write_ready() -> bool:
            while ready:
                group = ready[:]
                del ready[:]
                if not await finish(group):
                    return False
            return True

        def report(task: asyncio.Future[bool]) -> None:
            # raised again where the agent awaits the write; said now, as no next batch
            # may come to await it (liveness then turns red on the batch left in flight)
            if not task.cancelled() and task.exception() is not None:
                log.error("writing outputs failed: %r", task.exception())
                health.report_problem(f"writing outputs failed: {task.exception()!r}")

        writing: asyncio.Future[bool] | None = None
        try:
            async for taken in take():
                ready.append(taken)
                if writing is not None and (
                    writing.done() or len(ready) >= OVERLAP_MAX_BATCHES or health.drain_requested
                ):
                    done, writing = await writing, None
                    if not done:
                        return
                if writing is None and ready:
                    writing = asyncio.ensure_future(write_ready())
                    writing.add_done_callback(report)
                if health.drain_requested:
                    done = await writing if writing is not None else True
                    writing = None
                    if done:
                        log.info("drained: the last batches' outputs are written; stopping")
                    return
            if writing is not None:
                done, writing = await writing, None
                if not done:
                    return
            if ready:
                await write_ready()
        finally:
            if writing is not None and not writing.done():
                # the agent is stopping with a write in flight: let it end (bounded by
                # the writer's retry budget and the drain limit) so that its batches are
                # acked rather than done again by the next worker
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await writing

    async def measure_backlog() -> None:
        # records waiting on the assigned posts partitions: their end offsets minus the
        # next offset to do (after the last batch done there, else the fetch position);
        # liveness turns red when they wait with no batch taken (a consumer that stopped
        # fetching), which the in-flight check alone cannot see
        consumer = app.consumer
        mine = [tp for tp in consumer.assignment() if tp.topic == settings.topic_posts]
        if not mine:
            health.report_backlog(None)
            return
        try:
            ends = await asyncio.wait_for(consumer.highwaters(*mine), timeout=5.0)
            waiting = 0
            for tp in mine:
                done = health.done_next.get(tp.partition)
                start = done if done is not None else await consumer.position(tp)
                end = ends.get(tp)
                if end is not None and start is not None:
                    waiting += max(0, end - start)
        except Exception as exc:  # the broker away: unknown, not the worker's fault
            log.debug("backlog not measured: %s: %s", type(exc).__name__, exc)
            health.report_backlog(None)
            return
        health.report_backlog(waiting)

    # the trends agent runs in its own Faust app (own consumer group): sharing a consumer
    # with the posts agent, a restarted worker could stop fetching posts (see decisions)
    tracker = None
    if role == "posts":
        app.agent(posts, name="process_posts", concurrency=1)(process_posts)
        app.timer(min(15.0, max(1.0, settings.liveness_stall_s / 5)))(measure_backlog)
    else:
        tracker = add_trend_counting(app, settings, trend_topic, components.metrics)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        if tracker is not None:
            tracker.reset()
        source = settings.topic_posts if role == "posts" else settings.topic_trend_events
        mine = [tp for tp in assigned if tp.topic == source]
        components.metrics.assigned_partitions.set(len(mine))
        components.health.partitions_changed(len(mine))
        log.info("consuming %d partition(s) of %s", len(mine), source)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        components.metrics.assigned_partitions.set(0)
        components.health.partitions_changed(0)
        if tracker is not None:
            tracker.reset()

    @app.page("/metrics")
    async def metrics_page(self: Any, request: Any) -> Any:
        return self.bytes(components.metrics.render(), content_type=CONTENT_TYPE.split(";")[0])

    @app.page("/trends")
    async def trends_page(self: Any, request: Any) -> Any:
        query = request.query
        try:
            at = query.get("at")
            kinds = [k for k in query.get("kinds", "").split(",") if k]
            snapshot = await asyncio.get_running_loop().run_in_executor(
                components.executor, reader.snapshot
            )
            body = trends_query(
                snapshot,
                settings,
                window=query.get("window"),
                step=query.get("step"),
                top=int(query["top"]) if "top" in query else None,
                at_ms=parse_at(at) if at else None,
                kinds=kinds or None,
            )
        except (ValueError, KeyError) as exc:
            return self.json({"error": str(exc)}, status=400)
        except LookupError as exc:
            return self.json({"error": str(exc)}, status=404)
        except TimeoutError as exc:
            return self.json({"error": str(exc)}, status=503)
        return self.json(body)

    @app.page("/healthz")
    async def health_page(self: Any, request: Any) -> Any:
        alive, body = health.liveness()
        body.update(
            role=role, bundle_version=components.bundle.version if components.bundle else None
        )
        return self.json(body, status=200 if alive else 503)

    @app.page("/readyz")
    async def ready_page(self: Any, request: Any) -> Any:
        checks: dict[str, object] = {
            "partitions": health.partitions,
            "draining": health.drain_requested,
        }
        ready = health.partitions > 0 and not health.drain_requested
        if role == "posts":
            checks["bundle"] = components.bundle.version if components.bundle else None
            ready = ready and components.bundle is not None
            sink = components.sink
            try:
                if sink is None:
                    raise RuntimeError("no Milvus sink")
                await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(components.executor, sink.check),
                    timeout=10,
                )
                checks["milvus"] = "ok"
            except Exception as exc:
                checks["milvus"] = f"{type(exc).__name__}: {exc}"[:500]
                ready = False
        return self.json({"ready": ready, **checks}, status=200 if ready else 503)

    return app
