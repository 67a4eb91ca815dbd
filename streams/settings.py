"""One frozen settings object, built once from the environment (prefix ``POSTPULSE_``).

Nothing else in postpulse reads the environment: build :class:`Settings` at the edge
(the CLI) and pass it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of a postpulse process. Immutable once built."""

    model_config = SettingsConfigDict(env_prefix="POSTPULSE_", frozen=True, extra="ignore")

    app_id: str = "postpulse"
    broker_url: str = "kafka://127.0.0.1:9092"
    broker_profile: Literal["local", "kafka"] = Field(
        default="local",
        description="'local' tunes clients for the bundled tansu broker; 'kafka' for Apache Kafka.",
    )
    topic_posts: str = "posts"
    topic_dlq: str = "posts.dlq"
    topic_analyses: str = "post-analyses"
    worker_role: Literal["posts", "trends"] = Field(
        default="posts", description="'posts' analyses posts; 'trends' counts trend events"
    )
    topic_trend_events: str = "post-trend-events"
    topic_partitions: int = Field(default=4, ge=1)

    max_batch: int = Field(default=32, ge=1, description="posts per encoder batch")
    max_wait_ms: int = Field(default=200, ge=1, description="longest wait to fill a batch")

    bundle_path: Path = Path("models/default")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime threads, 0 = auto")

    milvus_uri: str = "./data/milvus.db"
    milvus_token: SecretStr = SecretStr("")
    milvus_collection: str = "posts"
    milvus_flush_rows: int = Field(default=256, ge=1)
    milvus_index_type: Literal["HNSW", "IVF_FLAT", "FLAT", "AUTOINDEX"] = Field(
        default="HNSW", description="vector index of a new collection"
    )
    milvus_search_ef: int = Field(
        default=1024, ge=1, description="HNSW search depth (raised to top_k + offset)"
    )

    near_duplicate_threshold: float = Field(
        default=0.9, gt=0, le=1, description="cosine above which a post is a near-duplicate"
    )
    event_threshold: float = Field(
        default=0.9, gt=0, le=1, description="cosine linking two posts into one event group"
    )
    event_window: str = Field(
        default="6h", description="posts further apart in time are not linked into an event"
    )
    event_max_posts: int = Field(default=20_000, ge=1, description="posts one grouping reads")

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    api_token: SecretStr = Field(
        default=SecretStr(""), description="bearer token the API requires (required to start)"
    )
    api_max_body_bytes: int = Field(
        default=25 * 1024 * 1024, ge=1024, description="largest request body (uploads)"
    )

    data_dir: Path = Path("data")
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)

    max_text_chars: int = Field(default=20_000, ge=1)
    max_media_items: int = Field(default=16, ge=0)
    max_media_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    media_root: Path | None = Field(
        default=None, description="local media files are read only below this folder"
    )
    output_retry_max_s: float = Field(default=30.0, gt=0)

    max_media_duration_s: float = Field(default=600.0, gt=0, description="longest video/audio")
    max_frame_pixels: int = Field(default=4096 * 4096, ge=1)
    max_decode_s: float = Field(default=20.0, gt=0, description="wall-clock cap per media item")
    video_sample_fps: float = Field(default=1.0, gt=0)
    video_max_frames: int = Field(default=16, ge=1)

    ocr_enabled: bool = True
    ocr_frames_per_video: int = Field(default=3, ge=0)
    stt_enabled: bool = True
    stt_beam_size: int = Field(default=5, ge=1)
    stt_min_speech_ratio: float = Field(default=0.1, ge=0, le=1)

    trend_windows: str = Field(
        default="5m,1h,1d", description="window sizes counted per topic (tumbling, by created_at)"
    )
    trend_retention_windows: int = Field(
        default=2016, ge=1, description="windows of each size kept per topic"
    )
    trend_lateness: str = Field(
        default="10m", description="how late (event time) a post may arrive and still count"
    )
    trend_top_k: int = Field(default=10, ge=1)
    trend_min_support: int = Field(default=5, ge=1, description="posts a topic needs to rank")
    trend_history_windows: int = Field(default=24, ge=1, description="baseline windows")
    trend_hashtag_capacity: int = Field(
        default=1000, ge=1, description="hashtags tracked per partition (space-saving)"
    )
    trend_refresh_s: float = Field(default=15.0, gt=0, description="trend gauges refresh")
    trend_batch: int = Field(default=512, ge=1, description="trend events counted per batch")
    emerging_similarity: float = Field(default=0.8, gt=0, le=1)
    emerging_min_support: int = Field(default=5, ge=2)
    emerging_max_category_prob: float = Field(
        default=0.5, ge=0, le=1, description="posts less sure of their category get clustered"
    )

    fetch_enabled: bool = True
    fetch_connect_timeout_s: float = Field(default=3.0, gt=0)
    fetch_read_timeout_s: float = Field(default=10.0, gt=0)
    fetch_total_timeout_s: float = Field(default=30.0, gt=0)
    fetch_max_redirects: int = Field(default=3, ge=0)
    fetch_concurrency: int = Field(default=16, ge=1)
    fetch_allowed_networks: tuple[str, ...] = Field(
        default=(),
        description="CIDRs media may be fetched from although private/loopback (default: none)",
    )


@dataclass(frozen=True)
class BrokerProfile:
    """Client settings that depend on which Kafka implementation is on the other end."""

    name: str
    faust: dict[str, Any] = field(default_factory=dict)
    kafka_producer: dict[str, Any] = field(default_factory=dict)
    kafka_consumer: dict[str, Any] = field(default_factory=dict)


# The bundled tansu broker reports a wrong end offset for multi-record batches and
# has no exactly-once isolation (ARCHITECTURE.md): one record per produce batch,
# at-least-once, short sessions.
LOCAL_BROKER_PROFILE = BrokerProfile(
    name="local",
    faust={
        "producer_max_batch_size": 1,
        "processing_guarantee": "at_least_once",
        "broker_session_timeout": 10,
        "broker_heartbeat_interval": 2,
        "broker_rebalance_timeout": 20,
        "topic_replication_factor": 1,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_every": 100,
        "broker_commit_interval": 1.0,
    },
    kafka_producer={"batch_size": 1, "linger_ms": 0, "acks": "all"},
    kafka_consumer={"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000},
)

KAFKA_PROFILE = BrokerProfile(
    name="kafka",
    faust={
        "processing_guarantee": "at_least_once",
        "consumer_auto_offset_reset": "earliest",
        "topic_replication_factor": 3,
    },
    kafka_producer={"linger_ms": 5, "acks": "all"},
    kafka_consumer={},
)


def broker_profile(settings: Settings) -> BrokerProfile:
    """The client profile named by ``settings.broker_profile``."""
    return LOCAL_BROKER_PROFILE if settings.broker_profile == "local" else KAFKA_PROFILE


def bootstrap_servers(broker_url: str) -> list[str]:
    """``kafka://h1:9092;h2:9092`` (Faust style) -> ``["h1:9092", "h2:9092"]``."""
    servers = []
    for part in broker_url.replace(",", ";").split(";"):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        if part:
            servers.append(part)
    if not servers:
        raise ValueError(f"no broker address in {broker_url!r}")
    return servers
