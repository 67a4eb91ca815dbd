"""Helpers for tests that run real workers against the real broker and Milvus Lite."""

from __future__ import annotations

from pathlib import Path

from exporters.milvus import PostIndex, connect, disconnect
from streams.broker import LocalBroker, free_port
from streams.output_reader import OutputReader
from streams.producer import produce
from streams.samples import SamplePost
from streams.settings import LOCAL_BROKER_PROFILE, Settings
from streams.worker_process import WorkerProcess, worker_env


def start_worker(settings: Settings, log: Path, **extra_env: str) -> WorkerProcess:
    """A worker subprocess configured like ``settings`` (not started)."""
    return WorkerProcess(worker_env(settings, free_port(), **{"max_batch": "16", **extra_env}), log)


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
