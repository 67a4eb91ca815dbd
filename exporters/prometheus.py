"""Pipeline metrics on a registry passed in (a fresh ``CollectorRegistry`` per test)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class PipelineMetrics:
    """Every metric the worker exports. Label values are bounded sets (outcomes,
    stages, dead-letter reasons, modalities) — never post, user or hashtag ids."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.posts = Counter(
            "postpulse_posts", "Posts processed, by outcome.", ["outcome"], registry=registry
        )
        self.dead_letters = Counter(
            "postpulse_dead_letters",
            "Posts sent to the dead-letter topic, by reason and stage.",
            ["reason", "stage"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "postpulse_stage_duration_seconds",
            "Time spent in each pipeline stage per batch.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.encoder_seconds = Histogram(
            "postpulse_encoder_duration_seconds",
            "Encoder run time per batch, by modality.",
            ["modality"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.encoder_items = Counter(
            "postpulse_encoder_items",
            "Items (texts, images) run through each encoder.",
            ["modality"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "postpulse_batch_size_posts",
            "Posts per processed batch.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "postpulse_post_latency_seconds",
            "From the post's Kafka timestamp to its outputs being written.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.media_skipped = Counter(
            "postpulse_media_skipped",
            "Media items not encoded because this bundle has no encoder for their kind.",
            ["kind"],
            registry=registry,
        )
        self.sink_retries = Counter(
            "postpulse_sink_retries",
            "Output writes retried after a failure or back-pressure.",
            ["sink"],
            registry=registry,
        )
        self.sink_errors = Counter(
            "postpulse_sink_errors",
            "Failed output writes, by sink and how they were classified "
            "(transient: retried; permanent: the rows were isolated and dead-lettered).",
            ["sink", "kind"],
            registry=registry,
        )
        self.sink_rejected = Counter(
            "postpulse_sink_rejected_posts",
            "Posts dead-lettered as sink_rejected, by the sink that refused them.",
            ["sink"],
            registry=registry,
        )
        self.spilled = Counter(
            "postpulse_spilled_records",
            "Records no topic took, written to the local spill file instead.",
            ["kind"],
            registry=registry,
        )
        self.tool_failures = Counter(
            "postpulse_tool_failures",
            "Items a tool (ocr, speech_to_text, voice_activity) failed on; the post was "
            "analysed without that tool's output.",
            ["tool"],
            registry=registry,
        )
        self.topic_errors = Counter(
            "postpulse_topic_extraction_errors",
            "Posts whose key-phrase or emerging-topic extraction raised; their category "
            "and hashtags were still counted.",
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "postpulse_assigned_partitions",
            "Input-topic partitions this worker currently consumes.",
            registry=registry,
        )
        self.bundle_info = Gauge(
            "postpulse_bundle_info",
            "The model bundle served (value is always 1).",
            ["bundle_version", "fusion", "provider"],
            registry=registry,
        )

        # trends: topic label values are bounded (categories, the current top-K, "other")
        self.topic_posts = Counter(
            "postpulse_topic_posts",
            "Posts counted toward a topic, by topic kind, topic and sentiment.",
            ["kind", "topic", "sentiment"],
            registry=registry,
        )
        self.trend_events = Counter(
            "postpulse_trend_events",
            "Trend events read, by outcome (counted, duplicate, late, malformed).",
            ["outcome"],
            registry=registry,
        )
        self.trend_gap_records = Counter(
            "postpulse_trend_gap_records",
            "Trend events the trends agent's consumer skipped and the agent read from the "
            "broker itself (a gap in the offsets it was handed).",
            registry=registry,
        )
        self.trend_score = Gauge(
            "postpulse_trend_score",
            "Trend score of the current top-K topics per window (standard deviations "
            "above the topic's own baseline).",
            ["window", "topic"],
            registry=registry,
        )
        self.trend_rank = Gauge(
            "postpulse_trend_rank",
            "Rank (1 = most trending) of the current top-K topics per window.",
            ["window", "topic"],
            registry=registry,
        )
        self.trend_window_posts = Gauge(
            "postpulse_trend_window_posts",
            "Posts of the current top-K topics in the latest window.",
            ["window", "topic"],
            registry=registry,
        )
        self.hashtags_tracked = Gauge(
            "postpulse_hashtags_tracked",
            "Hashtags with window counts on this worker (bounded by the space-saving counter).",
            registry=registry,
        )
        self.trend_watermark = Gauge(
            "postpulse_trend_event_time_seconds",
            "Newest post time (created_at) counted in trends on this worker.",
            registry=registry,
        )

        # known label values start at 0, so dashboards and alerts see the series at once
        for outcome in ("analysed", "dead_lettered"):
            self.posts.labels(outcome)
        for sink in ("milvus", "analyses", "dead_letters", "trend_events"):
            self.sink_retries.labels(sink)
        for outcome in ("counted", "duplicate", "late", "malformed"):
            self.trend_events.labels(outcome)
        for sink in ("milvus", "analyses"):
            self.sink_rejected.labels(sink)
        for kind in ("dead_letter", "trend_event"):
            self.spilled.labels(kind)
        for tool in ("ocr", "speech_to_text", "voice_activity"):
            self.tool_failures.labels(tool)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
