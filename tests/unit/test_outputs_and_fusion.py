"""Output writing (retries, nothing dropped), the baseline fusion, sinks, metrics, settings."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from encoders.serving import early_fusion_baseline, l2_normalize
from exporters.base import BackpressureError
from exporters.memory import ListSink
from exporters.milvus import EmbeddingRow
from exporters.prometheus import PipelineMetrics
from streams.outputs import OutputPolicy, OutputWriter
from streams.pipeline import BatchOutcome
from streams.records import Analysis, DeadLetterReason, Envelope, Post
from streams.settings import LOCAL_BROKER_PROFILE, Settings, bootstrap_servers, broker_profile
from streams.stages.analyse import AnalysedPost, popularity_score, sentiment_label
from streams.stages.decode import DecodedPost
from streams.stages.validate import ValidatedPost


def _analysed(i: int) -> AnalysedPost:
    post = Post(post_id=f"p{i}", platform="x", author_id="u", created_at=1_700_000_000_000 + 1000 * i, text="t")
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
    value = b'{"post_id": "p", "platform": "x", "author_id": "u", "created_at": 1700000000000, "text": "t"}'
    outcome = pipeline.process([Envelope(value=value, offset=3), Envelope(value=b"{", offset=4)])
    reasons = sorted(d.reason.value for d in outcome.dead_letters)
    assert reasons == ["internal_error", "invalid_json"]
    internal = next(d for d in outcome.dead_letters if d.reason is DeadLetterReason.INTERNAL_ERROR)
    assert internal.stage == "decode" and "boom" in internal.detail and internal.original == value
