"""Analyse stage: one encoder run per modality per batch, fusion, and the baseline heads.

Until the trained fusion model (with its category, sentiment and popularity heads)
ships in a bundle, the heads are honest baselines:

* category: zero-shot — cosine between the text embedding and the bundle's category
  prompts, softmax at temperature 0.05; no category for posts without text;
* sentiment: VADER's rule-based compound score on the text;
* popularity: ``log1p(likes + 2·comments + 3·shares + views/100)`` when engagement is given.

Text found in images and video frames (OCR) and speech transcripts (Whisper, only for
clips that voice-activity detection calls speech) join the post's text before it is
encoded, marked ``[ocr]`` and ``[speech]``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from PIL import Image
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from encoders.serving import ServedBundle, l2_normalize
from encoders.text import TokenBags
from streams.records import Analysis, Engagement
from streams.stages.decode import DecodedPost

CATEGORY_TEMPERATURE = 0.05
log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class AnalyserOptions:
    """Knobs of the analyse stage."""

    ocr_frames_per_video: int = 3
    ocr_max_images_per_post: int = 4
    stt_min_speech_ratio: float = 0.1


def compose_text(text: str, transcript: str, ocr_text: str) -> str:
    """The post's text with speech and OCR text appended, each marked by its source."""
    parts = [text.strip()] if text.strip() else []
    if transcript:
        parts.append(f"[speech] {transcript}")
    if ocr_text:
        parts.append(f"[ocr] {ocr_text}")
    return "\n".join(parts)


@dataclass
class AnalysedPost:
    """A post's analysis and fused embedding, ready for the sinks."""

    decoded: DecodedPost
    analysis: Analysis
    embedding: np.ndarray
    modality_mask: int


@dataclass
class EmbeddedBatch:
    """Modality embeddings of a batch, before fusion."""

    parts: dict[str, np.ndarray]
    presence: np.ndarray
    texts: list[str]
    transcripts: dict[int, str]
    ocr_texts: dict[int, str]
    speech: dict[int, float]
    tokens: TokenBags  # the texts' token bags (lexical input of trained fusion models)
    video_frames: dict[int, np.ndarray]  # post row -> its first video's frame embeddings
    failed_tools: dict[int, list[str]] = field(default_factory=dict)  # row -> tools skipped


@dataclass
class StageTimer:
    """Seconds per stage and encoder for one batch (fed to the metrics)."""

    stages: dict[str, float] = field(default_factory=dict)
    encoders: dict[str, float] = field(default_factory=dict)
    encoder_items: dict[str, int] = field(default_factory=dict)
    tool_failures: dict[str, int] = field(default_factory=dict)


TOOLS = ("ocr", "speech_to_text", "voice_activity")


def run_tool(
    tool: str,
    action: Callable[[], _T],
    fallback: _T,
    timer: StageTimer,
    failed: dict[int, list[str]],
    row: int,
) -> _T:
    """A helper tool's result for one item, or ``fallback`` when it raises: the post is
    analysed without it (``failed[row]`` records the tool, the timer counts it)."""
    try:
        return action()
    except Exception as exc:
        log.warning(
            "%s failed on an item of post row %d (%s: %s); skipped",
            tool,
            row,
            type(exc).__name__,
            exc,
        )
        timer.tool_failures[tool] = timer.tool_failures.get(tool, 0) + 1
        if tool not in failed.setdefault(row, []):
            failed[row].append(tool)
        return fallback


def pool_per_post(
    parts: dict[str, np.ndarray],
    presence: np.ndarray,
    modalities: list[str],
    modality: str,
    owners: list[int],
    vectors: np.ndarray,
) -> None:
    """Average item embeddings (images, videos, clips) into their posts' rows of
    ``parts[modality]`` (re-normalised) and mark the modality present for those posts."""
    np.add.at(parts[modality], owners, vectors)
    parts[modality] = l2_normalize(parts[modality])
    presence[sorted(set(owners)), modalities.index(modality)] = 1.0


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

    def __init__(
        self,
        bundle: ServedBundle,
        options: AnalyserOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bundle = bundle
        self.options = options or AnalyserOptions()
        self.clock = clock
        self.categories = list(bundle.manifest.category_prompts)
        prompts = [bundle.manifest.category_prompts[c] for c in self.categories]
        self.category_vectors = bundle.text.encode(prompts)
        self.vader = SentimentIntensityAnalyzer()

    def embed(
        self, batch: list[DecodedPost], timer: StageTimer, token_bags: bool = True
    ) -> EmbeddedBatch:
        """Per-modality embeddings and the presence mask of a batch (also what the
        training embedding cache stores, so training never drifts from serving).
        ``token_bags=False`` skips the texts' token bags (left empty)."""
        n = len(batch)
        bundle = self.bundle
        modalities = bundle.modalities
        presence = np.zeros((n, len(modalities)), dtype=np.float32)
        parts = {m: np.zeros((n, bundle.dim_of(m)), dtype=np.float32) for m in modalities}

        video_frames: dict[int, np.ndarray] = {}
        failed: dict[int, list[str]] = {}
        pictures = self._pictures(batch, parts, presence, timer, video_frames)
        speech, transcripts = self._audio(batch, parts, presence, timer, failed)
        ocr_texts = self._ocr(batch, pictures, timer, failed)
        texts = [
            compose_text(d.validated.post.text, transcripts.get(i, ""), ocr_texts.get(i, ""))
            for i, d in enumerate(batch)
        ]

        start = time.perf_counter()
        text_idx = [i for i, t in enumerate(texts) if t]
        tokens = TokenBags.empty(n, bundle.text.tokenizer.max_tokens)
        if text_idx:
            embedded, bags = bundle.text.encode_with_tokens(
                [texts[i] for i in text_idx], bags=token_bags
            )
            parts["text"][text_idx] = embedded
            tokens.ids[text_idx], tokens.counts[text_idx] = bags.ids, bags.counts
            presence[text_idx, modalities.index("text")] = 1.0
        timer.encoders["text"] = time.perf_counter() - start
        timer.encoder_items["text"] = len(text_idx)
        return EmbeddedBatch(
            parts, presence, texts, transcripts, ocr_texts, speech, tokens, video_frames, failed
        )

    def __call__(self, batch: list[DecodedPost], timer: StageTimer) -> list[AnalysedPost]:
        """Analyse a batch: each encoder runs once over all the batch's items."""
        if not batch:
            return []
        bundle = self.bundle
        modalities = bundle.modalities
        e = self.embed(batch, timer, token_bags=bundle.needs_token_bags)
        presence = e.presence

        start = time.perf_counter()
        heads = bundle.fusion_heads(e.parts, presence, e.tokens)
        fused = heads.embedding
        if heads.category_probs is not None:
            categories, probs = bundle.category_labels, heads.category_probs
        else:
            logits = (e.parts["text"] @ self.category_vectors.T) / CATEGORY_TEMPERATURE
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            categories = self.categories
        timer.stages["fuse"] = time.perf_counter() - start

        now_ms = int(self.clock() * 1000)
        out: list[AnalysedPost] = []
        for i, decoded in enumerate(batch):
            post = decoded.validated.post
            has_text = presence[i, modalities.index("text")] > 0
            decided = has_text or heads.category_probs is not None
            category_probs = (
                {c: round(float(p), 5) for c, p in zip(categories, probs[i], strict=True)}
                if decided
                else {}
            )
            category = max(category_probs, key=category_probs.__getitem__) if decided else None
            if heads.sentiment_probs is not None:
                k = int(np.argmax(heads.sentiment_probs[i]))
                sentiment = bundle.sentiment_labels[k]
                sentiment_score = float(
                    heads.sentiment_probs[i][bundle.sentiment_labels.index("positive")]
                    - heads.sentiment_probs[i][bundle.sentiment_labels.index("negative")]
                )
            else:
                sentiment_score = (
                    self.vader.polarity_scores(e.texts[i])["compound"] if has_text else 0.0
                )
                sentiment = sentiment_label(sentiment_score)
            popularity = (
                float(heads.popularity[i])
                if heads.popularity is not None
                else popularity_score(post.engagement)
            )
            sent_ts = decoded.validated.envelope.timestamp_ms
            mask = sum(1 << j for j in range(len(modalities)) if presence[i, j] > 0)
            analysis = Analysis(
                post_id=post.post_id,
                platform=post.platform,
                author_id=post.author_id,
                created_at_ms=post.created_at_ms,
                modalities=[m for j, m in enumerate(modalities) if presence[i, j] > 0],
                skipped_media=decoded.skipped_media,
                speech_ratio=round(e.speech[i], 4) if i in e.speech else None,
                transcript=e.transcripts.get(i) or None,
                ocr_text=e.ocr_texts.get(i) or None,
                failed_tools=e.failed_tools.get(i, []),
                category=category,
                category_probs=category_probs,
                sentiment=sentiment,  # type: ignore[arg-type]
                sentiment_score=float(sentiment_score),
                popularity=popularity,
                topic=category,
                bundle_version=bundle.version,
                fusion=bundle.manifest.fusion.strategy,
                latency_ms=float(max(0, now_ms - sent_ts)) if sent_ts is not None else 0.0,
                processed_at_ms=now_ms,
            )
            out.append(AnalysedPost(decoded, analysis, fused[i], mask))
        return out

    def _pictures(
        self,
        batch: list[DecodedPost],
        parts: dict[str, np.ndarray],
        presence: np.ndarray,
        timer: StageTimer,
        video_frames: dict[int, np.ndarray] | None = None,
    ) -> list[tuple[int, int, Image.Image]]:
        """Images and sampled video frames through one image-encoder batch, then the
        temporal model over each video's frames. Returns (post, video or -1, picture);
        fills ``video_frames`` with each post's first video's frame embeddings."""
        bundle, modalities = self.bundle, self.bundle.modalities
        start = time.perf_counter()
        pictures: list[tuple[int, int, Image.Image]] = []
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
        image_rows = [k for k, (_, v, _) in enumerate(pictures) if v < 0]
        if image_rows:
            owners = [pictures[k][0] for k in image_rows]
            pool_per_post(parts, presence, modalities, "image", owners, features[image_rows])
        if "video" in modalities and bundle.video is not None:
            start = time.perf_counter()
            rows_of: dict[tuple[int, int], list[int]] = {}
            for k, (i, v, _) in enumerate(pictures):
                if v >= 0:
                    rows_of.setdefault((i, v), []).append(k)
            keys = sorted(rows_of)
            if video_frames is not None:
                video_frames.update({i: features[rows_of[(i, v)]] for i, v in keys if v == 0})
            if keys:
                per_video = [features[rows_of[key]] for key in keys]
                videos = l2_normalize(bundle.video.encode(per_video))
                pool_per_post(parts, presence, modalities, "video", [i for i, _ in keys], videos)
            timer.encoders["video"] = time.perf_counter() - start
            timer.encoder_items["video"] = len(keys)
        return pictures

    def _audio(
        self,
        batch: list[DecodedPost],
        parts: dict[str, np.ndarray],
        presence: np.ndarray,
        timer: StageTimer,
        failed: dict[int, list[str]],
    ) -> tuple[dict[int, float], dict[int, str]]:
        """Audio embeddings, voice activity, and transcripts of the clips with speech.
        Voice activity or speech-to-text failing on a clip skips that tool for it."""
        bundle, modalities = self.bundle, self.bundle.modalities
        speech: dict[int, float] = {}
        transcripts: dict[int, str] = {}
        if "audio" not in modalities or bundle.audio is None:
            return speech, transcripts
        start = time.perf_counter()
        clips = [(i, clip) for i, d in enumerate(batch) for clip in d.audio_clips]
        ratios: list[float | None] = []
        if clips:
            embedded = l2_normalize(bundle.audio.encode([c for _, c in clips]))
            pool_per_post(parts, presence, modalities, "audio", [i for i, _ in clips], embedded)
            vad = bundle.vad
            ratios = [
                run_tool(
                    "voice_activity",
                    functools.partial(vad.speech_ratio, clip),
                    None,
                    timer,
                    failed,
                    i,
                )
                if vad
                else 1.0
                for i, clip in clips
            ]
            for (i, _), ratio in zip(clips, ratios, strict=True):
                if ratio is not None:
                    speech[i] = max(speech.get(i, 0.0), ratio)
        timer.encoders["audio"] = time.perf_counter() - start
        timer.encoder_items["audio"] = len(clips)
        spoken = [
            (i, clip)
            for (i, clip), ratio in zip(clips, ratios, strict=True)
            if ratio is not None and ratio >= self.options.stt_min_speech_ratio
        ]
        stt = bundle.stt
        if spoken and stt is not None:
            start = time.perf_counter()
            try:
                texts = stt.transcribe([c for _, c in spoken])
            except Exception:  # find the clip(s) to blame; the others keep their text
                texts = [
                    run_tool(
                        "speech_to_text",
                        functools.partial(lambda c: stt.transcribe([c])[0], clip),
                        "",
                        timer,
                        failed,
                        i,
                    )
                    for i, clip in spoken
                ]
            for (i, _), text in zip(spoken, texts, strict=True):
                if text:
                    transcripts[i] = f"{transcripts.get(i, '')} {text}".strip()
            timer.encoders["speech_to_text"] = time.perf_counter() - start
            timer.encoder_items["speech_to_text"] = len(spoken)
        return speech, transcripts

    def _ocr(
        self,
        batch: list[DecodedPost],
        pictures: list[tuple[int, int, Image.Image]],
        timer: StageTimer,
        failed: dict[int, list[str]],
    ) -> dict[int, str]:
        """Text read from a post's images and a few of each video's frames; a picture
        OCR fails on is skipped."""
        ocr = self.bundle.ocr
        if ocr is None or not pictures:
            return {}
        start = time.perf_counter()
        chosen: list[tuple[int, Image.Image]] = []
        for i, d in enumerate(batch):
            chosen += [(i, im) for im in d.images[: self.options.ocr_max_images_per_post]]
            for video in d.videos:
                frames = video.frames
                if frames:
                    count = min(self.options.ocr_frames_per_video, len(frames))
                    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
                    chosen += [(i, frames[k]) for k in sorted(set(picks.tolist()))]
        found: dict[int, list[str]] = {}
        for i, picture in chosen:
            text = run_tool("ocr", functools.partial(ocr.read, picture), "", timer, failed, i)
            if text and text not in found.get(i, []):
                found.setdefault(i, []).append(text)
        timer.encoders["ocr"] = time.perf_counter() - start
        timer.encoder_items["ocr"] = len(chosen)
        return {i: " ".join(lines) for i, lines in found.items()}
