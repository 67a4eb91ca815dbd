"""Shared fixtures: a real model bundle, a real broker, Milvus Lite in temp dirs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from encoders.bundle import load_manifest, write_default_bundle
from encoders.serving import ServedBundle
from streams.broker import LocalBroker, ensure_topics
from streams.settings import Settings
from streams.topics import all_topic_names


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle ``make test`` built (POSTPULSE_TEST_BUNDLE), or a fresh export."""
    given = os.environ.get("POSTPULSE_TEST_BUNDLE")
    if given and (Path(given) / "manifest.json").is_file():
        path = Path(given).resolve()
        load_manifest(path)
        return path
    path = tmp_path_factory.mktemp("bundle") / "default"
    write_default_bundle(path)
    return path


@pytest.fixture(scope="session")
def served_bundle(bundle_path: Path) -> ServedBundle:
    """The bundle loaded on ONNX Runtime (CPU here)."""
    return ServedBundle(bundle_path, device="auto")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A real Kafka-compatible broker (tansu) on a free loopback port, stopped by PID."""
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with LocalBroker(log_file=log) as running:
        yield running


@pytest.fixture
def settings_for(tmp_path: Path, bundle_path: Path):  # type: ignore[no-untyped-def]
    """Builds Settings isolated in tmp_path, with unique topic names per test."""

    def make(broker: LocalBroker | None = None, prefix: str = "t", **overrides: object) -> Settings:
        values: dict[str, object] = {
            "bundle_path": bundle_path,
            "milvus_uri": str(tmp_path / "milvus.db"),
            "data_dir": tmp_path / "data",
            "topic_posts": f"{prefix}.posts",
            "topic_dlq": f"{prefix}.posts.dlq",
            "topic_analyses": f"{prefix}.post-analyses",
            "topic_trend_events": f"{prefix}.trend-events",
            "app_id": f"postpulse-{prefix}",
        }
        if broker is not None:
            values["broker_url"] = broker.url
        values.update(overrides)
        settings = Settings(**values)  # type: ignore[arg-type]
        if broker is not None:
            ensure_topics([broker.bootstrap], all_topic_names(settings), settings.topic_partitions)
        return settings

    return make
