"""The durable local broker: topics, records and a group's committed offsets survive a
restart of the broker process, and of the whole broker (S3 server included)."""

from __future__ import annotations

import http.client
import random
import re
import socket
import time
import urllib.parse
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streams.broker import S3_BUCKET, LocalBroker, LocalS3, ensure_topics
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


def test_a_restarted_broker_appends_after_the_log_it_kept(tmp_path: Path) -> None:
    """tansu keeps each partition's next offset in a watermark object that it writes
    with S3 conditional writes; a server ignoring them let a restarted broker start again
    at offset 0 and overwrite the first batches. Offsets go on from where they were, every
    earlier record is still there, and ListOffsets(latest) is the true end."""
    broker = LocalBroker(data_dir=tmp_path / "broker", log_file=tmp_path / "tansu.log").start()
    part = TopicPartition("d.posts", 0)
    try:
        ensure_topics([broker.bootstrap], ["d.posts"], 1)
        _produce(broker, [f"before-{i}".encode() for i in range(25)])
        broker.restart(down_s=0.5)
        producer = KafkaProducer(
            bootstrap_servers=[broker.bootstrap], **LOCAL_BROKER_PROFILE.kafka_producer
        )
        futures = [producer.send("d.posts", value=f"after-{i}".encode()) for i in range(5)]
        producer.flush()
        offsets = [f.get(timeout=30).offset for f in futures]
        producer.close()
        assert offsets == list(range(25, 30))
        consumer = KafkaConsumer(bootstrap_servers=[broker.bootstrap], consumer_timeout_ms=4000)
        consumer.assign([part])
        consumer.seek_to_beginning()
        read = [(m.offset, m.value) for m in consumer]
        end = consumer.end_offsets([part])[part]
        consumer.close()
        assert read == [(i, f"before-{i}".encode()) for i in range(25)] + [
            (25 + i, f"after-{i}".encode()) for i in range(5)
        ]
        assert end == 30
    finally:
        broker.stop()


def _put(s3: LocalS3, key: str, body: bytes, **headers: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(s3.host, s3.port, timeout=10)
    try:
        conn.request("PUT", f"/{S3_BUCKET}/{key}", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("ETag", "")
    finally:
        conn.close()


def _get(s3: LocalS3, key: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(s3.host, s3.port, timeout=10)
    try:
        conn.request("GET", f"/{S3_BUCKET}/{key}")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_s3_server_keeps_the_promises_tansu_relies_on(tmp_path: Path) -> None:
    """Conditional writes refused with 412 as S3 does, and an upload cut off halfway
    stores nothing (the object keeps its old bytes)."""
    s3 = LocalS3(tmp_path / "s3").start()
    try:
        status, etag = _put(s3, "w.json", b'{"high": 1}', **{"If-None-Match": "*"})
        assert status == 200 and etag
        assert _put(s3, "w.json", b'{"high": 0}', **{"If-None-Match": "*"})[0] == 412
        assert _put(s3, "w.json", b'{"high": 2}', **{"If-Match": '"not-its-etag"'})[0] == 412
        assert _put(s3, "w.json", b'{"high": 2}', **{"If-Match": etag})[0] == 200
        assert _put(s3, "w.json", b'{"high": 3}', **{"If-Match": etag})[0] == 412  # stale
        assert _get(s3, "w.json") == (200, b'{"high": 2}')
        assert _put(s3, "missing.json", b"x", **{"If-Match": etag})[0] == 404

        # a client that dies a tenth of the way through its body
        with socket.create_connection((s3.host, s3.port), timeout=10) as sock:
            sock.sendall(
                f"PUT /{S3_BUCKET}/w.json HTTP/1.1\r\nHost: {s3.host}\r\n"
                "Content-Length: 1000\r\n\r\n".encode()
                + b"y" * 100
            )
        time.sleep(0.5)
        assert _get(s3, "w.json") == (200, b'{"high": 2}')
    finally:
        s3.stop()


def test_the_s3_server_lists_page_after_page(tmp_path: Path) -> None:
    """tansu lists a partition's batches to answer ListOffsets; past one page (1,000
    objects) s3rver needs its continuation tokens, which it makes with DES."""
    s3 = LocalS3(tmp_path / "s3").start()
    try:
        for i in range(5):
            assert _put(s3, f"p/{i:03d}.batch", b"b")[0] == 200
        keys, _ = _list_all(s3, "p/", "", "", 2)
        body = _list_page(s3, {"list-type": "2", "prefix": "p/"})
        assert keys == [f"p/{i:03d}.batch" for i in range(5)]
        # listed times are the files' own, to the nanosecond
        assert len(set(re.findall(r"<LastModified>[^<]*\.\d{9}Z<", body))) >= 1
    finally:
        s3.stop()


def test_a_stalled_upload_does_not_hold_up_the_next_write(tmp_path: Path) -> None:
    """Conditional writes to one key go one at a time; a client that stalls halfway
    through its body (a broker killed mid-PUT) must not keep the others waiting."""
    s3 = LocalS3(tmp_path / "s3").start()
    try:
        status, etag = _put(s3, "w.json", b'{"high": 1}', **{"If-None-Match": "*"})
        assert status == 200
        with socket.create_connection((s3.host, s3.port), timeout=10) as stalled:
            stalled.sendall(
                f"PUT /{S3_BUCKET}/w.json HTTP/1.1\r\nHost: {s3.host}\r\nIf-Match: {etag}\r\n"
                "Content-Length: 1000\r\n\r\n".encode()
                + b"z" * 10
            )
            time.sleep(0.5)  # it is in, its body never finishes
            assert _put(s3, "w.json", b'{"high": 2}', **{"If-Match": etag})[0] == 200
        assert _get(s3, "w.json") == (200, b'{"high": 2}')
    finally:
        s3.stop()


def _delete(s3: LocalS3, key: str) -> int:
    conn = http.client.HTTPConnection(s3.host, s3.port, timeout=10)
    try:
        conn.request("DELETE", f"/{S3_BUCKET}/{key}")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _list_page(s3: LocalS3, query: dict[str, str]) -> str:
    conn = http.client.HTTPConnection(s3.host, s3.port, timeout=10)
    try:
        conn.request("GET", f"/{S3_BUCKET}?{urllib.parse.urlencode(query)}")
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, body
    return body


def _list_all(
    s3: LocalS3, prefix: str, delimiter: str, start_after: str, max_keys: int
) -> tuple[list[str], set[str]]:
    """Every page of a ListObjectsV2, followed by its continuation tokens."""
    keys: list[str] = []
    prefixes: set[str] = set()
    token = ""
    for _ in range(1000):
        query = {"list-type": "2", "max-keys": str(max_keys), "prefix": prefix}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        elif start_after:
            query["start-after"] = start_after
        body = _list_page(s3, query)
        keys += re.findall(r"<Key>([^<]+)</Key>", body)
        prefixes |= set(re.findall(r"<CommonPrefixes><Prefix>([^<]+)</Prefix>", body))
        found = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", body)
        if not found:
            return keys, prefixes
        token = found.group(1)
    raise AssertionError("the listing never ended")


def _expected(
    stored: set[str], prefix: str, delimiter: str, start_after: str
) -> tuple[list[str], set[str]]:
    keys, prefixes = [], set()
    for key in sorted(stored):
        if key <= start_after or not key.startswith(prefix):
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut != -1:
            prefixes.add(key[: cut + len(delimiter)])
        else:
            keys.append(key)
    return keys, prefixes


def test_the_s3_server_lists_what_it_holds_after_writes_deletes_and_restarts(
    tmp_path: Path,
) -> None:
    """Listings come from a sorted key index kept in memory (s3rver_strict.js): after
    random puts, overwrites and deletes, and after a restart that rebuilds the index from
    the folder, every listing (prefix, delimiter, start-after, page size) holds exactly
    the stored keys S3's rules select, in order."""
    rng = random.Random(15)
    names = [
        *(f"t/a/p/{i:04d}.batch" for i in range(40)),
        *(f"t/b/p/{i:04d}.batch" for i in range(15)),
        "t/a/watermark.json",
        "t/ab",
        "u",
        "t/b/p/z/deep.batch",
    ]
    queries = [
        ("", "", "", 1000),
        ("t/a/p/", "", "", 7),
        ("t/", "/", "", 3),
        ("t/a", "", "t/a/p/0010.batch", 5),
        ("t/b/p/", "/", "", 4),
        ("", "/", "", 2),
        ("nothing/", "", "", 10),
    ]
    stored: set[str] = set()
    s3 = LocalS3(tmp_path / "s3").start()
    try:
        for round_ in range(4):
            for _ in range(60):
                key = rng.choice(names)
                if key in stored and rng.random() < 0.35:
                    assert _delete(s3, key) == 204
                    stored.discard(key)
                else:
                    assert _put(s3, key, b"x" * rng.randint(1, 50))[0] == 200
                    stored.add(key)
            for prefix, delimiter, start_after, max_keys in queries:
                got = _list_all(s3, prefix, delimiter, start_after, max_keys)
                want = _expected(stored, prefix, delimiter, start_after)
                assert got == want, (round_, prefix, delimiter, start_after, max_keys)
            if round_ == 1:
                s3.stop()
                s3 = LocalS3(tmp_path / "s3", port=s3.port).start()
    finally:
        s3.stop()
