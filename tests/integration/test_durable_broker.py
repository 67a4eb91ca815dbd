"""The durable local broker: topics, records and a group's committed offsets survive a
restart of the broker process, and of the whole broker (S3 server included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streams.broker import LocalBroker, ensure_topics
from streams.settings import LOCAL_BROKER_PROFILE

pytestmark = pytest.mark.integration


def _produce(broker: LocalBroker, values: list[bytes]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=[broker.bootstrap], **LOCAL_BROKER_PROFILE.kafka_producer
    )
    try:
        futures = [producer.send("d.posts", value=v) for v in values]
        producer.flush()
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()


def _read_all(broker: LocalBroker) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=[broker.bootstrap], consumer_timeout_ms=4000)
    try:
        parts = [TopicPartition("d.posts", p) for p in range(2)]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        return [m.value for m in consumer]
    finally:
        consumer.close()


def test_the_log_and_committed_offsets_survive_restarts(tmp_path: Path) -> None:
    broker = LocalBroker(data_dir=tmp_path / "broker", log_file=tmp_path / "tansu.log").start()
    try:
        assert ensure_topics([broker.bootstrap], ["d.posts"], 2) == ["d.posts"]
        first = [f"v{i}".encode() for i in range(60)]
        _produce(broker, first)
        consumer = KafkaConsumer(
            bootstrap_servers=[broker.bootstrap],
            group_id="durable-g",
            enable_auto_commit=False,
            **LOCAL_BROKER_PROFILE.kafka_consumer,
        )
        part = TopicPartition("d.posts", 0)
        consumer.assign([part])
        consumer.commit({part: OffsetAndMetadata(7, "", -1)})
        consumer.close()

        broker.restart(down_s=0.5)  # the broker process only
        assert ensure_topics([broker.bootstrap], ["d.posts"], 2) == []  # still there
        assert sorted(_read_all(broker)) == sorted(first)
        _produce(broker, [b"after-restart"])
    finally:
        broker.stop()

    again = LocalBroker(data_dir=tmp_path / "broker", log_file=tmp_path / "tansu.log").start()
    try:  # everything stopped, started anew from the folder
        assert sorted(_read_all(again)) == sorted([*first, b"after-restart"])
        consumer = KafkaConsumer(
            bootstrap_servers=[again.bootstrap], group_id="durable-g", enable_auto_commit=False
        )
        assert consumer.committed(TopicPartition("d.posts", 0)) == 7
        consumer.close()
    finally:
        again.stop()


def test_the_in_memory_broker_forgets(tmp_path: Path) -> None:
    broker = LocalBroker().start()
    try:
        ensure_topics([broker.bootstrap], ["d.posts"], 2)
        _produce(broker, [b"x"])
        broker.restart()
        assert ensure_topics([broker.bootstrap], ["d.posts"], 2) == ["d.posts"]
    finally:
        broker.stop()
