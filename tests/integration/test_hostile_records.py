"""Issue 15's cases, as a stranger would meet them: real election tweets with hostile
records mixed in, published with a plain kafka-python producer to a real worker; and a
worker whose Milvus goes away, seen through /healthz and stopped with SIGTERM."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from PIL import Image

from encoders.training.corpora import load_corpus
from streams.broker import LocalBroker, free_port
from streams.settings import LOCAL_BROKER_PROFILE, Settings
from streams.worker_process import MilvusLiteServer
from tests.workers import milvus_ids, reader, start_worker

pytestmark = pytest.mark.integration

TWEETS = 1500


def _thin_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1, 4000), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def _hostile(base: dict[str, Any]) -> list[tuple[str, bytes, str | None]]:
    """(post id, message, expected dead-letter reason or None for analysed)."""

    def doc(post_id: str, **fields: Any) -> bytes:
        return json.dumps({**base, "post_id": post_id, **fields}).encode()

    return [
        # passed validation, then Milvus refused the batch and the worker retried forever
        ("h-future", doc("h-future", created_at=100000000000000000000), "schema_violation"),
        # its dead letter (6.7 MB in base64) was over the producer's limit: retried forever
        ("h-huge", doc("h-huge", text="word " * 1_000_000), "text_too_long"),
        ("h-likes", doc("h-likes", engagement={"likes": 2**64}), "schema_violation"),
        (
            "h-surrogate",
            doc("h-surrogate").replace(b'"text": "', b'"text": "\\ud800'),
            "schema_violation",
        ),
        ("h-nested", b'{"labels": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "invalid_json"),
        ("h-nested-66", doc("h-nested-66", labels={"a": _nest(66)}), "invalid_json"),
        # OCR's resize raised on a 1x4000 picture and the whole post was lost
        (
            "h-thin",
            doc(
                "h-thin",
                media=[{"kind": "image", "data_b64": base64.b64encode(_thin_png()).decode()}],
            ),
            None,
        ),
    ]


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _publish(broker: LocalBroker, topic: str, values: list[bytes]) -> None:
    """A plain kafka-python producer, its request limit raised for the 5 MB post."""
    producer = KafkaProducer(
        bootstrap_servers=[broker.bootstrap],
        **{**LOCAL_BROKER_PROFILE.kafka_producer, "max_request_size": 16 * 1024 * 1024},
    )
    try:
        futures = [producer.send(topic, value=v) for v in values]
        producer.flush()
        for future in futures:
            future.get(timeout=60)
    finally:
        producer.close()


def test_real_tweets_with_hostile_records_all_get_one_outcome(
    broker: LocalBroker, settings_for, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = settings_for(broker, prefix="hostile")
    tweets = load_corpus("election-tweets-2016", limit=TWEETS, seed=3)
    hostile = _hostile(tweets[0])
    values = [json.dumps(t).encode() for t in tweets]
    rng = random.Random(15)
    for _, value, _ in hostile:  # among the real posts, so they share batches with them
        values.insert(rng.randrange(len(values)), value)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log).start()
    out = reader(broker, settings)
    try:
        worker.wait_ready()
        _publish(broker, settings.topic_posts, values)
        assert out.wait_for(lambda o: o.accounted >= len(values), timeout_s=400), (
            f"{out.outputs.accounted}/{len(values)} outcomes; " + log.read_text()[-3000:]
        )
        time.sleep(2)
        out.poll(1000)
        metrics = worker.metrics()
    finally:
        out.close()
        assert worker.stop() == 0, log.read_text()[-3000:]

    outputs = out.outputs
    assert outputs.accounted == len(values)  # exactly one outcome per message
    dead = {d.post_id: d for d in outputs.dead_letters.values()}
    expected = {pid: reason for pid, _, reason in hostile if reason}
    got = Counter(d.reason.value for d in outputs.dead_letters.values())
    assert got == Counter(expected.values())
    for pid, reason in expected.items():
        if not pid.startswith("h-nested"):  # too deep to read a post id from
            assert dead[pid].reason.value == reason, (pid, dead[pid].detail)
    huge = next(v for pid, v, _ in hostile if pid == "h-huge")
    capped = dead["h-huge"]
    assert capped.truncated and capped.original_size == len(huge)
    assert capped.original_sha256 == hashlib.sha256(huge).hexdigest()
    assert (
        huge.startswith(capped.original) and len(capped.original) == settings.dlq_max_original_bytes
    )
    assert "created_at" in dead["h-future"].detail
    analysed = {t["post_id"] for t in tweets} | {"h-thin"}
    assert set(outputs.analyses) == analysed
    assert outputs.analyses["h-thin"].modalities == ["text", "image"] or (
        "image" in outputs.analyses["h-thin"].modalities
    )
    count, ids = milvus_ids(settings)
    assert count == len(analysed) and ids == analysed
    # trends lost nothing: no post's topic extraction raised, and nothing in the log did
    assert "postpulse_topic_extraction_errors_total 0.0" in metrics
    assert "Traceback" not in log.read_text()


def _health(worker_port: int, page: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/{page}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_wedged_worker_turns_liveness_red_and_stops_on_sigterm(
    broker: LocalBroker, settings_for, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    milvus = MilvusLiteServer(tmp_path / "milvus", free_port(), tmp_path / "milvus.log").start()
    settings: Settings = settings_for(broker, prefix="wedge", milvus_uri=milvus.uri)
    tweets = load_corpus("election-tweets-2016", limit=40, seed=8)
    knobs = {
        "liveness_stall_s": "4",
        "output_retry_budget_s": "600",
        "shutdown_drain_s": "5",
    }
    first = start_worker(settings, tmp_path / "worker1.log", **knobs).start()
    try:
        first.wait_ready()
        assert _health(first.web_port, "healthz")[0] == 200
        # the backlog timer measures the assigned partitions against the broker
        deadline = time.monotonic() + 30
        body = _health(first.web_port, "healthz")[1]
        while "records_waiting" not in body and time.monotonic() < deadline:
            time.sleep(0.5)
            body = _health(first.web_port, "healthz")[1]
        assert body["records_waiting"] == 0, body
        status, ready = _health(first.web_port, "readyz")
        assert status == 200 and ready["milvus"] == "ok" and ready["partitions"] > 0
        milvus.stop()  # Milvus goes away: every upsert now fails
        _publish(broker, settings.topic_posts, [json.dumps(t).encode() for t in tweets])
        deadline = time.monotonic() + 90
        status, body = _health(first.web_port, "healthz")
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            status, body = _health(first.web_port, "healthz")
        assert status == 503 and body["status"] == "stalled", body
        assert "milvus" in str(body["reason"]) and body["in_flight"]["messages"] > 0
        assert _health(first.web_port, "readyz")[0] == 503
        started = time.monotonic()
        code = first.stop(timeout=60)
        stopped_in = time.monotonic() - started
    finally:
        first.kill()
    log = (tmp_path / "worker1.log").read_text()
    assert code == 3, log[-3000:]  # drained for the limit, then exited non-zero
    assert stopped_in < 5 + 15 + 10, stopped_in  # drain limit + Faust's grace, not forever
    assert "left uncommitted" in log or "outputs unwritten" in log

    # nothing was lost: with Milvus back, a new worker gives every post its analysis
    milvus.start()
    second = start_worker(settings, tmp_path / "worker2.log").start()
    out = reader(broker, settings)
    try:
        assert out.wait_for(lambda o: len(o.analyses) >= len(tweets), timeout_s=180)
    finally:
        out.close()
        assert second.stop() == 0
        milvus.stop()
    assert set(out.outputs.analyses) == {t["post_id"] for t in tweets}
    assert not out.outputs.dead_letters
