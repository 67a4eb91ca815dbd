"""Output writing (retries, nothing dropped), the baseline fusion, sinks, metrics, settings."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from pymilvus.exceptions import MilvusException

from encoders.serving import early_fusion_baseline, l2_normalize
from exporters.base import BackpressureError
from exporters.memory import ListSink
from exporters.milvus import EmbeddingRow, MilvusEmbeddingSink
from exporters.prometheus import PipelineMetrics
from streams.outputs import OutputPolicy, OutputWriter
from streams.pipeline import BatchOutcome
from streams.records import Analysis, DeadLetter, DeadLetterReason, Envelope, Post
from streams.settings import LOCAL_BROKER_PROFILE, Settings, bootstrap_servers, broker_profile
from streams.stages.analyse import AnalysedPost, popularity_score, sentiment_label
from streams.stages.decode import DecodedPost
from streams.stages.validate import ValidatedPost


def _analysed(i: int) -> AnalysedPost:
    post = Post(
        post_id=f"p{i}",
        platform="x",
        author_id="u",
        created_at=1_700_000_000_000 + 1000 * i,
        text="t",
    )
    env = Envelope(value=b"{}", topic="posts", partition=0, offset=i, timestamp_ms=0)
    analysis = Analysis(
        post_id=post.post_id,
        platform="x",
        author_id="u",
        created_at_ms=post.created_at_ms,
        modalities=["text"],
        category="food",
        category_probs={"food": 1.0},
        sentiment="neutral",
        sentiment_score=0.0,
        popularity=None,
        topic="food",
        bundle_version="v",
        fusion="baseline-early-concat",
        latency_ms=1.0,
        processed_at_ms=1,
    )
    return AnalysedPost(DecodedPost(ValidatedPost(env, post)), analysis, np.ones(4, np.float32), 1)


def test_writer_retries_until_every_output_is_written() -> None:
    sink: ListSink[EmbeddingRow] = ListSink(max_rows=2)
    sink.fail_next = 2
    sent: list[tuple[str, bytes | None]] = []
    failures = {"analyses": 1}

    async def send_analysis(key: bytes | None, value: bytes) -> None:
        if failures["analyses"]:
            failures["analyses"] -= 1
            raise BackpressureError("broker busy", retry_after=0.0)
        sent.append(("analysis", key))

    async def send_dead(key: bytes | None, value: bytes) -> None:
        sent.append(("dead", key))

    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    writer = OutputWriter(
        sink, send_analysis, send_dead, metrics, policy=OutputPolicy(base_backoff_s=0.001)
    )
    outcome = BatchOutcome(analysed=[_analysed(i) for i in range(5)], size=6)
    outcome.dead_letters.append(
        Envelope(value=b"x", offset=9).dead_letter(DeadLetterReason.INVALID_JSON, "validate", "bad")
    )
    asyncio.run(writer.write(outcome))
    assert sorted(r.post_id for r in sink.items) == [f"p{i}" for i in range(5)]
    assert sink.pending == 0
    assert sorted(k for kind, k in sent if kind == "analysis") == [
        f"p{i}".encode() for i in range(5)
    ]
    assert [k for kind, k in sent if kind == "dead"] == [None]
    value = registry.get_sample_value
    assert value("postpulse_sink_retries_total", {"sink": "milvus"}) == 2
    assert value("postpulse_sink_retries_total", {"sink": "analyses"}) == 1
    assert value("postpulse_posts_total", {"outcome": "analysed"}) == 5
    assert (
        value("postpulse_dead_letters_total", {"reason": "invalid_json", "stage": "validate"}) == 1
    )


def test_batching_sink_keeps_unwritten_rows_on_failure() -> None:
    sink: ListSink[int] = ListSink(max_rows=3)
    for i in range(7):
        sink.add(i)
    sink.fail_next = 1
    with pytest.raises(BackpressureError):
        sink.flush()
    assert sink.pending == 7
    sink.flush()
    assert sink.items == list(range(7)) and [len(b) for b in sink.batches] == [3, 3, 1]


def test_baseline_fusion_zeroes_missing_modalities_and_is_unit_length() -> None:
    rng = np.random.default_rng(0)
    text = rng.normal(size=(3, 5)).astype(np.float32)
    image = rng.normal(size=(3, 7)).astype(np.float32)
    presence = np.array([[1, 1], [1, 0], [0, 1]], dtype=np.float32)
    image[1] = 0
    text[2] = 0
    fused = early_fusion_baseline([text, image], presence)
    assert fused.shape == (3, 5 + 7 + 2)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, rtol=1e-6)
    assert np.all(fused[1, 5:12] == 0) and np.all(fused[2, :5] == 0)
    # the text part of a text-only post is the normalised text embedding, scaled
    np.testing.assert_allclose(
        l2_normalize(fused[1:2, :5])[0], l2_normalize(text[1:2])[0], rtol=1e-5
    )
    # same text, with and without an image: similar but not identical
    both = early_fusion_baseline([text[:1], image[:1]], presence[:1])
    text_only = early_fusion_baseline(
        [text[:1], np.zeros_like(image[:1])], np.array([[1, 0]], np.float32)
    )
    cos = float(both[0] @ text_only[0])
    assert 0.3 < cos < 0.95


def test_baseline_heads() -> None:
    from streams.records import Engagement

    assert popularity_score(None) is None
    low = popularity_score(Engagement(likes=1))
    high = popularity_score(Engagement(likes=1000, shares=50))
    assert low is not None and high is not None and high > low > 0
    assert sentiment_label(0.6) == "positive" and sentiment_label(-0.3) == "negative"
    assert sentiment_label(0.0) == "neutral"


def test_metrics_use_the_registry_given() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    PipelineMetrics(a).posts.labels("analysed").inc(3)
    PipelineMetrics(b)
    assert a.get_sample_value("postpulse_posts_total", {"outcome": "analysed"}) == 3
    assert b.get_sample_value("postpulse_posts_total", {"outcome": "analysed"}) == 0  # not 3
    text = PipelineMetrics(CollectorRegistry()).render().decode()
    for name in ("postpulse_stage_duration_seconds", "postpulse_dead_letters_total"):
        assert name in text


def test_settings_frozen_env_and_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTPULSE_MAX_BATCH", "7")
    monkeypatch.setenv("POSTPULSE_MILVUS_TOKEN", "s3cret")
    monkeypatch.setenv("POSTPULSE_BROKER_PROFILE", "kafka")
    s = Settings()
    assert s.max_batch == 7
    assert "s3cret" not in repr(s) and s.milvus_token.get_secret_value() == "s3cret"
    with pytest.raises(Exception, match="frozen"):
        s.max_batch = 3  # type: ignore[misc]
    assert broker_profile(s).name == "kafka"
    assert "producer_max_batch_size" not in broker_profile(s).faust
    assert LOCAL_BROKER_PROFILE.faust["producer_max_batch_size"] == 1
    assert bootstrap_servers("kafka://a:1;b:2") == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        bootstrap_servers("kafka://")


def test_pipeline_turns_a_stage_bug_into_dead_letters() -> None:
    from streams.pipeline import PostPipeline

    class ExplodingDecoder:
        def prefetch(self, items: object) -> dict[object, object]:
            return {}

        def __call__(self, item: object, fetched: object, index: int) -> object:
            raise RuntimeError("boom")

    pipeline = PostPipeline.__new__(PostPipeline)
    from streams.stages.validate import PostValidator, ValidationLimits

    pipeline.validator = PostValidator(ValidationLimits())
    pipeline.decoder = ExplodingDecoder()  # type: ignore[assignment]
    pipeline.analyser = lambda batch, timer: []  # type: ignore[assignment,misc]
    from streams.stages.topics import TopicExtractor

    pipeline.topics = TopicExtractor()
    pipeline._decode_pool = None
    value = b'{"post_id": "p", "platform": "x", "author_id": "u", "created_at": 1700000000000, "text": "t"}'
    outcome = pipeline.process([Envelope(value=value, offset=3), Envelope(value=b"{", offset=4)])
    reasons = sorted(d.reason.value for d in outcome.dead_letters)
    assert reasons == ["internal_error", "invalid_json"]
    internal = next(d for d in outcome.dead_letters if d.reason is DeadLetterReason.INTERNAL_ERROR)
    assert internal.stage == "decode" and "boom" in internal.detail and internal.original == value
    # posts with media go to the decode pool: a bug there is each post's dead letter too
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        pipeline._decode_pool = pool
        media = [
            json.dumps(
                {
                    "post_id": f"m{i}",
                    "platform": "x",
                    "author_id": "u",
                    "created_at": 1700000000000,
                    "media": [{"kind": "image", "data_b64": "AAAA"}],
                }
            ).encode()
            for i in range(3)
        ]
        outcome = pipeline.process([Envelope(value=v, offset=i) for i, v in enumerate(media)])
    assert [d.post_id for d in outcome.dead_letters] == ["m0", "m1", "m2"]
    assert all(d.reason is DeadLetterReason.INTERNAL_ERROR for d in outcome.dead_letters)


# -- outputs that cannot wedge (issue 15) -------------------------------------------


class _Sends:
    """Records what the fake publishers were given; can refuse values by size."""

    def __init__(self, limit: int | None = None, down: bool = False) -> None:
        self.limit, self.down = limit, down
        self.analyses: list[bytes] = []
        self.dead: list[bytes] = []

    async def analysis(self, key: bytes | None, value: bytes) -> None:
        self.analyses.append(value)

    async def dead_letter(self, key: bytes | None, value: bytes) -> None:
        from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

        if self.down:
            raise KafkaTimeoutError("no broker")
        if self.limit is not None and len(value) > self.limit:
            raise MessageSizeTooLargeError(f"{len(value)} bytes")
        self.dead.append(value)


class _RefusingSink(ListSink[EmbeddingRow]):
    """Refuses any batch holding a row with a negative popularity, like a sink refusing
    a value it cannot store; or is down for good."""

    def __init__(self, down: bool = False) -> None:
        super().__init__(max_rows=8)
        self.down = down
        self.calls = 0

    def write_batch(self, batch: list[EmbeddingRow]) -> None:
        from exporters.base import RowsRejectedError

        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("milvus down")
        if any((r.popularity or 0) < 0 for r in batch):
            raise RowsRejectedError("value out of range")
        super().write_batch(batch)


def _bad(analysed: AnalysedPost) -> AnalysedPost:
    analysed.analysis = analysed.analysis.model_copy(update={"popularity": -1.0})
    return analysed


def test_a_refused_row_is_isolated_and_the_rest_written() -> None:
    registry = CollectorRegistry()
    sink, sends = _RefusingSink(), _Sends()
    writer = OutputWriter(sink, sends.analysis, sends.dead_letter, PipelineMetrics(registry))
    posts = [_analysed(i) for i in range(16)]
    _bad(posts[5])
    outcome = BatchOutcome(analysed=posts, size=16)
    asyncio.run(writer.write(outcome))
    assert sorted(r.post_id for r in sink.items) == sorted(f"p{i}" for i in range(16) if i != 5)
    assert len(sends.analyses) == 15
    [dead] = [DeadLetter.model_validate_json(v) for v in sends.dead]
    assert dead.reason is DeadLetterReason.SINK_REJECTED and dead.post_id == "p5"
    assert dead.stage == "output" and "milvus" in dead.detail and "out of range" in dead.detail
    assert [a.analysis.post_id for a in outcome.analysed] == [f"p{i}" for i in range(16) if i != 5]
    value = registry.get_sample_value
    assert value("postpulse_sink_rejected_posts_total", {"sink": "milvus"}) == 1
    assert value("postpulse_posts_total", {"outcome": "dead_lettered"}) == 1
    assert sink.calls <= 2 + 2 * 4  # two chunks of 8, bisected: a bounded number of writes


def test_batches_written_together_share_the_sink_write_and_keep_their_own_outcomes() -> None:
    registry = CollectorRegistry()
    sink, sends = _RefusingSink(), _Sends()
    sink.max_rows = 256
    writer = OutputWriter(sink, sends.analysis, sends.dead_letter, PipelineMetrics(registry))
    first = BatchOutcome(analysed=[_analysed(i) for i in range(4)], size=4)
    second = BatchOutcome(analysed=[_analysed(i) for i in range(4, 10)], size=6)
    _bad(second.analysed[1])  # p5
    asyncio.run(writer.write_all([first, second]))
    assert sorted(r.post_id for r in sink.items) == sorted(f"p{i}" for i in range(10) if i != 5)
    # one write for both batches, refused, then bisected down to p5 alone: 10 -> 5+5 ->
    # (p5..p9) 2+3 -> (p5, p6) 1+1
    assert sink.calls == 1 + 2 + 2 + 2
    assert [a.analysis.post_id for a in first.analysed] == ["p0", "p1", "p2", "p3"]
    assert not first.dead_letters
    assert [d.post_id for d in second.dead_letters] == ["p5"]
    assert len(sends.analyses) == 9 and len(sends.dead) == 1
    value = registry.get_sample_value
    assert value("postpulse_batch_size_posts_count") == 2  # each batch observed as its own
    assert value("postpulse_batch_size_posts_sum") == 10


def test_a_sink_down_for_good_dead_letters_the_batch_in_bounded_time() -> None:
    sink, sends = _RefusingSink(down=True), _Sends()
    policy = OutputPolicy(retry_budget_s=0.3, base_backoff_s=0.01, max_backoff_s=0.05)
    writer = OutputWriter(
        sink, sends.analysis, sends.dead_letter, PipelineMetrics(CollectorRegistry()), policy=policy
    )
    outcome = BatchOutcome(analysed=[_analysed(i) for i in range(4)], size=4)
    asyncio.run(asyncio.wait_for(writer.write(outcome), timeout=10))
    dead = [DeadLetter.model_validate_json(v) for v in sends.dead]
    assert sorted(d.post_id or "" for d in dead) == ["p0", "p1", "p2", "p3"]
    assert all("still failing" in d.detail and "milvus down" in d.detail for d in dead)
    assert not sends.analyses and sink.calls > 3  # retried, then given up


def test_a_dead_letter_too_big_to_publish_is_capped_then_spilled(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from streams.spill import SpillFile

    big = Envelope(value=b"x" * 200_000, offset=1).dead_letter(
        DeadLetterReason.TEXT_TOO_LONG, "validate", "long"
    )
    # a producer limit of 20 kB: the capped dead letter (16 kB of original) fits
    sends = _Sends(limit=30_000)
    policy = OutputPolicy(max_original_bytes=16_000)
    metrics = PipelineMetrics(CollectorRegistry())
    writer = OutputWriter(None, sends.analysis, sends.dead_letter, metrics, policy=policy)
    asyncio.run(writer.write(BatchOutcome(dead_letters=[big], size=1)))
    [sent] = [DeadLetter.model_validate_json(v) for v in sends.dead]
    assert sent.truncated and sent.original_size == 200_000 and len(sent.original) == 16_000
    # a producer refusing even that: the original goes, the summary is published
    sends = _Sends(limit=2_000)
    writer = OutputWriter(None, sends.analysis, sends.dead_letter, metrics, policy=policy)
    asyncio.run(writer.write(BatchOutcome(dead_letters=[big], size=1)))
    [bare] = [DeadLetter.model_validate_json(v) for v in sends.dead]
    assert bare.truncated and bare.original == b"" and bare.original_sha256 == big.original_sha256
    # a broker that is down past the budget: the spill file, never a retry loop
    spill = SpillFile(tmp_path / "spill" / "spill.jsonl", max_bytes=10_000, backups=2)
    registry = CollectorRegistry()
    writer = OutputWriter(
        None,
        sends.analysis,
        _Sends(down=True).dead_letter,
        PipelineMetrics(registry),
        policy=OutputPolicy(retry_budget_s=0.2, base_backoff_s=0.01, max_original_bytes=16_000),
        spill=spill,
    )
    for _ in range(3):
        asyncio.run(asyncio.wait_for(writer.write(BatchOutcome(dead_letters=[big], size=1)), 10))
    files = sorted(p.name for p in (tmp_path / "spill").iterdir())
    assert files == ["spill.jsonl", "spill.jsonl.1", "spill.jsonl.2"]  # rotated, bounded
    import json as _json

    line = _json.loads((tmp_path / "spill" / "spill.jsonl").read_text().splitlines()[0])
    assert line["kind"] == "dead_letter" and "KafkaTimeoutError" in line["error"]
    spilled = DeadLetter.model_validate_json(line["value"])
    assert spilled.reason is DeadLetterReason.TEXT_TOO_LONG and spilled.truncated
    assert (
        registry.get_sample_value("postpulse_spilled_records_total", {"kind": "dead_letter"}) == 3
    )


def test_errors_are_classified() -> None:
    from kafka.errors import (
        KafkaTimeoutError,
        MessageSizeTooLargeError,
        NotLeaderForPartitionError,
    )

    from exporters.base import RowsRejectedError
    from streams.outputs import ErrorKind, classify_error

    assert classify_error(BackpressureError("busy")) is ErrorKind.TRANSIENT
    assert classify_error(ConnectionRefusedError()) is ErrorKind.TRANSIENT
    assert classify_error(KafkaTimeoutError()) is ErrorKind.TRANSIENT
    assert classify_error(NotLeaderForPartitionError()) is ErrorKind.TRANSIENT
    assert classify_error(MessageSizeTooLargeError()) is ErrorKind.PERMANENT
    assert classify_error(RowsRejectedError("out of range")) is ErrorKind.PERMANENT
    assert classify_error(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate")) is (
        ErrorKind.PERMANENT
    )
    assert classify_error(RuntimeError("?")) is ErrorKind.UNKNOWN


def test_liveness_turns_red_when_records_wait_and_no_batch_is_taken() -> None:
    """A consumer that stops fetching has no batch in flight; the backlog timer's
    measure of waiting records is what shows it."""
    from streams.health import WorkerHealth

    now = [100.0]
    health = WorkerHealth(stall_after_s=30, clock=lambda: now[0])
    health.partitions_changed(2)
    health.report_backlog(0)
    now[0] += 1000  # idle for long with nothing waiting: alive
    assert health.liveness()[0]
    health.report_backlog(40)
    now[0] += 29
    health.report_backlog(55)  # still waiting: the clock runs from the first sighting
    alive, body = health.liveness()
    assert alive and body["records_waiting"] == 55
    now[0] += 2
    alive, body = health.liveness()
    assert not alive and body["status"] == "stalled"
    assert "55 record(s) waiting on 2 assigned partition(s)" in str(body["reason"])
    health.batch_started(16, {0: (0, 15)})  # taking records again
    assert health.liveness()[0]
    health.batch_done()
    assert health.done_next == {0: 16}
    health.report_backlog(None)  # broker unreachable: not the worker's fault
    now[0] += 100
    assert health.liveness()[0]
    health.report_backlog(3)
    health.partitions_changed(1)  # a rebalance starts the count again
    assert health.done_next == {} and health.backlog is None
    now[0] += 100
    assert health.liveness()[0]


def test_liveness_turns_red_when_a_batch_makes_no_progress() -> None:
    from streams.health import DrainTimeout, WorkerHealth

    now = [100.0]
    health = WorkerHealth(stall_after_s=30, clock=lambda: now[0])
    assert health.liveness()[0]
    health.batch_started(8, {0: (10, 17)})
    now[0] += 29
    assert health.liveness()[0]
    health.report_problem("milvus: retrying since 29 s: connection refused")
    now[0] += 2
    alive, body = health.liveness()
    assert not alive and body["status"] == "stalled"
    assert "connection refused" in str(body["reason"]) and body["in_flight"]["offsets"] == {
        "0": [10, 17]
    }  # type: ignore[index]
    health.batch_done()
    assert health.liveness()[0]
    health.batch_started(1, {2: (5, 5)})
    health.begin_drain(3)
    health.check_drain()
    now[0] += 4
    with pytest.raises(DrainTimeout, match=r"partition 2 offsets 5\.\.5"):
        health.check_drain()


def test_overlapped_batches_are_done_oldest_first_and_the_oldest_sets_liveness() -> None:
    from streams.health import WorkerHealth

    now = [100.0]
    health = WorkerHealth(stall_after_s=30, clock=lambda: now[0])
    health.batch_started(8, {0: (10, 17)})  # being written
    now[0] += 20
    health.batch_started(4, {0: (18, 21), 1: (0, 3)})  # being encoded meanwhile
    now[0] += 11  # the older batch is 31 s in flight, the newer 11 s
    alive, body = health.liveness()
    assert not alive and body["in_flight"] == {  # type: ignore[comparison-overlap]
        "messages": 8,
        "seconds": 31.0,
        "offsets": {"0": [10, 17]},
        "batches": 2,
    }
    assert "offsets 10..17" in health.describe_in_flight()
    assert "offsets 0..3" in health.describe_in_flight()
    health.batch_done()  # the older one
    assert health.done_next == {0: 18}
    alive, body = health.liveness()
    assert alive and body["in_flight"]["offsets"] == {"0": [18, 21], "1": [0, 3]}  # type: ignore[index]
    health.batch_done()
    assert health.done_next == {0: 22, 1: 4} and health.in_flight is None


class _RecordingMilvus:
    """Records the calls a sink makes and holds rows by id (the sink's own logic under
    test, not Milvus); ``forget`` drops what it was sent, as a restarted Lite server does."""

    def __init__(self, forget: bool = False) -> None:
        self.calls: list[str] = []
        self.rows: set[str] = set()
        self.forget = forget

    def upsert(self, collection: str, rows: list[dict[str, object]], timeout: float) -> None:
        self.calls.append(f"upsert {len(rows)}")
        if not self.forget:
            self.rows.update(str(r["post_id"]) for r in rows)

    def delete(self, collection: str, ids: list[str], timeout: float) -> None:
        self.calls.append(f"delete {len(ids)}")
        if not self.forget:
            self.rows.difference_update(ids)

    def flush(self, collection: str, timeout: float) -> None:
        self.calls.append("flush")

    released = False

    def load_collection(self, collection: str, timeout: float) -> None:
        self.calls.append("load")
        self.released = False

    def get(self, collection: str, ids: list[str], **kwargs: object) -> list[dict[str, str]]:
        assert kwargs.get("consistency_level") == "Strong"
        self.calls.append(f"get {len(ids)}")
        if self.released:  # what a restarted Milvus Lite server answers (pymilvus 2.6)
            raise MilvusException(
                message=f"Collection '{collection}' is in state 'released'; "
                "call load() before search/get/query"
            )
        return [{"post_id": i} for i in ids if i in self.rows]


def _row(post_id: str) -> EmbeddingRow:
    return EmbeddingRow(post_id, np.ones(4, np.float32), 1, "x", "news", "neutral", 0.5, 1, "v")


@pytest.mark.parametrize(
    ("uri", "setting", "flushes"),
    [
        ("/data/milvus.db", None, True),  # a Lite file: unflushed rows die with its process
        ("http://milvus:19530", None, False),  # a server: its WAL keeps acknowledged rows
        ("http://127.0.0.1:19530", True, True),  # a 'milvus-lite server', set on
        ("/data/milvus.db", False, False),
    ],
)
def test_the_milvus_sink_flushes_each_write_where_milvus_would_lose_it(
    uri: str, setting: bool | None, flushes: bool
) -> None:
    client = _RecordingMilvus()
    sink = MilvusEmbeddingSink(client, "posts", 4, uri=uri, flush_writes=setting)  # type: ignore[arg-type]
    sink.write_batch([_row("p1"), _row("p1")])
    sink.delete(["p1"])
    checked = (["flush", "get 1"], ["flush", "get 1"]) if flushes else ([], [])
    assert client.calls == ["upsert 1", *checked[0], "delete 1", *checked[1]]


def test_rows_a_restarted_milvus_lost_before_the_flush_are_written_again() -> None:
    """Milvus acknowledged the upsert and (after its client reconnected) the flush, but
    holds nothing: the sink reports a transient error, so the writer retries the batch."""
    client = _RecordingMilvus(forget=True)
    sink = MilvusEmbeddingSink(client, "posts", 4, uri="/m.db")  # type: ignore[arg-type]
    with pytest.raises(BackpressureError, match="lost 2 of the 2 rows"):
        sink.write_batch([_row("p1"), _row("p2")])
    client.rows = {"p3"}
    with pytest.raises(BackpressureError, match="still holds 1 of the 1 rows"):
        sink.delete(["p3"])
    client.forget = False
    sink.write_batch([_row("p1"), _row("p2")])
    assert client.rows == {"p1", "p2", "p3"}


def test_a_restarted_milvus_that_released_the_collection_is_read_after_a_load() -> None:
    """The check after the flush reads the rows back; a restarted Lite server holds the
    collection released, so the sink loads it and reads again instead of failing."""
    client = _RecordingMilvus()
    client.released = True
    sink = MilvusEmbeddingSink(client, "posts", 4, uri="/m.db")  # type: ignore[arg-type]
    sink.write_batch([_row("p1")])
    assert client.calls == ["upsert 1", "flush", "get 1", "load", "get 1"]
    assert client.rows == {"p1"}
