"""The post pipeline without any framework: envelopes in, analyses and dead letters out.

The Faust agent calls :meth:`PostPipeline.process` once per batch (in a worker
thread) and hands the outcome to :class:`streams.outputs.OutputWriter`.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from encoders.media import AVLimits
from encoders.runtime import set_spin_wait
from encoders.serving import ServedBundle
from streams.records import DeadLetter, DeadLetterReason, Envelope
from streams.settings import Settings, compute_threads
from streams.stages.analyse import AnalysedPost, AnalyserOptions, PostAnalyser, StageTimer
from streams.stages.decode import DecodedPost, DecodeLimits, MediaDecoder, Prefetched
from streams.stages.fetch import FetchLimits, MediaFetcher
from streams.stages.topics import EmergingConfig, EmergingTopics, TopicExtractor
from streams.stages.trends import TrendEvent
from streams.stages.validate import PostValidator, ValidatedPost, ValidationLimits

log = logging.getLogger(__name__)


def served_bundle(settings: Settings) -> ServedBundle:
    """The model bundle loaded as ``settings`` configure it (device, threads, OCR, STT)."""
    set_spin_wait(settings.onnx_spin_wait)
    threads = compute_threads(settings)
    bundle = ServedBundle(
        settings.bundle_path,
        settings.device,
        settings.intra_op_threads or threads,
        ocr=settings.ocr_enabled,
        stt=settings.stt_enabled,
        stt_beam_size=settings.stt_beam_size,
        ocr_gate_side=settings.ocr_gate_side,
        stt_threads=threads,
    )
    bundle.text.buckets = settings.text_length_buckets
    return bundle


@dataclass
class BatchOutcome:
    """Everything one batch produced; every input message is in exactly one list."""

    analysed: list[AnalysedPost] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    trend_events: list[TrendEvent] = field(default_factory=list)
    timer: StageTimer = field(default_factory=StageTimer)
    size: int = 0
    topic_errors: int = 0  # posts whose topic extraction raised (still counted in part)


class PostPipeline:
    """validate -> decode -> analyse -> topics, each a plain callable."""

    def __init__(self, settings: Settings, bundle: ServedBundle) -> None:
        self.validator = PostValidator(
            ValidationLimits(settings.max_text_chars, settings.max_media_items)
        )
        av_limits = AVLimits(
            max_duration_s=settings.max_media_duration_s,
            max_frame_pixels=settings.max_frame_pixels,
            max_decode_s=settings.max_decode_s,
            sample_fps=settings.video_sample_fps,
            max_frames=settings.video_max_frames,
        )
        fetcher = (
            MediaFetcher(
                FetchLimits(
                    connect_timeout_s=settings.fetch_connect_timeout_s,
                    read_timeout_s=settings.fetch_read_timeout_s,
                    total_timeout_s=settings.fetch_total_timeout_s,
                    max_bytes=settings.max_media_bytes,
                    max_redirects=settings.fetch_max_redirects,
                    concurrency=settings.fetch_concurrency,
                    allowed_networks=settings.fetch_allowed_networks,
                )
            )
            if settings.fetch_enabled
            else None
        )
        supported = frozenset(m for m in bundle.modalities if m != "text")
        # the posts of one batch with media are decoded in parallel (PyAV and Pillow
        # release the GIL while they decode); text-only posts are checked inline
        self.decode_threads = compute_threads(settings)
        self._decode_pool = (  # its threads start on the first batch with media
            ThreadPoolExecutor(self.decode_threads, thread_name_prefix="postpulse-decode")
            if self.decode_threads > 1
            else None
        )
        self.decoder = MediaDecoder(
            DecodeLimits(
                settings.max_media_bytes, settings.max_image_pixels, settings.media_root, av_limits
            ),
            fetcher,
            supported,
        )
        self.analyser = PostAnalyser(
            bundle,
            AnalyserOptions(
                ocr_frames_per_video=settings.ocr_frames_per_video,
                stt_min_speech_ratio=settings.stt_min_speech_ratio,
            ),
        )
        self.bundle = bundle
        self.topics = TopicExtractor(
            EmergingTopics(
                EmergingConfig(
                    similarity=settings.emerging_similarity,
                    min_support=settings.emerging_min_support,
                    max_category_prob=settings.emerging_max_category_prob,
                )
            )
        )

    def process(self, envelopes: list[Envelope]) -> BatchOutcome:
        """Run one batch through every stage. Never raises for bad input."""
        outcome = BatchOutcome(size=len(envelopes))
        timer = outcome.timer

        start = time.perf_counter()
        valid: list[ValidatedPost] = []
        for env in envelopes:
            try:
                result = self.validator(env)
            except Exception as exc:  # a bug must not take the batch down
                log.exception("validate stage raised")
                result = env.dead_letter(
                    DeadLetterReason.INTERNAL_ERROR, "validate", f"{type(exc).__name__}: {exc}"
                )
            (outcome.dead_letters if isinstance(result, DeadLetter) else valid).append(result)  # type: ignore[arg-type]
        timer.stages["validate"] = time.perf_counter() - start

        start = time.perf_counter()
        decoded: list[DecodedPost] = []
        fetched = self.decoder.prefetch(valid)
        timer.stages["fetch"] = time.perf_counter() - start
        for res in self._decode_all(valid, fetched):
            (outcome.dead_letters if isinstance(res, DeadLetter) else decoded).append(res)  # type: ignore[arg-type]
        timer.stages["decode"] = time.perf_counter() - start

        start = time.perf_counter()
        outcome.analysed = self._analyse(decoded, outcome, timer)
        timer.stages["analyse"] = time.perf_counter() - start

        start = time.perf_counter()
        topics = self.topics(outcome.analysed)  # isolates a failing post by itself
        outcome.trend_events, outcome.topic_errors = topics.events, topics.errors
        timer.stages["topics"] = time.perf_counter() - start
        return outcome

    def _decode_all(
        self, valid: list[ValidatedPost], fetched: Prefetched
    ) -> list[DecodedPost | DeadLetter]:
        """Each valid post decoded, in order; posts with media on the decode pool when
        there are two or more of them (each decode has its own wall-clock deadline)."""
        with_media = [k for k, item in enumerate(valid) if item.post.media]
        futures = {}
        if self._decode_pool is not None and len(with_media) > 1:
            futures = {
                k: self._decode_pool.submit(self._decode_one, valid[k], fetched, k)
                for k in with_media
            }
        return [
            futures[k].result() if k in futures else self._decode_one(item, fetched, k)
            for k, item in enumerate(valid)
        ]

    def _decode_one(
        self, item: ValidatedPost, fetched: Prefetched, index: int
    ) -> DecodedPost | DeadLetter:
        try:
            return self.decoder(item, fetched, index)
        except Exception as exc:  # a bug must not take the batch down
            log.exception("decode stage raised on post %s", item.post.post_id)
            return item.envelope.dead_letter(
                DeadLetterReason.INTERNAL_ERROR,
                "decode",
                f"{type(exc).__name__}: {exc}",
                item.post.post_id,
            )

    def _analyse(
        self, decoded: list[DecodedPost], outcome: BatchOutcome, timer: StageTimer
    ) -> list[AnalysedPost]:
        try:
            return self.analyser(decoded, timer)
        except Exception:
            if len(decoded) <= 1:
                if decoded:
                    item = decoded[0].validated
                    log.exception("encoder failed on post %s", item.post.post_id)
                    outcome.dead_letters.append(
                        item.envelope.dead_letter(
                            DeadLetterReason.ENCODER_FAILED,
                            "encode",
                            "encoder raised on this post (see worker log)",
                            item.post.post_id,
                        )
                    )
                return []
            # Isolate the failing post(s): retry the halves.
            mid = len(decoded) // 2
            return self._analyse(decoded[:mid], outcome, timer) + self._analyse(
                decoded[mid:], outcome, timer
            )
