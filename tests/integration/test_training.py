"""Train on synthetic multimodal posts end to end, check the evaluation, and serve the
exported bundle with a real worker on the real broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from encoders.bundle import load_manifest
from encoders.serving import ServedBundle
from encoders.training.data import EmbeddingCache
from encoders.training.run import CacheMismatchError, build_dataset, run_training
from encoders.training.synth import generate, write_jsonl
from encoders.training.train import TrainConfig, evaluate_bundle
from streams.broker import LocalBroker
from streams.samples import SamplePost
from streams.settings import Settings
from tests.workers import milvus_ids, produce_all, reader, start_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("training")
    started = time.monotonic()
    posts = write_jsonl(generate(480, seed=5), root / "posts.jsonl")
    card = build_dataset([posts], root / "dataset", bundle_path, progress=False)
    build_seconds = time.monotonic() - started
    config = TrainConfig(
        cache=str(root / "dataset" / "embeddings.npz"),
        bundle=str(bundle_path),
        out=str(root / "bundle"),
        epochs=30,
    )
    result = run_training(config, progress=False)
    # data set build + training of the model served (the comparisons train 15 more)
    result["seconds"] = build_seconds + float(result["train_seconds"])
    result["card"] = card
    return result


def test_fusion_beats_single_modalities_and_survives_missing_ones(
    trained: dict[str, object],
) -> None:
    assert trained["seconds"] < 120, "a small model trains end to end in under 2 minutes on CPU"
    comparisons = trained["comparisons"]
    assert isinstance(comparisons, dict)
    best_fusion = max(comparisons["fusion_strategies"].values())
    best_single = max(comparisons["single_modality"].values())
    assert best_fusion >= best_single + 0.10, comparisons
    missing = comparisons["missing_modalities"]
    assert len(missing) == 4  # with and without modality dropout, all present and 70% dropped
    assert all("mean of 3 seeds" in k for k in missing)
    full = [v for k, v in missing.items() if "all present" in k]
    dropped = [v for k, v in missing.items() if "dropped" in k]
    assert max(dropped) < max(full)  # the degraded evaluation really removes evidence

    def score(prefix: str, condition: str) -> float:
        return next(v for k, v in missing.items() if k.startswith(prefix) and condition in k)

    loss_with = score("modality dropout", "all present") - score("modality dropout", "dropped")
    loss_without = score("no modality", "all present") - score("no modality", "dropped")
    # with 70% of modalities missing, the model trained with modality dropout loses less
    assert loss_with < loss_without, missing
    metrics = trained["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["popularity_spearman"] >= 0.6
    report = Path(str(trained["report"])).read_text()
    assert "Synthetic data" in report and "macro-F1" in report
    assert (Path(str(trained["report"])).parent / "confusion.png").stat().st_size > 1000


def test_evaluate_scores_the_exported_bundle_as_training_did(
    trained: dict[str, object], bundle_path: Path, tmp_path: Path
) -> None:
    from streams.cli import main

    bundle = Path(str(trained["bundle"]))
    cache_path = bundle.parent / "dataset" / "embeddings.npz"
    metrics, labels = evaluate_bundle(bundle, EmbeddingCache.load(cache_path))
    trained_metrics = trained["metrics"]
    assert isinstance(trained_metrics, dict)
    assert labels == load_manifest(bundle).labels["category"]
    # the video temporal model was trained too and replaces the bundle's untrained one
    manifest, base = load_manifest(bundle), load_manifest(bundle_path)
    assert manifest.encoders["video"].version.endswith("@trained")
    assert manifest.files["video/model.onnx"] != base.files["video/model.onnx"]
    assert "video_temporal_model" in trained["comparisons"]  # type: ignore[operator]
    # ONNX Runtime on the exported graphs (fusion, and the temporal model over the cached
    # frames) reproduces the PyTorch evaluation
    assert metrics["test_posts"] == trained_metrics["test_posts"]
    assert abs(metrics["macro_f1"] - trained_metrics["macro_f1"]) <= 0.01
    assert abs(metrics["popularity_spearman"] - trained_metrics["popularity_spearman"]) <= 0.01
    out = tmp_path / "evaluation"
    code = main(
        ["evaluate", "--bundle", str(bundle), "--cache", str(cache_path), "--out", str(out)]
    )
    assert code == 0
    assert "category macro-F1" in (out / "report.md").read_text()
    assert (out / "confusion.png").stat().st_size > 1000


def test_cache_must_match_the_bundle(trained: dict[str, object], tmp_path: Path) -> None:
    bundle = Path(str(trained["bundle"]))
    manifest = load_manifest(bundle)
    assert manifest.fusion.trained and manifest.fusion.file == "fusion/model.onnx"
    other = tmp_path / "other"
    import shutil

    shutil.copytree(bundle, other)
    text = (
        (other / "manifest.json")
        .read_text()
        .replace(manifest.encoders["text"].version, "some-other-text-model")
    )
    (other / "manifest.json").write_text(text)
    config = TrainConfig(
        cache=str(bundle.parent / "dataset" / "embeddings.npz"),
        bundle=str(other),
        out=str(tmp_path / "x"),
    )
    with pytest.raises(CacheMismatchError):
        run_training(config, compare=False, progress=False)
    with pytest.raises(CacheMismatchError):
        evaluate_bundle(other, EmbeddingCache.load(Path(config.cache)))


def test_worker_serves_the_trained_bundle(
    trained: dict[str, object], broker: LocalBroker, settings_for, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bundle = Path(str(trained["bundle"]))
    served = ServedBundle(bundle, ocr=False, stt=False)
    settings: Settings = settings_for(broker, prefix="trained", bundle_path=bundle)
    posts = generate(40, seed=77)
    samples = [
        SamplePost(__import__("json").dumps(p.doc).encode(), str(p.doc["post_id"]), p.category)
        for p in posts
    ]
    worker = start_worker(settings, tmp_path / "worker.log").start()
    out = reader(broker, settings)
    try:
        worker.wait_ready()
        produce_all(broker, settings, samples)
        assert out.wait_for(lambda o: o.accounted >= len(samples), timeout_s=180)
    finally:
        out.close()
        worker.stop()
    analyses = out.outputs.analyses
    assert len(analyses) == len(samples)
    correct = 0
    for sample in samples:
        analysis = analyses[str(sample.post_id)]
        assert analysis.bundle_version == served.version
        assert analysis.fusion.startswith("trained-")
        assert set(analysis.category_probs) == set(served.category_labels)
        assert analysis.popularity is not None
        correct += analysis.category == sample.topic
    assert correct / len(samples) >= 0.7
    count, _ids = milvus_ids(settings)
    assert count == len(samples)
    # a text query is embedded by the trained fusion model too (128-d, same space)
    from collections import Counter

    from encoders.training.synth import CLASSES
    from streams.search import find_similar

    common = Counter(p.category for p in posts).most_common(1)[0][0]  # food: 18 of the 40
    words = CLASSES[common]["words"]
    hits = find_similar(settings, text=f"great {' '.join(words[:4])}", top_k=5)  # type: ignore[index]
    same = sum(analyses[h.post_id].category == common for h in hits)
    assert same >= 3, (common, [(h.post_id, analyses[h.post_id].category) for h in hits])


def test_multi_label_bundle_exports_and_scores_like_training(
    bundle_path: Path, tmp_path: Path
) -> None:
    """A multi-label model (posts with one or two categories) through the checked export
    path: the bundle says multi_label, its ONNX graph gives independent probabilities,
    and scoring the bundle reproduces the PyTorch evaluation."""
    import numpy as np

    from encoders.training.data import encoders_key
    from encoders.training.train import export_trained_bundle, train

    manifest = load_manifest(bundle_path)
    dims = {m: manifest.encoders[m].dim for m in manifest.fusion.modalities}
    rng = np.random.default_rng(4)
    n, names = 600, ["a", "b", "c"]
    centres = rng.normal(size=(3, dims["text"])) * 0.3
    chosen = [sorted(rng.choice(3, size=int(rng.integers(1, 3)), replace=False)) for _ in range(n)]
    text = np.array([centres[c].sum(0) + 0.1 * rng.normal(size=dims["text"]) for c in chosen])
    categories = np.array(["|".join(names[k] for k in c) for c in chosen])
    presence = np.zeros((n, len(dims)), np.float32)
    presence[:, 0] = 1.0
    from encoders.training.data import split

    cache = EmbeddingCache(
        post_ids=np.array([f"p{i}" for i in range(n)]),
        parts={
            m: (text if m == "text" else np.zeros((n, d))).astype(np.float32)
            for m, d in dims.items()
        },
        presence=presence,
        modalities=list(dims),
        category=categories,
        sentiment=np.array(["neutral"] * n),
        popularity=rng.normal(3.0, 1.0, size=n).astype(np.float32),
        created_at=np.arange(n),
        split=split(categories.tolist(), 0),
        encoders_key=encoders_key(manifest),
        extra={},
    )
    result = train(cache, TrainConfig(epochs=20, multi_label=True), progress=False)
    assert result.metrics["macro_f1"] >= 0.8
    out = tmp_path / "bundle"
    exported = export_trained_bundle(result, bundle_path, out)
    assert exported.fusion.multi_label
    metrics, labels = evaluate_bundle(out, cache)
    assert labels == names
    assert abs(metrics["macro_f1"] - result.metrics["macro_f1"]) <= 0.01
    served = ServedBundle(out, ocr=False, stt=False)
    rows = [i for i, c in enumerate(chosen) if len(c) == 2][:10]
    heads = served.fusion_heads({m: cache.parts[m][rows] for m in dims}, presence[rows])
    assert heads.category_probs is not None
    assert (heads.category_probs.sum(axis=1) > 1.2).mean() > 0.5  # sigmoid, not softmax
