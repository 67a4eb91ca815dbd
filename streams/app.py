"""The Faust app: topics, the post agent, and the worker's web pages.

Built by :func:`create_app` from explicit settings and components; nothing here reads
the environment.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from encoders.serving import ServedBundle
from exporters.milvus import MilvusEmbeddingSink, connect
from exporters.prometheus import CONTENT_TYPE, PipelineMetrics
from streams.outputs import OutputWriter
from streams.pipeline import PostPipeline
from streams.records import Envelope
from streams.settings import Settings, broker_profile
from streams.topics import raw_topic

log = logging.getLogger(__name__)


@dataclass
class WorkerComponents:
    """What the agent needs, built once per process."""

    settings: Settings
    bundle: ServedBundle
    pipeline: PostPipeline
    sink: MilvusEmbeddingSink
    metrics: PipelineMetrics
    executor: ThreadPoolExecutor


def build_components(
    settings: Settings, registry: CollectorRegistry | None = None
) -> WorkerComponents:
    """Load the bundle, connect Milvus (creating the collection if missing), make metrics."""
    bundle = ServedBundle(
        settings.bundle_path,
        settings.device,
        settings.intra_op_threads,
        ocr=settings.ocr_enabled,
        stt=settings.stt_enabled,
        stt_beam_size=settings.stt_beam_size,
    )
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
        uri=settings.milvus_uri,
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


def create_app(components: WorkerComponents) -> faust.App:
    """The postpulse Faust app with its agent and web pages."""
    settings = components.settings
    profile = broker_profile(settings)
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
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

    async def send_analysis(key: bytes | None, value: bytes) -> None:
        await (await analyses.send(key=key, value=value, force=True))

    async def send_dead_letter(key: bytes | None, value: bytes) -> None:
        await (await dead_letters.send(key=key, value=value, force=True))

    writer = OutputWriter(
        components.sink,
        send_analysis,
        send_dead_letter,
        components.metrics,
        executor=components.executor,
        max_backoff_s=settings.output_retry_max_s,
    )
    within = settings.max_wait_ms / 1000.0

    @app.agent(posts, name="process_posts", concurrency=1)
    async def process_posts(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        # noack_take: events are acked by us, after their outputs are durable.
        async for events in stream.noack_take(settings.max_batch, within=within):
            envelopes = [envelope_of(e) for e in events]
            outcome = await loop.run_in_executor(
                components.executor, components.pipeline.process, envelopes
            )
            await writer.write(outcome)
            for event in events:
                await stream.ack(event)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        mine = [tp for tp in assigned if tp.topic == settings.topic_posts]
        components.metrics.assigned_partitions.set(len(mine))
        log.info("consuming %d partition(s) of %s", len(mine), settings.topic_posts)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        components.metrics.assigned_partitions.set(0)

    @app.page("/metrics")
    async def metrics_page(self: Any, request: Any) -> Any:
        return self.bytes(components.metrics.render(), content_type=CONTENT_TYPE.split(";")[0])

    @app.page("/healthz")
    async def health_page(self: Any, request: Any) -> Any:
        return self.json({"status": "ok", "bundle_version": components.bundle.version})

    return app
