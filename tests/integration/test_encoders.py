"""Real ONNX Runtime sessions: parity with PyTorch, golden embeddings, refusal of mismatches."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import encoders.text
from encoders import runtime
from encoders.bundle import BundleError, BundleIntegrityError, load_manifest
from encoders.export import OnnxParityError, check_parity
from encoders.image import preprocess_image, synthetic_image
from encoders.quantize import held_texts
from encoders.registry import get_encoder_spec, registered_encoders
from encoders.runtime import (
    CPU,
    CUDA,
    OnnxModel,
    ProviderUnavailableError,
    cuda_loadable,
    select_providers,
)
from encoders.serving import ServedBundle

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "embeddings.json").read_text())


def test_onnxruntime_comes_from_the_gpu_distribution_only() -> None:
    dists = {d.metadata["Name"].lower() for d in metadata.distributions()}
    assert "onnxruntime-gpu" in dists
    assert "onnxruntime" not in dists, "the CPU package would silently replace the GPU build"
    assert "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def test_provider_selection_falls_back_to_cpu(served_bundle: ServedBundle) -> None:
    assert select_providers("cpu") == [CPU]
    providers = select_providers("auto")
    assert providers[-1] == CPU
    assert served_bundle.provider in providers


def test_device_cuda_fails_loudly_when_the_session_falls_back(
    bundle_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for CUDA on a machine without its libraries, ONNX Runtime logs an error and
    quietly runs the session on the CPU; a session asked for ``device=cuda`` must refuse
    that. (Only the probe is overridden: the fallback is ONNX Runtime's own.)"""
    if cuda_loadable():
        pytest.skip("CUDA loads here: the session would not fall back")
    monkeypatch.setattr(runtime, "select_providers", lambda device: [CUDA, CPU])
    with pytest.raises(ProviderUnavailableError, match=r"runs model\.onnx on CPUExecutionProvider"):
        OnnxModel(bundle_path / "text" / "model.onnx", "cuda")
    assert OnnxModel(bundle_path / "text" / "model.onnx", "auto").provider == CPU


@pytest.mark.parametrize("modality", ["text", "image"])
def test_onnx_matches_pytorch(bundle_path: Path, modality: str) -> None:
    manifest = load_manifest(bundle_path)
    entry = manifest.encoders[modality]
    spec = get_encoder_spec(entry.name)
    module = spec.build_module()
    report = check_parity(module, spec, bundle_path / entry.file, batch_sizes=(1, 3, 8))
    assert all(diff <= 1e-4 for diff in report.max_abs_diff.values()), report


def test_parity_check_refuses_a_model_that_differs(bundle_path: Path) -> None:
    entry = load_manifest(bundle_path).encoders["image"]
    spec = get_encoder_spec(entry.name)
    module = spec.build_module()
    with torch.no_grad():
        for param in list(module.parameters())[-3:]:
            param.add_(0.05)
    with pytest.raises(OnnxParityError, match="max abs diff"):
        check_parity(module, spec, bundle_path / entry.file)


def test_text_golden_embeddings(served_bundle: ServedBundle) -> None:
    expected = np.asarray(GOLDEN["text"]["embeddings"], dtype=np.float32)
    got = served_bundle.text.encode(GOLDEN["text"]["inputs"])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_image_golden_embeddings(served_bundle: ServedBundle) -> None:
    expected = np.asarray(GOLDEN["image"]["embeddings"], dtype=np.float32)
    pixels = np.stack([preprocess_image(synthetic_image(s)) for s in GOLDEN["image"]["seeds"]])
    got = served_bundle.image.encode(pixels)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_batched_equals_one_by_one(served_bundle: ServedBundle) -> None:
    texts = ["short", "a much longer sentence about football and the final score", "mid length"]
    batched = served_bundle.text.encode(texts)
    single = np.concatenate([served_bundle.text.encode([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_length_buckets_move_no_embedding_and_no_token_bag(
    served_bundle: ServedBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = held_texts(96)  # real tweets and Reuters news: 5 to 256 tokens
    encoder = served_bundle.text
    runs: list[int] = []
    run = encoder.model.run

    def counted(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        runs.append(feed["input_ids"].size)  # padded positions encoded
        return run(feed)

    encoder.model.run = counted  # type: ignore[method-assign]
    try:
        encoder.buckets = False
        plain, plain_bags = encoder.encode_with_tokens(texts, chunk=32)
        plain_runs, runs[:] = list(runs), []
        encoder.buckets = True
        bucketed, bucketed_bags = encoder.encode_with_tokens(texts, chunk=32)
    finally:
        del encoder.model.run
        encoder.buckets = True
    assert len(plain_runs) == 3 and len(runs) > 3  # the long news got runs of their own
    assert sum(runs) < 0.9 * sum(plain_runs)  # and the tweets stopped padding to them
    np.testing.assert_allclose(bucketed, plain, atol=1e-5)
    alone = np.concatenate([encoder.encode([t]) for t in texts[:12]])
    np.testing.assert_allclose(bucketed[:12], alone, atol=1e-5)
    np.testing.assert_array_equal(bucketed_bags.ids, plain_bags.ids)
    np.testing.assert_array_equal(bucketed_bags.counts, plain_bags.counts)
    # a corpus larger than one tokenisation is encoded slice by slice, to the same result
    monkeypatch.setattr(encoders.text, "TOKENISE_AT_ONCE", 40)
    sliced, sliced_bags = encoder.encode_with_tokens(texts, chunk=32)
    np.testing.assert_allclose(sliced, bucketed, atol=1e-5)
    np.testing.assert_array_equal(sliced_bags.ids, bucketed_bags.ids)


def test_same_meaning_is_closer_than_different_meaning(served_bundle: ServedBundle) -> None:
    a, b, c = served_bundle.text.encode(
        [
            "The football match ended 2-1",
            "Our team won the soccer game 2 to 1",
            "My sourdough recipe",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.2


def test_registry_knows_the_default_encoders() -> None:
    specs = registered_encoders()
    assert specs["minilm-l6-v2"].dim == 384 and specs["efficientnet-lite0"].dim == 1280
    with pytest.raises(KeyError, match="unknown encoder"):
        get_encoder_spec("clip-vit-huge")


def test_bundle_hash_mismatch_is_an_error(bundle_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_path, copy)
    load_manifest(copy)
    tokenizer = copy / "text" / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes().replace(b"[UNK]", b"[UNX]", 1))
    with pytest.raises(BundleIntegrityError, match=r"text/tokenizer\.json"):
        ServedBundle(copy, device="cpu")
    with pytest.raises(BundleError, match="postpulse export"):
        load_manifest(tmp_path / "nowhere")
