"""Reads postpulse's output topics back: analyses and dead letters (demo, tests, benchmarks)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import KafkaConsumer

from streams.records import Analysis, DeadLetter
from streams.settings import BrokerProfile


@dataclass
class CollectedOutputs:
    """Outputs seen so far, de-duplicated the way at-least-once delivery requires."""

    analyses: dict[str, Analysis] = field(default_factory=dict)
    analysis_records: int = 0
    analysis_written_ms: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[tuple[str | None, int | None, int | None], DeadLetter] = field(
        default_factory=dict
    )
    dead_letter_records: int = 0

    @property
    def accounted(self) -> int:
        """Distinct input messages with an output (analysis or dead letter)."""
        return len(self.analyses) + len(self.dead_letters)


class OutputReader:
    """A consumer of the analyses and dead-letter topics, from the beginning."""

    def __init__(
        self,
        bootstrap: list[str],
        analyses_topic: str,
        dlq_topic: str,
        profile: BrokerProfile,
        group_id: str | None = None,
    ) -> None:
        self.analyses_topic = analyses_topic
        self.dlq_topic = dlq_topic
        self.outputs = CollectedOutputs()
        self.consumer = KafkaConsumer(
            analyses_topic,
            dlq_topic,
            bootstrap_servers=bootstrap,
            group_id=group_id or f"postpulse-reader-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **profile.kafka_consumer,
        )

    def poll(self, timeout_ms: int = 500) -> int:
        """Fetch what is available; returns how many records arrived."""
        got = 0
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            for record in records:
                got += 1
                if tp.topic == self.analyses_topic:
                    analysis = Analysis.model_validate_json(record.value)
                    self.outputs.analysis_records += 1
                    self.outputs.analyses[analysis.post_id] = analysis
                    self.outputs.analysis_written_ms[analysis.post_id] = record.timestamp
                else:
                    dead = DeadLetter.model_validate_json(record.value)
                    self.outputs.dead_letter_records += 1
                    key = (dead.source_topic, dead.source_partition, dead.source_offset)
                    self.outputs.dead_letters[key] = dead
        return got

    def wait_for(
        self,
        done: Callable[[CollectedOutputs], bool],
        timeout_s: float,
        on_progress: Callable[[CollectedOutputs], None] = lambda _o: None,
    ) -> bool:
        """Poll until ``done(outputs)`` or the timeout; returns whether it was reached."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.poll() > 0:
                on_progress(self.outputs)
            if done(self.outputs):
                return True
        return done(self.outputs)

    def close(self) -> None:
        """Leave the group."""
        self.consumer.close()
