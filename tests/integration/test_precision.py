"""int8 bundles (issue 16): the export quantizes the text encoder, gates it on real posts
and records it; a quantization that loses too much is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encoders.bundle import load_manifest, write_default_bundle
from encoders.quantize import (
    MEAN_COSINE_GATE,
    MIN_COSINE_GATE,
    QuantizationRefusedError,
    cosine_gate,
    gate_report,
    held_texts,
)
from encoders.serving import ServedBundle
from encoders.text import TextEncoder
from encoders.training.corpora import load_corpus

pytestmark = pytest.mark.integration


def _unseen_texts(n: int) -> list[str]:
    """Reuters training texts: real, long, and not in the gate's held set."""
    posts = [p for p in load_corpus("reuters-r8") if p["labels"]["split"] == "train"]
    return [str(p["text"]) for p in posts[::30][:n]]


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "bundle"
    write_default_bundle(
        out,
        encoders={"text": "minilm-l6-v2", "image": "efficientnet-lite0"},
        include_tools=False,
        precision="int8",
    )
    return out


def test_an_int8_bundle_records_its_precision_and_gate_per_model(
    int8_bundle: Path, bundle_path: Path
) -> None:
    manifest = load_manifest(int8_bundle)  # every file's hash checks
    text, image = manifest.encoders["text"], manifest.encoders["image"]
    assert text.precision == "int8" and image.precision == "fp32" and not image.quantization
    q = text.quantization
    assert q["held_items"] >= 500
    assert q["cosine_mean"] >= MEAN_COSINE_GATE and q["cosine_min"] >= MIN_COSINE_GATE
    raw = json.loads((int8_bundle / "manifest.json").read_text())
    assert raw["encoders"]["text"]["quantization"]["mean_gate"] == MEAN_COSINE_GATE
    # the int8 file really is another (smaller) model than the fp32 one
    fp32_file = bundle_path / load_manifest(bundle_path, verify=False).encoders["text"].file
    assert (int8_bundle / text.file).stat().st_size < 0.8 * fp32_file.stat().st_size


def test_the_int8_bundle_stays_close_to_fp32_on_posts_it_was_not_gated_on(
    int8_bundle: Path, served_bundle: ServedBundle
) -> None:
    texts = _unseen_texts(120)
    assert len(texts) == 120 and not set(texts) & set(held_texts())
    int8 = ServedBundle(int8_bundle, device="cpu")
    assert int8.manifest.encoders["text"].precision == "int8"
    mean, minimum = cosine_gate(served_bundle.text.encode(texts), int8.text.encode(texts))
    assert mean >= MEAN_COSINE_GATE and minimum >= MIN_COSINE_GATE, (mean, minimum)


def test_a_quantization_that_loses_too_much_is_refused(bundle_path: Path, tmp_path: Path) -> None:
    """ONNX Runtime's default dynamic quantization (every op, per-tensor weights) is
    the recipe the issue measured at mean cosine 0.959: the gate must refuse it."""
    from onnxruntime.quantization import quantize_dynamic

    entry = load_manifest(bundle_path, verify=False).encoders["text"]
    folder = (bundle_path / entry.file).parent
    coarse = tmp_path / "coarse.onnx"
    quantize_dynamic(folder / "model.onnx", coarse)
    meta = {**entry.assets, "dim": entry.dim}
    fp32 = TextEncoder(folder, {**meta, "file": "model.onnx"}, device="cpu")
    # the encoder loads its file relative to the folder: give it an absolute path
    worse = TextEncoder(folder, {**meta, "file": str(coarse)}, device="cpu")
    texts = held_texts(400)
    with pytest.raises(QuantizationRefusedError, match="refused"):
        gate_report(fp32.encode, worse.encode, texts, "text encoder")
    # and the gate passes the fp32 model against itself
    report = gate_report(fp32.encode, fp32.encode, texts[:50], "text encoder")
    assert report.cosine_min > 0.9999 and np.isclose(report.cosine_mean, 1.0, atol=1e-4)
