"""One frozen settings object, built once from the environment (prefix ``POSTPULSE_``).

Nothing else in postpulse reads the environment: build :class:`Settings` at the edge
(the CLI) and pass it in.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, FilePath, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of a postpulse process. Immutable once built."""

    model_config = SettingsConfigDict(env_prefix="POSTPULSE_", frozen=True, extra="ignore")

    app_id: str = Field(
        default="postpulse",
        description="Faust app id and consumer group ('<id>-trends' for the trends worker)",
    )
    broker_url: str = Field(
        default="kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers, e.g. kafka://k1:9092;k2:9092",
    )
    broker_profile: Literal["local", "kafka"] = Field(
        default="local",
        description="'local' tunes clients for the bundled tansu broker; 'kafka' for Apache Kafka.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="how clients talk to Kafka"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL mechanism (SASL_* protocols)"
    )
    kafka_sasl_username: str = Field(default="", description="SASL user name")
    kafka_sasl_password: SecretStr = Field(
        default=SecretStr(""), description="SASL password (secret, never logged)"
    )
    kafka_ssl_cafile: FilePath | None = Field(
        default=None, description="CA bundle that signed the brokers' certificates (SSL, SASL_SSL)"
    )
    kafka_ssl_certfile: FilePath | None = Field(
        default=None, description="client certificate for mutual TLS (PEM)"
    )
    kafka_ssl_keyfile: FilePath | None = Field(
        default=None, description="client key for mutual TLS"
    )
    topic_posts: str = Field(default="posts", description="incoming posts")
    topic_dlq: str = Field(
        default="posts.dlq", description="dead letters (rejected posts with the reason)"
    )
    topic_analyses: str = Field(default="post-analyses", description="one analysis record per post")
    topic_engagement: str = Field(
        default="engagement",
        description="later engagement counts of already collected posts (postpulse collect)",
    )
    worker_role: Literal["posts", "trends"] = Field(
        default="posts", description="'posts' analyses posts; 'trends' counts trend events"
    )
    topic_trend_events: str = Field(
        default="post-trend-events",
        description="per-topic trend events, keyed by topic (posts worker -> trends worker)",
    )
    topic_partitions: int = Field(
        default=4,
        ge=1,
        description="partitions when postpulse creates the topics (workers <= partitions)",
    )

    max_batch: int = Field(default=32, ge=1, description="posts per encoder batch")
    max_wait_ms: int = Field(default=200, ge=1, description="longest wait to fill a batch")
    pipeline_overlap: bool = Field(
        default=True,
        description="encode the next batch while the last one's outputs are written (acks "
        "stay in order, each after its outputs are durable); off: take, process, write, "
        "ack one batch at a time",
    )
    text_length_buckets: bool = Field(
        default=True,
        description="encode a batch's texts in runs of similar token length, each padded "
        "only to its longest (off: one run padded to the batch's longest text)",
    )

    bundle_path: Path = Field(
        default=Path("models/default"),
        description="model bundle folder (encoders + fusion, from 'postpulse export' or 'train')",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="'auto' (CUDA when its libraries load, else CPU), 'cpu' or 'cuda'",
    )
    cpu_threads: int = Field(
        default=0,
        ge=0,
        description="cores the worker's compute may use: ONNX Runtime's intra-op threads "
        "(unless intra_op_threads is set), speech to text's threads and the pool that decodes "
        "one batch's media; 0 = the CPUs this process may run on",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads per session, 0 = cpu_threads"
    )
    onnx_spin_wait: bool = Field(
        default=False,
        description="ONNX Runtime threads spin-wait between ops (ORT's own default) instead "
        "of sleeping; off leaves the cores to decoding and output writes meanwhile",
    )

    milvus_uri: str = Field(
        default="./data/milvus.db",
        description="Milvus Lite file path, or a Milvus server URI (http://host:19530)",
    )
    milvus_token: SecretStr = Field(
        default=SecretStr(""),
        description="Milvus credentials, 'user:password' or an API key (secret)",
    )
    milvus_collection: str = Field(default="posts", description="collection of post embeddings")
    milvus_flush_rows: int = Field(default=256, ge=1, description="rows per Milvus upsert")
    milvus_flush_writes: bool | None = Field(
        default=None,
        description="flush after each upsert and delete, so that rows Milvus acknowledged "
        "survive its restart (Milvus Lite loses unflushed ones; a server's WAL keeps them). "
        "Default: on for a Milvus Lite file, off for a server URI (set it on for a "
        "'milvus-lite server')",
    )
    milvus_index_type: Literal["HNSW", "IVF_FLAT", "FLAT", "AUTOINDEX"] = Field(
        default="HNSW", description="vector index of a new collection"
    )
    milvus_hnsw_m: int = Field(default=16, ge=2, le=2048, description="HNSW graph degree")
    milvus_hnsw_ef_construction: int = Field(
        default=200, ge=1, description="HNSW build depth (index quality vs build time)"
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

    api_host: str = Field(default="127.0.0.1", description="'postpulse api' listen address")
    api_port: int = Field(default=8080, ge=0, le=65535, description="'postpulse api' listen port")
    api_token: SecretStr = Field(
        default=SecretStr(""), description="bearer token the API requires (required to start)"
    )
    api_max_body_bytes: int = Field(
        default=25 * 1024 * 1024, ge=1024, description="largest request body (uploads)"
    )

    data_dir: Path = Field(
        default=Path("data"), description="local state (Faust tables, demo files)"
    )
    web_host: str = Field(
        default="127.0.0.1", description="worker web server address (/metrics, /healthz, /trends)"
    )
    web_port: int = Field(default=6066, ge=0, le=65535, description="worker web server port")

    max_text_chars: int = Field(default=20_000, ge=1, description="longer texts are dead-lettered")
    max_media_items: int = Field(
        default=16, ge=0, description="more media items per post are dead-lettered"
    )
    max_media_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, description="largest media item (bytes)"
    )
    max_image_pixels: int = Field(
        default=50_000_000, ge=1, description="larger images are refused (decompression bombs)"
    )
    media_root: Path | None = Field(
        default=None, description="local media files are read only below this folder"
    )
    output_retry_max_s: float = Field(
        default=30.0, gt=0, description="longest back-off between retries of Milvus/Kafka writes"
    )
    output_retry_budget_s: float = Field(
        default=120.0,
        gt=0,
        description="how long one batch's outputs are retried while a sink is unavailable; "
        "then its posts are dead-lettered as sink_rejected",
    )
    output_max_attempts: int = Field(
        default=4,
        ge=1,
        description="attempts of a write failing with an unclassified error before the sink "
        "is probed (reachable: the rows are refused, isolated and dead-lettered)",
    )
    dlq_max_original_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        description="original message bytes a dead letter carries at most (the rest is "
        "summarised by size and SHA-256, with truncated=true)",
    )
    spill_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="size of one spill file (data_dir/spill/spill.jsonl) before it rotates",
    )
    spill_backups: int = Field(default=5, ge=1, description="rotated spill files kept")
    liveness_stall_s: float = Field(
        default=300.0,
        gt=0,
        description="/healthz fails when a batch has been in flight this long without an outcome",
    )
    shutdown_drain_s: float = Field(
        default=30.0,
        gt=0,
        description="on SIGTERM, how long the current batch may take to finish; then the "
        "worker exits non-zero and the batch stays uncommitted",
    )

    max_media_duration_s: float = Field(default=600.0, gt=0, description="longest video/audio")
    max_frame_pixels: int = Field(default=4096 * 4096, ge=1, description="largest video frame")
    max_decode_s: float = Field(default=20.0, gt=0, description="wall-clock cap per media item")
    video_sample_fps: float = Field(
        default=1.0, gt=0, description="frames sampled per second of video"
    )
    video_max_frames: int = Field(default=16, ge=1, description="frames sampled per video at most")

    ocr_enabled: bool = Field(default=True, description="read text in images and video frames")
    ocr_frames_per_video: int = Field(default=3, ge=0, description="video frames read by OCR")
    ocr_gate_side: int = Field(
        default=672,
        ge=0,
        description="a large picture is first looked at by the text detector at this longer "
        "side and read in full only when that finds something (text under ~2% of the "
        "picture's side may be missed); 0 reads every picture in full",
    )
    stt_enabled: bool = Field(default=True, description="transcribe speech in audio and video")
    stt_beam_size: int = Field(default=5, ge=1, description="speech-to-text beam size")
    stt_min_speech_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="transcribe only clips with at least this share of voice",
    )

    trend_windows: str = Field(
        default="5m,1h,1d", description="window sizes counted per topic (tumbling, by created_at)"
    )
    trend_retention_windows: int = Field(
        default=2016, ge=1, description="windows of each size kept per topic"
    )
    trend_lateness: str = Field(
        default="10m", description="how late (event time) a post may arrive and still count"
    )
    trend_top_k: int = Field(default=10, ge=1, description="trending topics per window")
    trend_min_support: int = Field(default=5, ge=1, description="posts a topic needs to rank")
    trend_history_windows: int = Field(default=24, ge=1, description="baseline windows")
    trend_hashtag_capacity: int = Field(
        default=1000, ge=1, description="hashtags tracked per partition (space-saving)"
    )
    trend_refresh_s: float = Field(default=15.0, gt=0, description="trend gauges refresh")
    trend_batch: int = Field(default=512, ge=1, description="trend events counted per batch")
    emerging_similarity: float = Field(
        default=0.8, gt=0, le=1, description="cosine to join an emerging-topic cluster"
    )
    emerging_min_support: int = Field(
        default=5, ge=2, description="posts an emerging cluster needs to become a topic"
    )
    emerging_max_category_prob: float = Field(
        default=0.5, ge=0, le=1, description="posts less sure of their category get clustered"
    )

    mastodon_token: SecretStr = Field(
        default=SecretStr(""),
        description="Mastodon access token for 'postpulse collect mastodon' (secret; "
        "public timelines need none)",
    )
    bluesky_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bluesky access JWT for the author feed (secret; the public AppView "
        "needs none)",
    )
    reddit_token: SecretStr = Field(
        default=SecretStr(""),
        description="Reddit OAuth bearer token (secret); with it listings are read from "
        "oauth.reddit.com, without it from the public JSON of www.reddit.com",
    )
    reddit_user_agent: str = Field(
        default="",
        description="the User-Agent Reddit requires, '<platform>:<app id>:<version> "
        "(by /u/<username>)'; 'postpulse collect reddit' refuses to run without one",
    )
    crawl_delay_s: float = Field(
        default=1.0,
        ge=0,
        description="seconds between two requests to one host when robots.txt names no "
        "Crawl-delay (a larger robots.txt value wins)",
    )
    crawl_max_per_host: int = Field(
        default=1, ge=1, le=8, description="requests to one host at once (crawler)"
    )

    fetch_enabled: bool = Field(default=True, description="fetch http(s) media")
    fetch_connect_timeout_s: float = Field(
        default=3.0, gt=0, description="media fetch connect timeout"
    )
    fetch_read_timeout_s: float = Field(default=10.0, gt=0, description="media fetch read timeout")
    fetch_total_timeout_s: float = Field(
        default=30.0, gt=0, description="media fetch total time limit"
    )
    fetch_max_redirects: int = Field(
        default=3, ge=0, description="redirects followed (each one re-checked)"
    )
    fetch_concurrency: int = Field(default=16, ge=1, description="media fetched at once per batch")
    fetch_allowed_networks: tuple[str, ...] = Field(
        default=(),
        description="CIDRs media may be fetched from although private/loopback (default: none)",
    )


MAX_REQUEST_BYTES = 1_048_576
"""Largest produce request the clients send: Apache Kafka's default ``message.max.bytes``
(1 MiB plus the batch header) admits it, and so does tansu. Dead letters are capped to
fit (``dlq_max_original_bytes``)."""


@dataclass(frozen=True)
class BrokerProfile:
    """Client settings that depend on which Kafka implementation is on the other end."""

    name: str
    faust: dict[str, Any] = field(default_factory=dict)
    max_request_bytes: int = MAX_REQUEST_BYTES
    kafka_producer: dict[str, Any] = field(default_factory=dict)
    kafka_consumer: dict[str, Any] = field(default_factory=dict)
    kafka_admin: dict[str, Any] = field(default_factory=dict)


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
        "producer_max_request_size": MAX_REQUEST_BYTES,
    },
    kafka_producer={
        "batch_size": 1,
        "linger_ms": 0,
        "acks": "all",
        "max_request_size": MAX_REQUEST_BYTES,
    },
    kafka_consumer={"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000},
)

KAFKA_PROFILE = BrokerProfile(
    name="kafka",
    faust={
        "processing_guarantee": "at_least_once",
        "consumer_auto_offset_reset": "earliest",
        "topic_replication_factor": 3,
        "producer_max_request_size": MAX_REQUEST_BYTES,
    },
    kafka_producer={"linger_ms": 5, "acks": "all", "max_request_size": MAX_REQUEST_BYTES},
    kafka_consumer={},
)


def compute_threads(settings: Settings) -> int:
    """The worker's thread budget: ``cpu_threads``, else the CPUs this process may run on
    (its affinity mask, which a container's cpuset narrows), capped by a cgroup v2 CPU
    quota (a Kubernetes CPU limit) rounded up."""
    if settings.cpu_threads:
        return settings.cpu_threads
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs allowed by this cgroup's ``cpu.max`` ("max 100000": no limit; None too when
    the file is missing or unreadable)."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def kafka_security(settings: Settings) -> dict[str, Any]:
    """kafka-python client arguments for the configured security protocol."""
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL"):
        config.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get_secret_value(),
        )
    if protocol.endswith("SSL"):
        for name in ("cafile", "certfile", "keyfile"):
            path = getattr(settings, f"kafka_ssl_{name}")
            if path is not None:
                config[f"ssl_{name}"] = str(path)
    return config


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for the configured protocol (None for PLAINTEXT)."""
    import ssl

    import faust

    protocol = settings.kafka_security_protocol
    context = None
    if protocol.endswith("SSL"):
        cafile = settings.kafka_ssl_cafile
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        if settings.kafka_ssl_certfile is not None:
            context.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            )
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context is not None else None


def broker_profile(settings: Settings) -> BrokerProfile:
    """The client profile named by ``settings.broker_profile``, with the configured
    security (TLS, SASL) added to every client it configures."""
    base = LOCAL_BROKER_PROFILE if settings.broker_profile == "local" else KAFKA_PROFILE
    if settings.kafka_security_protocol == "PLAINTEXT":
        return base
    security = kafka_security(settings)
    return BrokerProfile(
        name=base.name,
        faust={**base.faust, "broker_credentials": faust_credentials(settings)},
        kafka_producer={**base.kafka_producer, **security},
        kafka_consumer={**base.kafka_consumer, **security},
        kafka_admin=security,
    )


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


def _default_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "(secret, empty)" if not value.get_secret_value() else "(secret)"
    if value is None or value == "" or value == ():
        return "—"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def settings_markdown() -> str:
    """The settings table of docs/settings.md: every field's environment variable,
    default and meaning, generated from :class:`Settings` (a test keeps it current)."""
    lines = [
        "# Settings",
        "",
        "Generated from `streams/settings.py` by",
        "`postpulse settings --markdown docs/settings.md`; a test fails when this file is",
        "stale. Every setting is an environment variable; CLI flags override the ones they",
        "name. Lists are JSON; secrets are never logged.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        env = f"POSTPULSE_{name.upper()}"
        description = (info.description or "").replace("|", "\\|")
        default = _default_text(info.default)
        if default != "—" and not default.startswith("(secret"):
            default = f"`{default}`"
        lines.append(f"| `{env}` | {default} | {description} |")
    return "\n".join(lines) + "\n"
