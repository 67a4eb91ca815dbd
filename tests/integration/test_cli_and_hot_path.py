"""CLI commands for real (broker, produce, demo) and the torch-free hot path."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient

from streams.broker import LocalBroker, free_port, wait_for_port
from streams.settings import LOCAL_BROKER_PROFILE

CLI = [sys.executable, "-m", "streams.cli", "--log-level", "WARNING"]


def test_worker_hot_path_does_not_import_torch(bundle_path: Path) -> None:
    code = f"""
import sys
from pathlib import Path
from encoders.serving import ServedBundle
from streams.app import create_app, WorkerComponents
from streams.pipeline import PostPipeline
from streams.records import Envelope
from streams.samples import valid_posts
from streams.settings import Settings
bundle = ServedBundle(Path({str(bundle_path)!r}), device="cpu")
pipeline = PostPipeline(Settings(), bundle)
outcome = pipeline.process([Envelope(value=s.value) for s in valid_posts(6)])
assert len(outcome.analysed) == 6
print("torch" in sys.modules, "transformers" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_broker_command_creates_topics_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "broker", "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for_port("127.0.0.1", port, 15)
        deadline = time.monotonic() + 15
        topics: set[str] = set()
        while time.monotonic() < deadline and not {"posts", "posts.dlq", "post-analyses"} <= topics:
            admin = KafkaAdminClient(bootstrap_servers=[f"127.0.0.1:{port}"])
            topics = set(admin.list_topics())
            admin.close()
            time.sleep(0.2)
        assert {"posts", "posts.dlq", "post-analyses"} <= topics
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    # the tansu child went with it
    try:
        wait_for_port("127.0.0.1", port, 1)
        raise AssertionError("broker still listening after SIGTERM")
    except Exception as exc:
        assert "nothing is listening" in str(exc)


def test_produce_command_keys_by_post_id(broker: LocalBroker, tmp_path: Path) -> None:
    lines = [
        json.dumps({"post_id": "a1", "text": "x"}),
        "not json at all",
        json.dumps({"post_id": "b2"}),
    ]
    path = tmp_path / "posts.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    topic = "produce-test"
    out = subprocess.run(
        [*CLI, "produce", str(path), "--broker", broker.url, "--topic", topic],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "published 3 messages" in out.stdout
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=[broker.bootstrap],
        group_id="produce-test",
        auto_offset_reset="earliest",
        consumer_timeout_ms=20000,
        **LOCAL_BROKER_PROFILE.kafka_consumer,
    )
    got = []
    for record in consumer:
        got.append((record.key, record.value.decode()))
        if len(got) == 3:
            break
    consumer.close()
    assert sorted(got, key=lambda kv: kv[1]) == sorted(
        [(b"a1", lines[0]), (None, lines[1]), (b"b2", lines[2])], key=lambda kv: kv[1]
    )
    missing = subprocess.run(
        [*CLI, "produce", str(tmp_path / "nope.jsonl")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_demo_runs_end_to_end_and_prints_its_summary(bundle_path: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *CLI,
            "demo",
            "--bundle",
            str(bundle_path),
            "--workdir",
            str(tmp_path / "demo"),
            "--posts",
            "40",
            "--broken",
            "6",
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=400,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout
    assert "posts produced:      46" in text
    assert "analysed:            40" in text
    assert "dead-lettered:       6" in text
    assert "during the #eclipse burst (1h window): #eclipse (40 posts" in text, text[-1500:]
    for reason in (
        "invalid_json",
        "schema_violation",
        "image_undecodable",
        "image_too_large",
        "unknown_media_kind",
        "text_too_long",
    ):
        assert reason in text
    assert "similar to the text" in text and "worker stopped cleanly (exit 0)" in text


def test_cli_reports_a_missing_bundle_clearly(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "worker", "--bundle", str(tmp_path / "none"), "--no-create-topics"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "no model bundle" in out.stderr and "postpulse export" in out.stderr
    assert "Traceback" not in out.stderr
    both = subprocess.run([*CLI, "similar", "p1", "--text", "x"], capture_output=True, text=True)
    assert both.returncode == 2 and "not both" in both.stderr
