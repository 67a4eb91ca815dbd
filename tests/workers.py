"""Helpers for tests that run real workers against the real broker and Milvus Lite."""

from __future__ import annotations

from pathlib import Path

from exporters.milvus import PostIndex, connect, disconnect
from streams.broker import LocalBroker, free_port
from streams.output_reader import OutputReader
from streams.producer import produce
from streams.samples import SamplePost
from streams.settings import LOCAL_BROKER_PROFILE, Settings
from streams.worker_process import WorkerProcess


def start_worker(settings: Settings, log: Path, **extra_env: str) -> WorkerProcess:
    """A worker subprocess configured like ``settings`` (not started)."""
    env = {
        "POSTPULSE_BROKER_URL": settings.broker_url,
        "POSTPULSE_BUNDLE_PATH": str(settings.bundle_path),
        "POSTPULSE_MILVUS_URI": settings.milvus_uri,
        "POSTPULSE_DATA_DIR": str(settings.data_dir),
        "POSTPULSE_WEB_PORT": str(free_port()),
        "POSTPULSE_TOPIC_POSTS": settings.topic_posts,
        "POSTPULSE_TOPIC_DLQ": settings.topic_dlq,
        "POSTPULSE_TOPIC_ANALYSES": settings.topic_analyses,
        "POSTPULSE_TOPIC_TREND_EVENTS": settings.topic_trend_events,
        "POSTPULSE_APP_ID": settings.app_id,
        "POSTPULSE_MAX_BATCH": "16",
    }
    env.update({f"POSTPULSE_{k.upper()}": v for k, v in extra_env.items()})
    return WorkerProcess(env, log)


def milvus_ids(settings: Settings) -> tuple[int, set[str]]:
    client = connect(settings.milvus_uri)
    try:
        index = PostIndex(client, settings.milvus_collection)
        return index.count(), index.post_ids()
    finally:
        disconnect(client, settings.milvus_uri)


def reader(broker: LocalBroker, settings: Settings) -> OutputReader:
    return OutputReader(
        [broker.bootstrap], settings.topic_analyses, settings.topic_dlq, LOCAL_BROKER_PROFILE
    )


def produce_all(broker: LocalBroker, settings: Settings, samples: list[SamplePost]) -> None:
    produce(
        [s.value for s in samples],
        [broker.bootstrap],
        settings.topic_posts,
        LOCAL_BROKER_PROFILE,
        progress=False,
    )
