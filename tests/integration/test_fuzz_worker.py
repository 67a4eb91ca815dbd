"""The fuzz suite: at least 10,000 hostile records per run against a real worker —
documents generated from the committed JSON Schema and then broken, mutated real
election tweets, and posts with broken media of every format. Every message must get
exactly one outcome, the worker must neither crash, restart nor hang."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from encoders.training.corpora import load_corpus
from streams.broker import LocalBroker
from streams.settings import LOCAL_BROKER_PROFILE, Settings
from tests.fuzz_records import break_document, media_corpus, media_post, schema_documents
from tests.workers import reader, start_worker

pytestmark = pytest.mark.integration

SEED = 15
SCHEMA_DOCS, REAL_MUTATIONS, MEDIA_POSTS = 1500, 7500, 1000


def _records(rng: random.Random) -> list[bytes]:
    records: list[bytes] = []
    for i, doc in enumerate(schema_documents(SCHEMA_DOCS, SEED)):
        if isinstance(doc, dict):
            doc = {**doc, "post_id": f"fz-schema-{i}"}  # one outcome per id to count
        records.append(break_document(doc, rng))
    tweets = load_corpus("election-tweets-2016")
    for i in range(REAL_MUTATIONS):
        tweet = {**rng.choice(tweets), "post_id": f"fz-real-{i}"}
        records.append(break_document(tweet, rng))
    corpus = media_corpus()
    records += [media_post(i, rng, corpus) for i in range(MEDIA_POSTS)]
    rng.shuffle(records)
    return records


def _post_id(record: bytes) -> Any:
    try:
        doc = json.loads(record)
    except (ValueError, RecursionError):
        return None
    post_id = doc.get("post_id") if isinstance(doc, dict) else None
    return post_id if isinstance(post_id, str) else None


def test_ten_thousand_hostile_records_each_get_one_outcome(
    broker: LocalBroker, settings_for, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = settings_for(broker, prefix="fuzz")
    records = _records(random.Random(SEED))
    assert len(records) >= 10_000
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log, max_batch="32", max_decode_s="5").start()
    out = reader(broker, settings)
    try:
        worker.wait_ready()
        producer = KafkaProducer(
            bootstrap_servers=[broker.bootstrap],
            **{**LOCAL_BROKER_PROFILE.kafka_producer, "max_request_size": 16 * 1024 * 1024},
        )
        futures = [producer.send(settings.topic_posts, value=r) for r in records]
        producer.flush()
        for future in futures:
            future.get(timeout=60)
        producer.close()
        total = lambda o: o.analysis_records + o.dead_letter_records  # noqa: E731
        done = out.wait_for(lambda o: total(o) >= len(records), timeout_s=900)
        time.sleep(3)  # anything extra (a second outcome) would show up now
        out.poll(1000)
        alive = worker.alive()
    finally:
        out.close()
        code = worker.stop()
    o = out.outputs
    reasons: Counter[str] = Counter(d.reason.value for d in o.dead_letters.values())
    reasons["analysed"] = o.analysis_records
    summary = json.dumps(dict(sorted(reasons.items())), indent=1)
    (tmp_path / "outcomes.json").write_text(summary)
    print(f"\nfuzz outcomes of {len(records)} records:\n{summary}")
    text = log.read_text()
    assert done, f"{total(o)}/{len(records)} outcomes (a hang); {summary}\n{text[-3000:]}"
    assert alive and code == 0, text[-3000:]  # no crash
    assert text.count("[^DrainingWorker]: Starting...") == 1  # no restart
    # exactly one outcome per message: as many records as messages, none twice
    assert o.analysis_records + o.dead_letter_records == len(records), summary
    assert len(o.dead_letters) == o.dead_letter_records  # distinct source offsets
    ids = {_post_id(r) for r in records}
    assert set(o.analyses) <= ids, sorted(set(o.analyses) - ids)[:5]  # nothing made up
    internal = [d.detail for d in o.dead_letters.values() if d.reason.value == "internal_error"]
    assert not internal, f"{summary}\n{internal[:5]}"  # every failure has a real reason
    assert "Traceback" not in text, text[text.index("Traceback") - 500 :][:4000]
