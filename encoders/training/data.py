"""Data sets: import posts (JSONL/CSV/Parquet), deduplicate, split, describe, and cache
their modality embeddings computed by the same code the worker runs.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from encoders.bundle import Manifest
from encoders.serving import ServedBundle
from encoders.text import normalize_social
from streams.records import DeadLetter, Envelope
from streams.settings import Settings
from streams.stages.analyse import StageTimer, popularity_score, sentiment_label
from streams.stages.decode import DecodedPost
from streams.stages.validate import ValidatedPost

SENTIMENTS = ["negative", "neutral", "positive"]
LABEL_SEPARATOR = "|"  # a multi-label post's categories, joined in the cache


def category_labels(categories: np.ndarray | list[str]) -> list[str]:
    """The sorted category names in a cache's category column (multi-label rows are
    ``a|b``)."""
    return sorted({c for value in categories for c in str(value).split(LABEL_SEPARATOR)})


_PLACEHOLDERS = re.compile(r"(?<!\S)(?:http|@user)(?!\S)")  # what normalize_social leaves


def read_posts(path: Path) -> list[dict[str, Any]]:
    """Posts from a JSONL, CSV or Parquet file (CSV/Parquet: nested fields as JSON text)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with path.open() as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: unsupported format (use .jsonl, .csv or .parquet)")
    import pandas as pd

    frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    rows = []
    for record in frame.to_dict(orient="records"):
        row: dict[str, Any] = {}
        for key, value in record.items():
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            if key in ("media", "engagement", "labels") and isinstance(value, str):
                value = json.loads(value)
            if key == "created_at" and isinstance(value, float) and value.is_integer():
                value = int(value)
            row[str(key)] = value
        rows.append(row)
    return rows


def write_posts(posts: list[dict[str, Any]], path: Path) -> Path:
    """Posts as JSONL, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for post in posts:
            handle.write(json.dumps(post, ensure_ascii=False) + "\n")
    return path


def dedup_key(text: str) -> str:
    """Near-identical texts share a key: normalised as the encoder sees them, links and
    mentions dropped, case and punctuation folded."""
    folded = _PLACEHOLDERS.sub(" ", normalize_social(text)).lower()
    folded = re.sub(r"[^\w#]+", " ", folded).strip()
    return hashlib.sha1(folded.encode()).hexdigest()


def deduplicate(posts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Drop repeated post ids and near-identical texts of text-only posts."""
    seen_ids: set[str] = set()
    seen_text: set[str] = set()
    kept, dropped = [], Counter[str]()
    for post in posts:
        post_id = str(post.get("post_id"))
        if post_id in seen_ids:
            dropped["duplicate_id"] += 1
            continue
        seen_ids.add(post_id)
        text = str(post.get("text") or "")
        if text.strip() and not post.get("media"):
            key = dedup_key(text)
            if key in seen_text:
                dropped["near_identical_text"] += 1
                continue
            seen_text.add(key)
        kept.append(post)
    return kept, dict(dropped)


def split_by_time(
    created_at: np.ndarray, fractions: tuple[float, float] = (0.7, 0.15)
) -> np.ndarray:
    """Oldest posts train, then validation, newest test (0/1/2 per item)."""
    order = np.argsort(created_at, kind="stable")
    out = np.zeros(len(created_at), dtype=np.int8)
    n_train = round(len(order) * fractions[0])
    n_val = round(len(order) * fractions[1])
    out[order[n_train : n_train + n_val]] = 1
    out[order[n_train + n_val :]] = 2
    return out


def split(
    labels: list[str], seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15)
) -> np.ndarray:
    """Stratified train/validation/test assignment (0/1/2) per item."""
    rng = random.Random(seed)
    out = np.zeros(len(labels), dtype=np.int8)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for items in by_label.values():
        rng.shuffle(items)
        n_train = round(len(items) * fractions[0])
        n_val = round(len(items) * fractions[1])
        for k, i in enumerate(items):
            out[i] = 0 if k < n_train else 1 if k < n_train + n_val else 2
    return out


def _row_indices(keep: np.ndarray) -> list[int]:
    keep = np.asarray(keep)
    return np.flatnonzero(keep).tolist() if keep.dtype == bool else keep.tolist()


@dataclass
class EmbeddingCache:
    """Modality embeddings and targets of a data set, aligned by row."""

    post_ids: np.ndarray
    parts: dict[str, np.ndarray]
    presence: np.ndarray
    modalities: list[str]
    category: np.ndarray
    sentiment: np.ndarray
    popularity: np.ndarray
    created_at: np.ndarray
    split: np.ndarray
    encoders_key: str
    extra: dict[str, np.ndarray]
    texts: list[str] | None = None  # what the text encoder saw (for text baselines)
    text_vocab_size: int = 0  # of the tokenizer behind extra["text_token_ids"]
    # (videos, frames, dim) frame embeddings of each post's first video, zero-padded;
    # extra["video_index"] points rows into it (-1: no video). Not subset with the rows.
    video_frames: np.ndarray | None = None

    def subset(self, keep: np.ndarray) -> EmbeddingCache:
        """The rows selected by a boolean mask or index array."""
        return EmbeddingCache(
            post_ids=self.post_ids[keep],
            parts={m: v[keep] for m, v in self.parts.items()},
            presence=self.presence[keep],
            modalities=self.modalities,
            category=self.category[keep],
            sentiment=self.sentiment[keep],
            popularity=self.popularity[keep],
            created_at=self.created_at[keep],
            split=self.split[keep],
            encoders_key=self.encoders_key,
            extra={k: v[keep] for k, v in self.extra.items()},
            texts=None if self.texts is None else [self.texts[k] for k in _row_indices(keep)],
            text_vocab_size=self.text_vocab_size,
            video_frames=self.video_frames,
        )

    def save(self, path: Path) -> Path:
        """Write one ``.npz``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {f"part_{m}": v for m, v in self.parts.items()}
        arrays |= {f"extra_{k}": v for k, v in self.extra.items()}
        arrays |= {
            "post_ids": self.post_ids,
            "presence": self.presence,
            "modalities": np.array(self.modalities),
            "category": self.category,
            "sentiment": self.sentiment,
            "popularity": self.popularity,
            "created_at": self.created_at,
            "split": self.split,
            "encoders_key": np.array(self.encoders_key),
            "text_vocab_size": np.array(self.text_vocab_size),
        }
        if self.video_frames is not None:
            arrays["video_frames"] = self.video_frames
        if self.texts is not None:  # one UTF-8 JSON blob: fixed-width str arrays would bloat
            arrays["texts_json"] = np.frombuffer(json.dumps(self.texts).encode(), dtype=np.uint8)
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> EmbeddingCache:
        """Read a cache written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            modalities = [str(m) for m in data["modalities"]]
            return cls(
                post_ids=data["post_ids"],
                parts={m: data[f"part_{m}"] for m in modalities},
                presence=data["presence"],
                modalities=modalities,
                category=data["category"],
                sentiment=data["sentiment"],
                popularity=data["popularity"],
                created_at=data["created_at"],
                split=data["split"],
                encoders_key=str(data["encoders_key"]),
                extra={k[len("extra_") :]: data[k] for k in data.files if k.startswith("extra_")},
                texts=(
                    json.loads(data["texts_json"].tobytes().decode())
                    if "texts_json" in data.files
                    else None
                ),
                text_vocab_size=int(data["text_vocab_size"])
                if "text_vocab_size" in data.files
                else 0,
                video_frames=data["video_frames"] if "video_frames" in data.files else None,
            )


def encoders_key(manifest: Manifest) -> str:
    """Identifies the encoders (names, versions, file hashes, preprocessing assets such as
    the text normalisation): a cache is valid only for them. The video temporal model is
    named but not versioned: training learns it from the cached frame embeddings (whose
    encoder, the image one, is covered), so a trained bundle still matches its cache."""
    entries = {
        m: (e.name,)
        if m == "video"
        else (e.name, e.version, manifest.files.get(e.file, ""), e.assets)
        for m, e in manifest.encoders.items()
    }
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]


SPLIT_MODES = ("stratified", "time", "given")
SPLIT_NAMES = ("train", "validation", "test")


def _assign_splits(
    mode: str, posts: list[DecodedPost], categories: list[str], created: list[int], seed: int
) -> np.ndarray:
    if mode == "time":
        return split_by_time(np.array(created, dtype=np.int64))
    if mode == "stratified":
        return split(categories, seed)
    if mode != "given":
        raise ValueError(f"unknown split mode {mode!r}; choose from {SPLIT_MODES}")
    given = [(p.validated.post.labels or {}).get("split") for p in posts]
    missing = [
        p.validated.post.post_id for p, g in zip(posts, given, strict=True) if g not in SPLIT_NAMES
    ]
    if missing:
        raise ValueError(
            f"split mode 'given' needs labels.split in {SPLIT_NAMES} on every post; "
            f"{len(missing)} lack it (first: {missing[0]!r})"
        )
    return np.array([SPLIT_NAMES.index(str(g)) for g in given], dtype=np.int8)


def build_cache(
    posts: list[dict[str, Any]],
    bundle: ServedBundle,
    settings: Settings | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    split_mode: str = "stratified",
) -> tuple[EmbeddingCache, dict[str, Any]]:
    """Embed every post with the served encoders; returns the cache and a data card.

    Posts that the worker would dead-letter are skipped and counted by reason. Missing
    sentiment labels are weak labels from VADER on the post's (composed) text.
    """
    from streams.pipeline import PostPipeline

    pipeline = PostPipeline(settings or Settings(), bundle)
    skipped: Counter[str] = Counter()
    parts: dict[str, list[np.ndarray]] = {m: [] for m in bundle.modalities}
    presence, texts = [], []
    token_ids, token_counts = [], []
    video_index: list[int] = []
    clips: list[np.ndarray] = []
    decoded_posts: list[DecodedPost] = []
    # similar lengths batch together, so the text encoder pads little
    posts = sorted(posts, key=lambda p: len(str(p.get("text") or "")))
    for start in tqdm(
        range(0, len(posts), batch_size), desc="embed", unit="batch", disable=not progress
    ):
        chunk = posts[start : start + batch_size]
        envelopes = [Envelope(value=json.dumps(p).encode()) for p in chunk]
        valid: list[ValidatedPost] = []
        for env in envelopes:
            checked = pipeline.validator(env)
            if isinstance(checked, DeadLetter):
                skipped[checked.reason.value] += 1
            else:
                valid.append(checked)
        fetched = pipeline.decoder.prefetch(valid)
        batch: list[DecodedPost] = []
        for index, item in enumerate(valid):
            decoded = pipeline.decoder(item, fetched, index)
            if isinstance(decoded, DeadLetter):
                skipped[decoded.reason.value] += 1
            else:
                batch.append(decoded)
        if not batch:
            continue
        embedded = pipeline.analyser.embed(batch, StageTimer())
        for m in bundle.modalities:
            parts[m].append(embedded.parts[m])
        presence.append(embedded.presence)
        for row in range(len(batch)):
            frames = embedded.video_frames.get(row)
            video_index.append(-1 if frames is None else len(clips))
            if frames is not None:
                clips.append(frames)
        token_ids.append(embedded.tokens.ids.astype(np.int32))
        token_counts.append(np.minimum(embedded.tokens.counts, 65535).astype(np.uint16))
        texts += embedded.texts
        decoded_posts += batch
    if not decoded_posts:
        raise ValueError("no post in the data set could be embedded")
    vader = pipeline.analyser.vader
    categories, sentiments, popularity, created, ids = [], [], [], [], []
    for decoded, text in zip(decoded_posts, texts, strict=True):
        post = decoded.validated.post
        labels = post.labels or {}
        category = labels.get("category", "unknown")
        categories.append(
            LABEL_SEPARATOR.join(sorted({str(c) for c in category}))
            if isinstance(category, list) and category
            else str(category)
        )
        given = labels.get("sentiment")
        sentiments.append(
            str(given)
            if given in SENTIMENTS
            else sentiment_label(vader.polarity_scores(text)["compound"])
        )
        pop = popularity_score(post.engagement)
        popularity.append(np.nan if pop is None else pop)
        created.append(post.created_at_ms)
        ids.append(post.post_id)
    cache = EmbeddingCache(
        post_ids=np.array(ids),
        parts={m: np.concatenate(v) for m, v in parts.items()},
        presence=np.concatenate(presence),
        modalities=list(bundle.modalities),
        category=np.array(categories),
        sentiment=np.array(sentiments),
        popularity=np.array(popularity, dtype=np.float32),
        created_at=np.array(created, dtype=np.int64),
        split=_assign_splits(split_mode, decoded_posts, categories, created, seed),
        encoders_key=encoders_key(bundle.manifest),
        extra={
            "text_token_ids": np.concatenate(token_ids),
            "text_token_counts": np.concatenate(token_counts),
            "video_index": np.array(video_index, dtype=np.int32),
        },
        texts=texts,
        text_vocab_size=bundle.text.tokenizer.vocab_size,
        video_frames=_pad_clips(clips) if clips else None,
    )
    return cache, data_card(cache, dict(skipped))


def _pad_clips(clips: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(clips), max(len(c) for c in clips), clips[0].shape[1]), np.float32)
    for k, clip in enumerate(clips):
        out[k, : len(clip)] = clip
    return out


def data_card(cache: EmbeddingCache, skipped: dict[str, int]) -> dict[str, Any]:
    """Counts per label, per modality and per split; missing-modality rates."""
    n = len(cache.post_ids)
    present = cache.presence.astype(bool)
    patterns = Counter(
        "+".join(m for m, p in zip(cache.modalities, row, strict=True) if p) or "none"
        for row in present
    )
    return {
        "posts": n,
        "skipped": skipped,
        "splits": {
            name: int((cache.split == k).sum())
            for k, name in enumerate(["train", "validation", "test"])
        },
        "category": dict(Counter(cache.category.tolist())),
        "sentiment": dict(Counter(cache.sentiment.tolist())),
        "modality_present": {m: int(present[:, j].sum()) for j, m in enumerate(cache.modalities)},
        "modality_missing_rate": {
            m: round(1 - float(present[:, j].mean()), 4) for j, m in enumerate(cache.modalities)
        },
        "modality_patterns": dict(patterns.most_common()),
        "popularity_known": int(np.isfinite(cache.popularity).sum()),
        "encoders_key": cache.encoders_key,
    }


def skew_training_split(cache: EmbeddingCache, ratio: float, seed: int = 0) -> EmbeddingCache:
    """A copy whose *training* rows are subsampled so class frequencies fall
    geometrically from the most to the least common class by ``ratio`` (e.g. 100:1);
    validation and test rows are untouched, so minority recall stays measurable."""
    rng = np.random.default_rng(seed)
    labels = category_labels(cache.category)
    train = cache.split == 0
    keep = ~train
    base = min(int((train & (cache.category == c)).sum()) for c in labels)
    for k, label in enumerate(labels):
        rows = np.flatnonzero(train & (cache.category == label))
        n = max(1, round(base * ratio ** (-(k / max(1, len(labels) - 1)))))
        keep[rng.choice(rows, min(n, len(rows)), replace=False)] = True
    return cache.subset(keep)


def _topic_values(
    bootstrap: list[str],
    topic: str,
    idle_s: float,
    consumer_config: dict[str, Any] | None,
) -> Iterator[bytes]:
    """Every message value on ``topic`` from its first offset, until ``idle_s`` pass
    without a new one. The consumer has no group: it commits nothing and disturbs no
    worker."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        **{
            k: v
            for k, v in (consumer_config or {}).items()
            if k != "session_timeout_ms" and k != "heartbeat_interval_ms"
        },
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise ValueError(f"topic {topic!r} does not exist")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        idle_until = time.monotonic() + idle_s
        while time.monotonic() < idle_until:
            batch = consumer.poll(timeout_ms=500)
            if not batch:
                continue
            idle_until = time.monotonic() + idle_s
            for records in batch.values():
                for record in records:
                    yield record.value
    finally:
        consumer.close()


def replay_topic(
    bootstrap: list[str],
    topic: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
    idle_s: float = 5.0,
    consumer_config: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every post on ``topic`` (from its first offset) whose ``created_at`` lies in
    ``[start_ms, end_ms)``; stops after ``idle_s`` without new messages. Messages that
    are not valid posts are counted, not returned."""
    from streams.records import parse_created_at

    posts: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    for value in _topic_values(bootstrap, topic, idle_s, consumer_config):
        counts["messages"] += 1
        try:
            doc = json.loads(value)
            created = parse_created_at(doc["created_at"])
        except (ValueError, KeyError, TypeError):
            counts["not_a_post"] += 1
            continue
        if (start_ms is not None and created < start_ms) or (
            end_ms is not None and created >= end_ms
        ):
            counts["outside_time_range"] += 1
            continue
        posts.append(doc)
    counts["posts"] = len(posts)
    return posts, dict(counts)


def replay_engagement(
    bootstrap: list[str],
    topic: str,
    idle_s: float = 5.0,
    consumer_config: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The engagement updates on ``topic`` (what ``postpulse collect`` publishes); a
    message that is not JSON is kept as ``{"undecodable": ...}`` so that
    :func:`latest_engagement` counts it as invalid."""
    updates = []
    for value in _topic_values(bootstrap, topic, idle_s, consumer_config):
        try:
            updates.append(json.loads(value))
        except ValueError:
            updates.append({"undecodable": value[:200].decode("utf-8", "replace")})
    return updates


def read_updates(path: Path) -> list[dict[str, Any]]:
    """Engagement updates from a JSONL file (``collect --out``'s ``.engagement.jsonl``);
    a line that is not JSON is kept as ``{"undecodable": ...}`` and counted invalid."""
    updates = []
    with path.open() as handle:
        for line in handle:
            if line.strip():
                try:
                    updates.append(json.loads(line))
                except ValueError:
                    updates.append({"undecodable": line[:200]})
    return updates


def latest_engagement(updates: Iterable[Any]) -> tuple[dict[str, dict[str, Any]], int]:
    """Post id -> the engagement of its newest update (largest ``observed_at``; among
    equal times, the later record). Also returns how many records were not updates."""
    from streams.records import Engagement

    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    invalid = 0
    for update in updates:
        try:
            post_id = str(update["post_id"])
            observed = int(update["observed_at"])
            engagement = Engagement.model_validate(update["engagement"]).model_dump()
        except (KeyError, TypeError, ValueError):
            invalid += 1
            continue
        if post_id not in latest or observed >= latest[post_id][0]:
            latest[post_id] = (observed, engagement)
    return {k: v for k, (_, v) in latest.items()}, invalid


def apply_engagement(
    posts: list[dict[str, Any]], latest: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """Posts with their engagement replaced by the latest observed counts (popularity
    targets then reflect how the post did, not how it stood when collected)."""
    updated = 0
    merged = []
    for post in posts:
        counts = latest.get(str(post.get("post_id")))
        if counts is not None:
            post = {**post, "engagement": counts}
            updated += 1
        merged.append(post)
    return merged, updated
