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
        modalities = self.bundle.modalities
        presence = np.zeros((n, len(modalities)), dtype=np.float32)
        text_idx = [i for i, d in enumerate(batch) if d.validated.post.text.strip()]
        text_emb = np.zeros((n, self.bundle.text.dim), dtype=np.float32)
        start = time.perf_counter()
        if text_idx:
            text_emb[text_idx] = self.bundle.text.encode(
                [batch[i].validated.post.text for i in text_idx]
            )
            presence[text_idx, modalities.index("text")] = 1.0
        timer.encoders["text"] = time.perf_counter() - start
        timer.encoder_items["text"] = len(text_idx)

        start = time.perf_counter()
        owners = [i for i, d in enumerate(batch) for _ in d.images]
        image_emb = np.zeros((n, self.bundle.image.dim), dtype=np.float32)
        if owners:
            pixels = np.stack([self.bundle.image.preprocess(im) for d in batch for im in d.images])
            timer.stages["preprocess_image"] = time.perf_counter() - start
            start = time.perf_counter()
            per_image = l2_normalize(self.bundle.image.encode(pixels))
            np.add.at(image_emb, owners, per_image)
            image_emb = l2_normalize(image_emb)
            presence[sorted(set(owners)), modalities.index("image")] = 1.0
        timer.encoders["image"] = time.perf_counter() - start
        timer.encoder_items["image"] = len(owners)

        start = time.perf_counter()
        fused = self.bundle.fuse({"text": text_emb, "image": image_emb}, presence)
        logits = (text_emb @ self.category_vectors.T) / CATEGORY_TEMPERATURE
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
