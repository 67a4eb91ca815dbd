"""Analyse stage: one encoder run per modality per batch, fusion, and the baseline heads.

Until the trained fusion model (with its category, sentiment and popularity heads)
ships in a bundle, the heads are honest baselines:

* category: zero-shot — cosine between the text embedding and the bundle's category
  prompts, softmax at temperature 0.05; no category for posts without text;
* sentiment: VADER's rule-based compound score on the text;
* popularity: ``log1p(likes + 2·comments + 3·shares + views/100)`` when engagement is given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from encoders.serving import ServedBundle, l2_normalize
from streams.records import Analysis, Engagement
from streams.stages.decode import DecodedPost

CATEGORY_TEMPERATURE = 0.05


@dataclass
class AnalysedPost:
    """A post's analysis and fused embedding, ready for the sinks."""

    decoded: DecodedPost
    analysis: Analysis
    embedding: np.ndarray
    modality_mask: int


@dataclass
class StageTimer:
    """Seconds per stage and encoder for one batch (fed to the metrics)."""

    stages: dict[str, float] = field(default_factory=dict)
    encoders: dict[str, float] = field(default_factory=dict)
    encoder_items: dict[str, int] = field(default_factory=dict)


def popularity_score(engagement: Engagement | None) -> float | None:
    """Baseline popularity: weighted log engagement, ``None`` when unknown."""
    if engagement is None:
        return None
    raw = engagement.likes + 2 * engagement.comments + 3 * engagement.shares
    return float(math.log1p(raw + engagement.views / 100.0))


def sentiment_label(compound: float) -> str:
    """VADER's conventional thresholds."""
    if compound >= 0.05:
        return "positive"
    if compound <= -0.05:
        return "negative"
    return "neutral"


class PostAnalyser:
    """Encodes a batch of decoded posts and builds their analyses and embeddings."""

    name = "analyse"

    def __init__(self, bundle: ServedBundle, clock: Callable[[], float] = time.time) -> None:
        self.bundle = bundle
        self.clock = clock
        self.categories = list(bundle.manifest.category_prompts)
        prompts = [bundle.manifest.category_prompts[c] for c in self.categories]
        self.category_vectors = bundle.text.encode(prompts)
        self.vader = SentimentIntensityAnalyzer()

    def __call__(self, batch: list[DecodedPost], timer: StageTimer) -> list[AnalysedPost]:
        """Analyse a batch: each encoder runs once over all the batch's items."""
        if not batch:
            return []
        n = len(batch)
        bundle = self.bundle
        modalities = bundle.modalities
        presence = np.zeros((n, len(modalities)), dtype=np.float32)
        parts = {m: np.zeros((n, bundle.dim_of(m)), dtype=np.float32) for m in modalities}

        start = time.perf_counter()
        text_idx = [i for i, d in enumerate(batch) if d.validated.post.text.strip()]
        if text_idx:
            parts["text"][text_idx] = bundle.text.encode(
                [batch[i].validated.post.text for i in text_idx]
            )
            presence[text_idx, modalities.index("text")] = 1.0
        timer.encoders["text"] = time.perf_counter() - start
        timer.encoder_items["text"] = len(text_idx)

        # Images and sampled video frames share one image-encoder batch.
        start = time.perf_counter()
        pictures: list[tuple[int, int, Image.Image]] = []  # (post, video index or -1, picture)
        for i, d in enumerate(batch):
            pictures += [(i, -1, im) for im in d.images]
            for v, video in enumerate(d.videos):
                pictures += [(i, v, frame) for frame in video.frames]
        features = np.zeros((0, bundle.image.dim), dtype=np.float32)
        if pictures:
            pixels = np.stack([bundle.image.preprocess(p) for _, _, p in pictures])
            timer.stages["preprocess_image"] = time.perf_counter() - start
            start = time.perf_counter()
            features = l2_normalize(bundle.image.encode(pixels))
        timer.encoders["image"] = time.perf_counter() - start
        timer.encoder_items["image"] = len(pictures)
        image_owners = [i for i, v, _ in pictures if v < 0]
        if image_owners:
            rows = [k for k, (_, v, _) in enumerate(pictures) if v < 0]
            np.add.at(parts["image"], image_owners, features[rows])
            parts["image"] = l2_normalize(parts["image"])
            presence[sorted(set(image_owners)), modalities.index("image")] = 1.0

        if "video" in modalities and bundle.video is not None:
            start = time.perf_counter()
            keys = sorted({(i, v) for i, v, _ in pictures if v >= 0})
            if keys:
                per_video = [
                    features[[k for k, (pi, pv, _) in enumerate(pictures) if (pi, pv) == key]]
                    for key in keys
                ]
                videos = l2_normalize(bundle.video.encode(per_video))
                np.add.at(parts["video"], [i for i, _ in keys], videos)
                parts["video"] = l2_normalize(parts["video"])
                presence[sorted({i for i, _ in keys}), modalities.index("video")] = 1.0
            timer.encoders["video"] = time.perf_counter() - start
            timer.encoder_items["video"] = len(keys)

        speech: dict[int, float] = {}
        if "audio" in modalities and bundle.audio is not None:
            start = time.perf_counter()
            clips = [(i, clip) for i, d in enumerate(batch) for clip in d.audio_clips]
            if clips:
                embedded = l2_normalize(bundle.audio.encode([c for _, c in clips]))
                np.add.at(parts["audio"], [i for i, _ in clips], embedded)
                parts["audio"] = l2_normalize(parts["audio"])
                presence[sorted({i for i, _ in clips}), modalities.index("audio")] = 1.0
                for i, clip in clips:
                    speech[i] = max(speech.get(i, 0.0), bundle.audio.speech_ratio(clip))
            timer.encoders["audio"] = time.perf_counter() - start
            timer.encoder_items["audio"] = len(clips)

        start = time.perf_counter()
        fused = bundle.fuse(parts, presence)
        logits = (parts["text"] @ self.category_vectors.T) / CATEGORY_TEMPERATURE
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        timer.stages["fuse"] = time.perf_counter() - start

        now_ms = int(self.clock() * 1000)
        out: list[AnalysedPost] = []
        for i, decoded in enumerate(batch):
            post = decoded.validated.post
            has_text = presence[i, modalities.index("text")] > 0
            category_probs = (
                {c: round(float(p), 5) for c, p in zip(self.categories, probs[i], strict=True)}
                if has_text
                else {}
            )
            category = max(category_probs, key=category_probs.__getitem__) if has_text else None
            compound = self.vader.polarity_scores(post.text)["compound"] if has_text else 0.0
            sent_ts = decoded.validated.envelope.timestamp_ms
            mask = sum(1 << j for j in range(len(modalities)) if presence[i, j] > 0)
            analysis = Analysis(
                post_id=post.post_id,
                platform=post.platform,
                author_id=post.author_id,
                created_at_ms=post.created_at_ms,
                modalities=[m for j, m in enumerate(modalities) if presence[i, j] > 0],
                skipped_media=decoded.skipped_media,
                speech_ratio=round(speech[i], 4) if i in speech else None,
                category=category,
                category_probs=category_probs,
                sentiment=sentiment_label(compound),  # type: ignore[arg-type]
                sentiment_score=float(compound),
                popularity=popularity_score(post.engagement),
                topic=category,
                bundle_version=self.bundle.version,
                fusion=self.bundle.manifest.fusion.strategy,
                latency_ms=float(max(0, now_ms - sent_ts)) if sent_ts is not None else 0.0,
                processed_at_ms=now_ms,
            )
            out.append(AnalysedPost(decoded, analysis, fused[i], mask))
        return out
