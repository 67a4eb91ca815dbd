"""What the durable local broker's S3 server costs: tansu's s3:// engine against s3rver
run through ``streams/s3rver_strict.js`` (conditional writes, atomic uploads, cached
metadata) against plain s3rver, same producer and consumer, one variable changed.
Plain s3rver is the baseline even though it is wrong (a restart overwrites the log, and
listing past 1,000 objects fails, so its consumer stops there).

``python -m benchmarks.durable_broker`` prints the table and writes
``benchmarks/results/durable_broker.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.broker import S3_BUCKET, LocalBroker, LocalS3, ensure_topics, s3rver_modules
from streams.broker import wait_for_port as _wait_for_port
from streams.settings import LOCAL_BROKER_PROFILE


class PlainS3(LocalS3):
    """s3rver's own command, as it comes from npm."""

    def start(self, timeout: float = 30.0) -> PlainS3:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = s3rver_modules() / ".bin" / "s3rver"
        self.process = subprocess.Popen(
            [
                str(command),
                *("--address", self.host, "--port", str(self.port)),
                *("--directory", str(self.folder), "--configure-bucket", S3_BUCKET, "--silent"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_for_port(self.host, self.port, timeout)
        return self


def _run(server: str, records: int, work: Path) -> dict[str, float]:
    broker = LocalBroker(data_dir=work / "broker", log_file=work / "broker.log")
    if server == "plain s3rver":
        broker.s3 = PlainS3(work / "broker" / "s3").start()
    broker.start()
    try:
        ensure_topics([broker.bootstrap], ["bench"], 1)
        producer = KafkaProducer(
            bootstrap_servers=[broker.bootstrap], **LOCAL_BROKER_PROFILE.kafka_producer
        )
        started = time.perf_counter()
        futures = [producer.send("bench", value=b"x" * 500) for _ in range(records)]
        producer.flush()
        for future in futures:
            future.get(timeout=60)
        produced = records / (time.perf_counter() - started)
        producer.close()
        consumer = KafkaConsumer(
            bootstrap_servers=[broker.bootstrap],
            fetch_max_bytes=50_000,
            max_partition_fetch_bytes=50_000,
        )
        part = TopicPartition("bench", 0)
        consumer.assign([part])
        consumer.seek_to_beginning()
        started, read = time.perf_counter(), 0
        while read < records and time.perf_counter() - started < 60:
            read += sum(len(batch) for batch in consumer.poll(timeout_ms=500).values())
        consumed = read / (time.perf_counter() - started)
        consumer.close()
        return {
            "produce_per_s": round(produced, 1),
            "consume_per_s": round(consumed, 1),
            "consumed": read,
        }
    finally:
        broker.stop()


def bench_durable_broker(records: int = 1500, rounds: int = 2) -> dict[str, Any]:
    """Records/s produced and consumed, each server ``rounds`` times, alternating."""
    runs: dict[str, list[dict[str, float]]] = {"plain s3rver": [], "s3rver_strict.js": []}
    for _ in range(rounds):
        for server, results in runs.items():
            with tempfile.TemporaryDirectory(prefix="postpulse-bench-") as tmp:
                results.append(_run(server, records, Path(tmp)))
    best = {
        server: {key: max(r[key] for r in results) for key in results[0]}
        for server, results in runs.items()
    }
    plain, strict = best["plain s3rver"], best["s3rver_strict.js"]
    return {
        "records": records,
        "runs": runs,
        "best": best,
        "produce_ratio_strict_to_plain": round(strict["produce_per_s"] / plain["produce_per_s"], 2),
    }


def bench_log_growth(sizes: tuple[int, ...] = (1500, 6000)) -> dict[str, Any]:
    """s3rver_strict.js alone, one partition holding ``sizes`` records (one object each,
    as the local profile produces them): how produce and consume rates change as the
    log grows. Before s3rver_strict.js listed from a sorted key index, every fetch cost
    O(objects^2) stats and 6,000 records were consumed at ×0.007 the rate of 1,500
    (issue 15's 10,000-post chaos run slowed to ~1 post/s)."""
    by_size: dict[str, dict[str, float]] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="postpulse-bench-") as tmp:
            by_size[str(size)] = _run("s3rver_strict.js", size, Path(tmp))
    small, large = by_size[str(sizes[0])], by_size[str(sizes[-1])]
    return {
        "by_records": by_size,
        "consume_ratio_large_to_small": round(
            large["consume_per_s"] / max(small["consume_per_s"], 1e-9), 3
        ),
        "produce_ratio_large_to_small": round(
            large["produce_per_s"] / max(small["produce_per_s"], 1e-9), 3
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/durable_broker.json")
    args = parser.parse_args(argv)
    result = bench_durable_broker(args.records, args.rounds)
    print(f"{'server':18} {'produce/s':>10} {'consume/s':>10} {'consumed':>9}")
    for server, best in result["best"].items():
        print(
            f"{server:18} {best['produce_per_s']:>10} {best['consume_per_s']:>10} "
            f"{best['consumed']:>9.0f}"
        )
    print(f"produce ratio (strict / plain): {result['produce_ratio_strict_to_plain']}")
    result["log_growth"] = growth = bench_log_growth()
    for size, rates in growth["by_records"].items():
        print(f"strict, {size:>5} records: {rates}")
    print(f"consume ratio, largest log vs smallest: {growth['consume_ratio_large_to_small']}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
