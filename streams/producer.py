"""Publishing posts to Kafka (``postpulse produce``) with kafka-python."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from kafka import KafkaProducer
from tqdm import tqdm

from streams.settings import BrokerProfile


def post_key(line: bytes) -> bytes | None:
    """The message key: the post's ``post_id`` when the line parses, else none."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    post_id = doc.get("post_id") if isinstance(doc, dict) else None
    return post_id.encode() if isinstance(post_id, str) else None


def read_jsonl(path: Path) -> Iterator[bytes]:
    """Non-empty lines of a JSONL file, as bytes, unparsed (bad lines are the worker's job)."""
    with path.open("rb") as handle:
        for line in handle:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line


def produce(
    lines: Iterable[bytes],
    bootstrap: list[str],
    topic: str,
    profile: BrokerProfile,
    total: int | None = None,
    progress: bool = True,
) -> int:
    """Publish each line as one message keyed by post id; returns how many were acked."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, **profile.kafka_producer)
    futures = []
    try:
        for line in tqdm(lines, total=total, unit="post", disable=not progress, desc="produce"):
            futures.append(producer.send(topic, key=post_key(line), value=line))
        producer.flush()
        for fut in futures:
            fut.get(timeout=30)
    finally:
        producer.close()
    return len(futures)
