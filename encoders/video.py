"""Video: frame embeddings from the image encoder, then a temporal model to one vector.

The temporal model is attention pooling over frames, exported to ONNX through the
checked export path. Untrained, its scoring layer is zero, so the weights are uniform
over the valid frames: a documented mean pooling, until the training issue learns it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from encoders.registry import EncoderSpec, ExportSpec, register_encoder
from encoders.runtime import BundleEncoder

if TYPE_CHECKING:
    import torch

FRAME_DIM = 1280


class VideoTemporalEncoder(BundleEncoder):
    """Pools ``(videos, frames, dim)`` frame embeddings (with a validity mask) to ``(videos, dim)``."""

    def encode(self, per_video: list[np.ndarray]) -> np.ndarray:
        """One embedding per video from its ``(frames, dim)`` frame embeddings."""
        if not per_video:
            return np.zeros((0, self.dim), dtype=np.float32)
        longest = max(1, max(len(v) for v in per_video))
        frames = np.zeros((len(per_video), longest, self.dim), dtype=np.float32)
        mask = np.zeros((len(per_video), longest), dtype=np.float32)
        for i, video in enumerate(per_video):
            frames[i, : len(video)] = video
            mask[i, : len(video)] = 1.0
        return self.model.run({"frame_embeddings": frames, "frame_mask": mask})[0]


def build_attention_pooling(dim: int = FRAME_DIM) -> torch.nn.Module:
    """Attention pooling initialised to mean pooling (zero scores), eval mode."""
    import torch

    class AttentionPooling(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.score = torch.nn.Linear(dim, 1)
            torch.nn.init.zeros_(self.score.weight)
            torch.nn.init.zeros_(self.score.bias)

        def forward(self, frame_embeddings: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
            scores = self.score(frame_embeddings).squeeze(-1)
            scores = scores.masked_fill(frame_mask <= 0, -1e9)
            weights = torch.softmax(scores, dim=-1) * (frame_mask > 0).to(scores.dtype)
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-9)
            return (weights.unsqueeze(-1) * frame_embeddings).sum(dim=1)

    return AttentionPooling().eval()


def temporal_sample_inputs(batch: int) -> dict[str, np.ndarray]:
    """Videos of different lengths (padding exercises the mask)."""
    rng = np.random.default_rng(batch)
    frames = rng.normal(size=(batch, 6, FRAME_DIM)).astype(np.float32)
    mask = np.ones((batch, 6), dtype=np.float32)
    for i in range(batch):
        mask[i, 1 + (i % 6) :] = 0.0
    return {"frame_embeddings": frames, "frame_mask": mask}


ATTENTION_POOLING = register_encoder(
    EncoderSpec(
        name="attention-pool-1280",
        modality="video",
        dim=FRAME_DIM,
        version="attention-pool-1280@untrained-mean",
        source="postpulse attention pooling over EfficientNet-Lite0 frame embeddings (untrained = mean)",
        export=ExportSpec(
            input_names=("frame_embeddings", "frame_mask"),
            output_names=("video_embedding",),
            dynamic_axes={
                "frame_embeddings": {0: "videos", 1: "frames"},
                "frame_mask": {0: "videos", 1: "frames"},
                "video_embedding": {0: "videos"},
            },
            atol=1e-4,
        ),
        build_module=build_attention_pooling,
        sample_inputs=temporal_sample_inputs,
    )
)
