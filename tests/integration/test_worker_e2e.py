"""The worker end to end on a real broker and Milvus Lite, including a SIGKILL mid-stream."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streams.broker import LocalBroker
from streams.output_reader import OutputReader
from streams.samples import SamplePost, mixed_stream
from streams.settings import Settings
from tests.workers import milvus_ids as _milvus_ids
from tests.workers import produce_all as _produce_all
from tests.workers import reader as _reader
from tests.workers import start_worker as _worker

pytestmark = pytest.mark.integration

VALID, BROKEN = 500, 20


def _drain(reader: OutputReader, expected: int) -> None:
    assert reader.wait_for(lambda o: o.accounted >= expected, timeout_s=300)
    time.sleep(2)  # anything extra (duplicates) would show up now
    reader.poll(1000)


def _check_outputs(samples: list[SamplePost], reader: OutputReader, settings: Settings) -> None:
    outputs = reader.outputs
    valid_ids = {s.post_id for s in samples if s.expected_reason is None}
    assert set(outputs.analyses) == valid_ids
    expected_reasons = Counter(s.expected_reason for s in samples if s.expected_reason)
    got_reasons = Counter(d.reason for d in outputs.dead_letters.values())
    assert got_reasons == expected_reasons
    originals = {s.value for s in samples if s.expected_reason}
    assert {d.original for d in outputs.dead_letters.values()} == originals
    count, ids = _milvus_ids(settings)
    assert count == VALID and ids == valid_ids


@pytest.mark.parametrize("overlap", ["true", "false"])
def test_500_valid_20_invalid(
    broker: LocalBroker, settings_for: Any, tmp_path: Path, overlap: str
) -> None:
    settings: Settings = settings_for(broker, prefix=f"e2e-{overlap}")
    samples = mixed_stream(VALID, BROKEN, seed=21)
    worker = _worker(settings, tmp_path / "worker.log", pipeline_overlap=overlap).start()
    reader = _reader(broker, settings)
    try:
        worker.wait_ready()
        _produce_all(broker, settings, samples)
        _drain(reader, len(samples))
        metrics = worker.metrics()
    finally:
        reader.close()
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    # exactly once per post in this clean run
    assert reader.outputs.analysis_records == VALID
    assert reader.outputs.dead_letter_records == BROKEN
    _check_outputs(samples, reader, settings)
    assert 'postpulse_posts_total{outcome="analysed"} 500.0' in metrics
    assert 'postpulse_posts_total{outcome="dead_lettered"} 20.0' in metrics
    assert 'postpulse_dead_letters_total{reason="image_too_large",stage="decode"}' in metrics
    assert 'postpulse_encoder_duration_seconds_count{modality="image"}' in metrics


def test_sigkill_mid_stream_loses_nothing(
    broker: LocalBroker, settings_for, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = settings_for(broker, prefix="kill")
    samples = mixed_stream(VALID, BROKEN, seed=33)
    first = _worker(settings, tmp_path / "worker1.log").start()
    reader = _reader(broker, settings)
    try:
        first.wait_ready()
        _produce_all(broker, settings, samples)
        assert reader.wait_for(lambda o: o.accounted >= 120, timeout_s=120)
        first.kill()  # no shutdown, no final offset commit
        killed_at = reader.outputs.accounted
        assert killed_at < len(samples), "the kill came too late to test anything"
        second = _worker(settings, tmp_path / "worker2.log").start()
        try:
            _drain(reader, len(samples))
        finally:
            assert second.stop() == 0, (tmp_path / "worker2.log").read_text()[-3000:]
    finally:
        reader.close()
        first.kill()
    # re-processing after the kill is allowed (at-least-once); losing or duplicating
    # a post in Milvus is not
    _check_outputs(samples, reader, settings)
    assert reader.outputs.analysis_records >= VALID
