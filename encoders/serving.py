"""A model bundle loaded for serving: encoders on ONNX Runtime plus the fusion step.

Torch-free: this is what the stream worker and the query CLI import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from encoders.audio import SpeechEmbeddingEncoder, VoiceActivityDetector
from encoders.bundle import BundleError, Manifest, load_manifest
from encoders.image import ImageEncoder
from encoders.ocr import GATE_SIDE, ImageTextReader
from encoders.runtime import OnnxModel
from encoders.speech import SpeechTranscriber
from encoders.text import TextEncoder, TokenBags
from encoders.video import VideoTemporalEncoder
from encoders.whisper import WhisperAudioEncoder

AUDIO_ENCODERS: dict[str, type[SpeechEmbeddingEncoder] | type[WhisperAudioEncoder]] = {
    "speech-embedding": SpeechEmbeddingEncoder,
    "whisper-tiny.en-encoder": WhisperAudioEncoder,
}

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


def early_fusion_baseline(parts: list[np.ndarray], presence: np.ndarray) -> np.ndarray:
    """The untrained baseline post embedding.

    ``parts`` are per-modality ``(n, d_m)`` embeddings (rows of absent modalities are
    zero), ``presence`` the ``(n, M)`` 0/1 mask. Each modality is L2-normalised,
    everything is concatenated with the mask, and the result is L2-normalised so that
    Milvus COSINE and inner product agree.
    """
    normalised = [l2_normalize(p) * presence[:, [i]] for i, p in enumerate(parts)]
    return l2_normalize(np.concatenate([*normalised, presence.astype(np.float32)], axis=1))


@dataclass
class FusionOutput:
    """What fusion produced for a batch; heads are ``None`` for the untrained baseline."""

    embedding: np.ndarray
    category_probs: np.ndarray | None = None
    sentiment_probs: np.ndarray | None = None
    popularity: np.ndarray | None = None


class ServedBundle:
    """Encoders and fusion of one bundle, ready to run."""

    def __init__(
        self,
        path: Path,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        intra_op_threads: int = 0,
        ocr: bool = True,
        stt: bool = True,
        stt_beam_size: int = 5,
        ocr_gate_side: int = GATE_SIDE,
        stt_threads: int = 0,
    ) -> None:
        self.path = path
        self.manifest: Manifest = load_manifest(path)
        fusion = self.manifest.fusion
        if not fusion.trained and fusion.strategy != "baseline-early-concat":
            raise BundleError(f"fusion strategy {fusion.strategy!r} is not supported")
        enc = self.manifest.encoders
        missing = {"text", "image"} - set(enc)
        if missing:
            raise BundleError(f"bundle {path} lacks encoders for {sorted(missing)}")

        def meta(modality: str) -> tuple[Path, dict[str, Any]]:
            entry = enc[modality]
            folder = (path / entry.file).parent
            return folder, {**entry.assets, "dim": entry.dim, "file": Path(entry.file).name}

        self.text = TextEncoder(*meta("text"), device, intra_op_threads)
        self.image = ImageEncoder(*meta("image"), device, intra_op_threads)
        self.audio: SpeechEmbeddingEncoder | WhisperAudioEncoder | None = None
        if "audio" in enc:
            audio_class = AUDIO_ENCODERS.get(enc["audio"].name)
            if audio_class is None:
                raise BundleError(f"no runtime for audio encoder {enc['audio'].name!r}")
            self.audio = audio_class(*meta("audio"), device, intra_op_threads)
        self.video: VideoTemporalEncoder | None = (
            VideoTemporalEncoder(*meta("video"), device, intra_op_threads)
            if "video" in enc
            else None
        )
        use_cuda = self.text.model.provider == "CUDAExecutionProvider"
        tools = self.manifest.tools
        self.ocr: ImageTextReader | None = None
        if ocr and "ocr" in tools:
            self.ocr = ImageTextReader(
                path / "ocr",
                use_cuda=use_cuda,
                gate_side=ocr_gate_side,
                intra_op_threads=intra_op_threads,
            )
        self.vad: VoiceActivityDetector | None = None
        if "vad" in tools:
            self.vad = VoiceActivityDetector(path / tools["vad"]["file"], intra_op_threads)
        self.stt: SpeechTranscriber | None = None
        if stt and "stt" in tools:
            self.stt = SpeechTranscriber(
                path / tools["stt"]["folder"], use_cuda, stt_beam_size, threads=stt_threads
            )
        self.modalities: list[str] = list(self.manifest.fusion.modalities)
        self.dim = self.manifest.fusion.dim
        self.category_labels: list[str] = list(self.manifest.labels.get("category", []))
        self.sentiment_labels: list[str] = list(self.manifest.labels.get("sentiment", []))
        self.fusion_model: OnnxModel | None = None
        if fusion.trained:
            if fusion.file is None:
                raise BundleError(f"bundle {path}: trained fusion without a model file")
            self.fusion_model = OnnxModel(path / fusion.file, device, intra_op_threads)
        # a fusion model with a lexical text branch reads the texts' token bags
        self.needs_token_bags = (
            self.fusion_model is not None and "text_token_ids" in self.fusion_model.input_names
        )
        self.version = self.manifest.bundle_version
        self.provider = self.text.model.provider

    def fusion_heads(
        self,
        embeddings: dict[str, np.ndarray],
        presence: np.ndarray,
        tokens: TokenBags | None = None,
    ) -> FusionOutput:
        """The post embedding and, with a trained fusion model, its head outputs. A model
        with a lexical text branch also takes the texts' token bags."""
        if self.fusion_model is None:
            return FusionOutput(self.fuse(embeddings, presence))
        feed = {m: embeddings[m].astype(np.float32) for m in self.modalities}
        feed["presence"] = presence.astype(np.float32)
        if self.needs_token_bags:
            if tokens is None:
                raise BundleError("this fusion model needs the texts' token bags")
            feed["text_token_ids"] = tokens.ids
            feed["text_token_counts"] = tokens.counts
        outputs = dict(
            zip(self.fusion_model.output_names, self.fusion_model.run(feed), strict=True)
        )
        return FusionOutput(
            embedding=outputs["post_embedding"],
            category_probs=outputs["category_probs"],
            sentiment_probs=outputs["sentiment_probs"],
            popularity=outputs["popularity"].reshape(-1),
        )

    def fuse(self, embeddings: dict[str, np.ndarray], presence: np.ndarray) -> np.ndarray:
        """Post embeddings from per-modality embeddings (in manifest order) and the mask."""
        parts = [embeddings[m] for m in self.modalities]
        fused = early_fusion_baseline(parts, presence)
        if fused.shape[1] != self.dim:
            raise BundleError(f"fused dim {fused.shape[1]} != manifest dim {self.dim}")
        return fused

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Post embeddings for text-only queries (``similar --text``)."""
        n = len(texts)
        presence = np.zeros((n, len(self.modalities)), dtype=np.float32)
        presence[:, self.modalities.index("text")] = 1.0
        parts = {m: np.zeros((n, self.dim_of(m)), dtype=np.float32) for m in self.modalities}
        parts["text"], tokens = self.text.encode_with_tokens(texts, bags=self.needs_token_bags)
        return self.fusion_heads(parts, presence, tokens).embedding

    def dim_of(self, modality: str) -> int:
        """Embedding size of one modality's encoder."""
        return self.manifest.encoders[modality].dim
