"""Training helpers: dedup, splits, config, modality dropout, focal loss, fusion shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.training.data import EmbeddingCache, dedup_key, deduplicate, split
from encoders.training.fusion import FusionModel, focal_loss, modality_dropout
from encoders.training.train import TrainConfig


def gaussian_cache(
    k: int, per_class: int, dims: dict[str, int], spread: float, seed: int
) -> EmbeddingCache:
    """Class-conditional Gaussian embeddings (informative in the first modality only)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"c{i}" for i in range(k)], per_class)
    n = len(labels)
    names = list(dims)
    centres = rng.normal(size=(k, dims[names[0]])) * spread
    parts = {
        names[0]: centres[np.repeat(np.arange(k), per_class)] + rng.normal(size=(n, dims[names[0]]))
    }
    parts |= {m: rng.normal(size=(n, dims[m])) for m in names[1:]}
    return labelled_cache(parts, labels)


def labelled_cache(parts: dict[str, np.ndarray], labels: np.ndarray) -> EmbeddingCache:
    """A cache of ``parts`` (all present) with categories ``labels``, split stratified."""
    n = len(labels)
    return EmbeddingCache(
        post_ids=np.array([f"p{i}" for i in range(n)]),
        parts={m: v.astype(np.float32) for m, v in parts.items()},
        presence=np.ones((n, len(parts)), np.float32),
        modalities=list(parts),
        category=labels,
        sentiment=np.array(["neutral"] * n),
        popularity=np.full(n, np.nan, np.float32),
        created_at=np.arange(n),
        split=split(labels.tolist(), 0),
        encoders_key="k",
        extra={},
    )


def test_near_identical_texts_share_a_key() -> None:
    assert dedup_key("Great GOAL!!! https://t.co/x @bob") == dedup_key("great goal")
    assert dedup_key("great goal #football") != dedup_key("great goal")
    posts = [
        {"post_id": "a", "text": "Great goal!"},
        {"post_id": "a", "text": "other"},
        {"post_id": "b", "text": "great goal"},
        {"post_id": "c", "text": "great goal", "media": [{"kind": "image", "uri": "x"}]},
    ]
    kept, dropped = deduplicate(posts)
    assert [p["post_id"] for p in kept] == ["a", "c"]
    assert dropped == {"duplicate_id": 1, "near_identical_text": 1}


def test_split_is_stratified_and_reproducible() -> None:
    labels = ["a"] * 100 + ["b"] * 20
    s1, s2 = split(labels, seed=3), split(labels, seed=3)
    assert (s1 == s2).all()
    for label, n in (("a", 100), ("b", 20)):
        rows = np.array([lab == label for lab in labels])
        assert (s1[rows] == 0).sum() == round(n * 0.7)
        assert (s1[rows] == 2).sum() == n - round(n * 0.7) - round(n * 0.15)


def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("strategy: late\nepochs: 5\n")
    config = TrainConfig.from_yaml(path, ["epochs=7", "modalities=[text, image]"])
    assert (config.strategy, config.epochs, config.modalities) == ("late", 7, ["text", "image"])
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_yaml(None, ["epochz=3"])


def test_modality_dropout_keeps_one_present_modality() -> None:
    presence = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]] * 200, dtype=torch.float32)
    dropped = modality_dropout(presence, 0.9, torch.Generator().manual_seed(0))
    assert (dropped <= presence).all()
    assert (dropped.sum(dim=1) >= 1).all()
    assert dropped.sum() < presence.sum() * 0.5


def test_focal_loss_down_weights_easy_examples() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.2, 0.0]])
    target = torch.tensor([0, 0])
    easy = focal_loss(logits[:1], target[:1])
    hard = focal_loss(logits[1:], target[1:])
    assert easy < hard * 0.01


@pytest.mark.parametrize("strategy", ["early", "intermediate", "late"])
def test_fusion_outputs(strategy: str) -> None:
    dims = {"text": 8, "image": 6, "audio": 4, "video": 6}
    model = FusionModel(dims, n_categories=5, strategy=strategy, hidden=16, embed_dim=12).eval()
    parts = [torch.randn(3, d) for d in dims.values()]
    presence = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]], dtype=torch.float32)
    embedding, category, sentiment, popularity = model(*parts, presence)
    assert embedding.shape == (3, 12) and torch.allclose(
        embedding.norm(dim=1), torch.ones(3), atol=1e-5
    )
    assert torch.allclose(category.sum(dim=1), torch.ones(3)) and sentiment.shape == (3, 3)
    assert popularity.shape == (3, 1)
    # an absent modality's values do not matter
    changed = [p.clone() for p in parts]
    changed[2] = torch.randn(3, 4) * 100
    assert torch.allclose(model(*changed, presence)[1][0], category[0], atol=1e-6)


def test_posts_import_from_jsonl_csv_and_parquet(tmp_path: Path) -> None:
    import json

    import pandas as pd

    from encoders.training.data import read_posts

    rows = [
        {
            "post_id": "p1",
            "platform": "x",
            "author_id": "u",
            "created_at": 1_700_000_000_005,
            "text": "hi",
            "labels": {"category": "food"},
            "media": [{"kind": "image", "uri": "a.png"}],
        },
        {
            "post_id": "p2",
            "platform": "x",
            "author_id": "u",
            "created_at": 1767225600000,
            "text": "yo",
        },
    ]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    flat = [
        {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in r.items()} for r in rows
    ]
    pd.DataFrame(flat).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(flat).to_parquet(tmp_path / "p.parquet")
    for name in ("p.jsonl", "p.csv", "p.parquet"):
        got = read_posts(tmp_path / name)
        assert [g["post_id"] for g in got] == ["p1", "p2"], name
        assert got[0]["labels"] == {"category": "food"} and got[0]["media"][0]["kind"] == "image", (
            name
        )
        assert got[0]["created_at"] == 1_700_000_000_005 and "media" not in got[1], name
    with pytest.raises(ValueError, match="unsupported format"):
        read_posts(tmp_path / "p.xlsx")


def test_skewed_training_split_keeps_evaluation_rows() -> None:
    from encoders.training.data import EmbeddingCache, skew_training_split

    n = 400
    rng = np.random.default_rng(0)
    category = np.array(["a", "b", "c", "d"] * (n // 4))
    split_ids = split(category.tolist(), seed=1)
    cache = EmbeddingCache(
        post_ids=np.array([f"p{i}" for i in range(n)]),
        parts={"text": rng.normal(size=(n, 4)).astype(np.float32)},
        presence=np.ones((n, 1), np.float32),
        modalities=["text"],
        category=category,
        sentiment=np.array(["neutral"] * n),
        popularity=np.zeros(n, np.float32),
        created_at=np.arange(n),
        split=split_ids,
        encoders_key="k",
        extra={},
    )
    skewed = skew_training_split(cache, 10.0)
    train_counts = [int(((skewed.split == 0) & (skewed.category == c)).sum()) for c in "abcd"]
    assert train_counts[0] == 70 and train_counts[-1] == 7
    assert train_counts == sorted(train_counts, reverse=True)
    assert ((skewed.split != 0).sum()) == ((cache.split != 0).sum())


def test_class_weighting_raises_minority_recall_on_a_100_to_1_split() -> None:
    from encoders.training.train import compare_imbalance

    cache = gaussian_cache(k=4, per_class=700, dims={"text": 16}, spread=0.6, seed=0)
    config = TrainConfig(
        modalities=["text"], epochs=20, modality_dropout=0.0, hidden=64, embed_dim=16
    )
    result = compare_imbalance(cache, config, 100.0)
    recall = result["imbalance_100to1_minority_recall"]
    # the configured method (class_weighted by default) is marked as the chosen one
    assert set(recall) == {"none", "class_weighted (chosen)", "focal", "oversample", "undersample"}
    assert recall["class_weighted (chosen)"] >= recall["none"] + 0.1, recall


def test_distillation_pulls_the_student_towards_the_teacher() -> None:
    from encoders.training.train import prepare, train

    cache = gaussian_cache(k=3, per_class=200, dims={"text": 8, "image": 4}, spread=0.8, seed=1)
    base = TrainConfig(
        modalities=["text", "image"], strategy="early", epochs=15, hidden=32, embed_dim=8
    )
    teacher = train(cache, TrainConfig(**{**base.__dict__, "strategy": "late"}), progress=False)
    alone = train(cache, base, progress=False)
    distilled = train(
        cache,
        TrainConfig(**{**base.__dict__, "distill_from": "late", "distill_weight": 2.0}),
        progress=False,
    )
    test = prepare(cache, np.flatnonzero(cache.split == 2), ["text", "image"], teacher.labels)

    def probs(result) -> torch.Tensor:  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return torch.softmax(result.model.logits(test.parts, test.presence)["category"], dim=-1)

    gap_alone = (probs(alone) - probs(teacher)).abs().mean()
    gap_distilled = (probs(distilled) - probs(teacher)).abs().mean()
    assert gap_distilled < gap_alone
    assert distilled.metrics["macro_f1"] > 0.6


def test_trained_temporal_model_finds_the_evidence_frame() -> None:
    """Each video has one frame near its class centre among seven noise frames: mean
    pooling dilutes it, the temporal model trained with the fusion model attends to it."""
    from dataclasses import replace

    from encoders.training.train import train

    rng = np.random.default_rng(3)
    k, per_class, frames, dim = 4, 150, 8, 32
    cache = gaussian_cache(
        k=k, per_class=per_class, dims={"text": 8, "video": dim}, spread=0.0, seed=3
    )
    n = k * per_class
    centres = rng.normal(size=(k, dim)) * 1.2
    clips = rng.normal(size=(n, frames, dim)).astype(np.float32)
    evidence = rng.integers(0, frames, size=n)
    classes = np.repeat(np.arange(k), per_class)
    clips[np.arange(n), evidence] = centres[classes] + 0.5 * rng.normal(size=(n, dim))
    clips /= np.linalg.norm(clips, axis=-1, keepdims=True)
    mean = clips.mean(axis=1)  # what the untrained (mean-pooling) temporal model gives
    cache.parts["video"] = (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)
    cache = replace(cache, video_frames=clips, extra={"video_index": np.arange(n, dtype=np.int32)})
    config = TrainConfig(
        modalities=["text", "video"], epochs=25, modality_dropout=0.0, hidden=64, embed_dim=16
    )
    trained = train(cache, config, progress=False)
    frozen = train(cache, replace(config, train_temporal=False), progress=False)
    assert trained.model.temporal is not None and frozen.model.temporal is None
    assert trained.metrics["accuracy_with_video"] >= frozen.metrics["accuracy_with_video"] + 0.1, (
        trained.metrics["accuracy_with_video"],
        frozen.metrics["accuracy_with_video"],
    )
    # and it does so by weighting the evidence frame above the uniform 1/8
    import torch

    with torch.no_grad():
        x = torch.from_numpy(clips[:50])
        scores = trained.model.temporal.score(x).squeeze(-1)
        weights = torch.softmax(scores, dim=-1).numpy()
    assert weights[np.arange(50), evidence[:50]].mean() > 1.25 / frames  # above uniform


def multi_label_cache(seed: int = 0, n: int = 900, dim: int = 24) -> EmbeddingCache:
    """Posts with one or two of four categories: embeddings are the sum of their
    categories' centres plus noise."""
    rng = np.random.default_rng(seed)
    names = ["a", "b", "c", "d"]
    centres = rng.normal(size=(4, dim)) * 1.5
    categories, rows = [], []
    for _ in range(n):
        chosen = sorted(rng.choice(4, size=int(rng.integers(1, 3)), replace=False))
        categories.append("|".join(names[k] for k in chosen))
        rows.append(centres[chosen].sum(axis=0) + rng.normal(size=dim))
    return labelled_cache({"text": np.array(rows)}, np.array(categories))


def test_multi_label_categories() -> None:
    from encoders.training.train import predict, prepare, train

    cache = multi_label_cache()
    config = TrainConfig(modalities=["text"], epochs=25, hidden=64, embed_dim=16, multi_label=True)
    with pytest.raises(ValueError, match="multi_label"):
        train(cache, TrainConfig(modalities=["text"], epochs=1), progress=False)
    result = train(cache, config, progress=False)
    assert result.labels == ["a", "b", "c", "d"] and result.metrics["multi_label"]
    assert result.metrics["macro_f1"] >= 0.85, result.metrics["per_class_f1"]
    # posts with two categories get both
    two = np.array(["|" in c for c in cache.category])
    rows = np.flatnonzero((cache.split == 2) & two)
    decided = predict(result, prepare(cache, rows, ["text"], result.labels))["category_multi"]
    truth = prepare(cache, rows, ["text"], result.labels).category_multi.numpy().astype(bool)
    assert (decided & truth).sum() / truth.sum() >= 0.8
    assert decided.sum(axis=1).mean() > 1.5  # mostly two labels, not just the top one
    # the exported signature gives independent probabilities, not a softmax
    import torch

    with torch.no_grad():
        x = torch.from_numpy(cache.parts["text"][rows[:20]])
        _emb, probs, _sent, _pop = result.model(x, torch.ones((20, 1)))
    assert (probs.sum(dim=1) > 1.2).float().mean() > 0.5
