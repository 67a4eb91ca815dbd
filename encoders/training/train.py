"""Training and evaluation of the fusion model on an embedding cache, and export of the
trained model into a bundle the worker serves (``postpulse train``)."""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scipy.stats import spearmanr
from sklearn.metrics import confusion_matrix, f1_score, mean_absolute_error, recall_score
from torch.nn import functional as F
from tqdm import tqdm

from encoders.bundle import MANIFEST, FusionEntry, Manifest, load_manifest, sha256_file
from encoders.export import check_parity, export_module
from encoders.registry import EncoderSpec, ExportSpec
from encoders.training.data import SENTIMENTS, EmbeddingCache
from encoders.training.fusion import FusionModel, focal_loss, modality_dropout

IMBALANCE_METHODS = ("none", "class_weighted", "focal", "oversample", "undersample")


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved beside its outputs)."""

    cache: str = "data/dataset/embeddings.npz"
    bundle: str = "models/default"
    out: str = "models/trained"
    strategy: str = "intermediate"
    modalities: list[str] = field(default_factory=lambda: ["text", "image", "audio", "video"])
    imbalance: str = "class_weighted"
    modality_dropout: float = 0.3
    hidden: int = 256
    embed_dim: int = 128
    dropout: float = 0.1
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    sentiment_weight: float = 0.5
    popularity_weight: float = 0.5
    embedding_weight: float = 0.5
    seed: int = 0
    test_missing_rate: float = 0.7
    imbalance_ratio: float | None = None  # compare imbalance methods on a skewed train split
    distill_from: str | None = None  # teacher strategy (e.g. "late"): distil into this model
    distill_weight: float = 0.5
    distill_temperature: float = 2.0

    @classmethod
    def from_yaml(cls, path: Path | None, overrides: list[str] | None = None) -> TrainConfig:
        """A YAML file, then ``key=value`` overrides (values parsed as YAML)."""
        values: dict[str, Any] = yaml.safe_load(path.read_text()) or {} if path else {}
        for item in overrides or []:
            key, _, raw = item.partition("=")
            values[key.strip()] = yaml.safe_load(raw)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**values)


def seed_everything(seed: int) -> None:
    """Python, NumPy and PyTorch seeds, deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class Prepared:
    """Tensors of one split."""

    parts: list[torch.Tensor]
    presence: torch.Tensor
    category: torch.Tensor
    sentiment: torch.Tensor
    popularity: torch.Tensor
    popularity_known: torch.Tensor


def prepare(
    cache: EmbeddingCache, rows: np.ndarray, modalities: list[str], labels: list[str]
) -> Prepared:
    """Select ``rows`` and the used modalities (others zeroed and marked absent)."""
    presence = cache.presence[rows].copy()
    for j, m in enumerate(cache.modalities):
        if m not in modalities:
            presence[:, j] = 0.0
    pop = cache.popularity[rows]
    return Prepared(
        parts=[torch.from_numpy(cache.parts[m][rows].astype(np.float32)) for m in cache.modalities],
        presence=torch.from_numpy(presence.astype(np.float32)),
        category=torch.tensor([labels.index(c) for c in cache.category[rows]], dtype=torch.long),
        sentiment=torch.tensor(
            [SENTIMENTS.index(s) for s in cache.sentiment[rows]], dtype=torch.long
        ),
        popularity=torch.from_numpy(np.nan_to_num(pop).astype(np.float32)),
        popularity_known=torch.from_numpy(np.isfinite(pop)),
    )


def _sample_indices(y: np.ndarray, method: str, rng: np.random.Generator) -> np.ndarray:
    counts = np.bincount(y)
    idx = np.arange(len(y))
    if method == "oversample":
        target = counts.max()
        return np.concatenate(
            [rng.choice(idx[y == k], target, replace=True) for k in range(len(counts)) if counts[k]]
        )
    if method == "undersample":
        target = counts[counts > 0].min()
        return np.concatenate(
            [
                rng.choice(idx[y == k], target, replace=False)
                for k in range(len(counts))
                if counts[k]
            ]
        )
    return idx


@dataclass
class TrainResult:
    """A trained model and how it did."""

    model: FusionModel
    config: TrainConfig
    labels: list[str]
    popularity_mean: float
    popularity_std: float
    metrics: dict[str, Any]


def train(cache: EmbeddingCache, config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train one model on the cache's train split; evaluate on its test split. With
    ``distill_from`` a teacher of that strategy is trained first and the model also
    matches the teacher's softened category distribution (knowledge distillation)."""
    teacher_probs: torch.Tensor | None = None
    labels = sorted(set(cache.category.tolist()))
    train_rows = np.flatnonzero(cache.split == 0)
    data = prepare(cache, train_rows, config.modalities, labels)
    if config.distill_from:
        teacher = train(
            cache, replace(config, strategy=config.distill_from, distill_from=None), progress=False
        )
        with torch.no_grad():
            logits = teacher.model.logits(data.parts, data.presence)["category"]
            teacher_probs = torch.softmax(logits / config.distill_temperature, dim=-1)
    seed_everything(config.seed)
    known = data.popularity[data.popularity_known]
    pop_mean = float(known.mean()) if len(known) else 0.0
    pop_std = float(known.std()) if len(known) > 1 else 1.0
    dims = {m: cache.parts[m].shape[1] for m in cache.modalities}
    model = FusionModel(
        dims,
        len(labels),
        len(SENTIMENTS),
        config.strategy,
        config.hidden,
        config.embed_dim,
        config.dropout,
    )
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    y = data.category.numpy()
    counts = np.bincount(y, minlength=len(labels)).astype(np.float32)
    class_weight = None
    if config.imbalance in ("class_weighted", "focal"):
        class_weight = torch.from_numpy(len(y) / (len(labels) * np.maximum(counts, 1.0)))
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for _epoch in tqdm(range(config.epochs), desc=f"train {config.strategy}", disable=not progress):
        order = _sample_indices(y, config.imbalance, rng)
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            b = torch.from_numpy(order[start : start + config.batch_size])
            presence = modality_dropout(data.presence[b], config.modality_dropout, generator)
            out = model.logits([p[b] for p in data.parts], presence)
            if config.imbalance == "focal":
                loss = focal_loss(out["category"], data.category[b], weight=class_weight)
            else:
                loss = F.cross_entropy(out["category"], data.category[b], weight=class_weight)
            loss = loss + config.sentiment_weight * F.cross_entropy(
                out["sentiment"], data.sentiment[b]
            )
            if teacher_probs is not None:
                t = config.distill_temperature
                student = F.log_softmax(out["category"] / t, dim=-1)
                kd = F.kl_div(student, teacher_probs[b], reduction="batchmean") * t * t
                loss = loss + config.distill_weight * kd
            loss = loss + config.embedding_weight * F.cross_entropy(
                out["embedding_logits"], data.category[b]
            )
            known_b = data.popularity_known[b]
            if known_b.any():
                target = (data.popularity[b][known_b] - pop_mean) / pop_std
                loss = loss + config.popularity_weight * F.mse_loss(
                    out["popularity"][known_b], target
                )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    result = TrainResult(model, config, labels, pop_mean, pop_std, {})
    result.metrics = evaluate(result, cache)
    return result


def predict(result: TrainResult, data: Prepared) -> dict[str, np.ndarray]:
    """Class predictions and de-standardised popularity."""
    with torch.no_grad():
        out = result.model.logits(data.parts, data.presence)
    return {
        "category": out["category"].argmax(dim=1).numpy(),
        "sentiment": out["sentiment"].argmax(dim=1).numpy(),
        "popularity": out["popularity"].numpy() * result.popularity_std + result.popularity_mean,
    }


def evaluate(result: TrainResult, cache: EmbeddingCache, split: int = 2) -> dict[str, Any]:
    """Macro-F1, per-class scores, confusion matrix, popularity Spearman/MAE, accuracy by
    missing-modality pattern, and macro-F1 with ``test_missing_rate`` of modalities dropped."""
    rows = np.flatnonzero(cache.split == split)
    data = prepare(cache, rows, result.config.modalities, result.labels)
    pred = predict(result, data)
    y = data.category.numpy()
    metrics: dict[str, Any] = {
        "test_posts": len(rows),
        "macro_f1": float(f1_score(y, pred["category"], average="macro")),
        "per_class_f1": dict(
            zip(
                result.labels,
                f1_score(
                    y, pred["category"], average=None, labels=range(len(result.labels))
                ).tolist(),
                strict=True,
            )
        ),
        "per_class_recall": dict(
            zip(
                result.labels,
                recall_score(
                    y,
                    pred["category"],
                    average=None,
                    labels=range(len(result.labels)),
                    zero_division=0,
                ).tolist(),
                strict=True,
            )
        ),
        "confusion": confusion_matrix(
            y, pred["category"], labels=range(len(result.labels))
        ).tolist(),
        "sentiment_macro_f1": float(
            f1_score(data.sentiment.numpy(), pred["sentiment"], average="macro")
        ),
    }
    known = data.popularity_known.numpy()
    if known.sum() > 2:
        truth = data.popularity.numpy()[known]
        metrics["popularity_spearman"] = float(
            spearmanr(truth, pred["popularity"][known]).statistic
        )
        metrics["popularity_mae"] = float(mean_absolute_error(truth, pred["popularity"][known]))
    patterns: dict[str, list[bool]] = {}
    for row, ok in zip(data.presence.numpy(), pred["category"] == y, strict=True):
        key = "+".join(m for m, p in zip(cache.modalities, row, strict=True) if p) or "none"
        patterns.setdefault(key, []).append(bool(ok))
    metrics["accuracy_by_pattern"] = {
        k: {"n": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(patterns.items())
    }
    generator = torch.Generator().manual_seed(result.config.seed + 1)
    scores = []
    for _ in range(10):  # average over random masks: one mask on a small test split is noisy
        presence = modality_dropout(data.presence, result.config.test_missing_rate, generator)
        degraded = replace(data, presence=presence)
        scores.append(float(f1_score(y, predict(result, degraded)["category"], average="macro")))
    metrics["macro_f1_missing"] = float(np.mean(scores))
    return metrics


def compare_imbalance(
    cache: EmbeddingCache, config: TrainConfig, ratio: float
) -> dict[str, dict[str, float]]:
    """Train once per imbalance method on a training split skewed ``ratio``:1 (most to
    least common class); returns minority-class recall and macro-F1 per method, measured
    on the untouched test split."""
    from encoders.training.data import skew_training_split

    skewed = skew_training_split(cache, ratio, config.seed)
    minority = sorted(set(cache.category.tolist()))[-1]
    recall, macro = {}, {}
    for method in IMBALANCE_METHODS:
        metrics = train(skewed, replace(config, imbalance=method), progress=False).metrics
        recall[method] = metrics["per_class_recall"][minority]
        macro[method] = metrics["macro_f1"]
    return {
        f"imbalance_{ratio:g}to1_minority_recall": recall,
        f"imbalance_{ratio:g}to1_macro_f1": macro,
    }


def export_trained_bundle(
    result: TrainResult, base_bundle: Path, out: Path, extra_metrics: dict[str, Any] | None = None
) -> Manifest:
    """Copy the encoder bundle, add the fusion model (exported and parity-checked), and
    write a manifest whose fusion entry, labels and metrics describe the trained model."""
    base = load_manifest(base_bundle)
    modalities = list(base.fusion.modalities)
    model = result.model
    if model.modalities != modalities:
        raise ValueError(f"model modalities {model.modalities} != bundle {modalities}")
    if modalities != ["text", "image", "audio", "video"]:
        raise ValueError(
            f"exporting a fusion model needs a text/image/audio/video bundle, not {modalities}"
        )
    dims = {m: base.encoders[m].dim for m in modalities}

    def sample(batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(batch)
        feed = {m: rng.normal(size=(batch, d)).astype(np.float32) for m, d in dims.items()}
        presence = (rng.random((batch, len(modalities))) > 0.4).astype(np.float32)
        presence[:, 0] = 1.0
        feed["presence"] = presence
        return feed

    class Serving(torch.nn.Module):
        def __init__(self, inner: FusionModel, mean: float, std: float) -> None:
            super().__init__()
            self.inner = inner
            self.mean, self.std = mean, std

        def forward(
            self,
            text: torch.Tensor,
            image: torch.Tensor,
            audio: torch.Tensor,
            video: torch.Tensor,
            presence: torch.Tensor,
        ) -> tuple[torch.Tensor, ...]:
            embedding, category, sentiment, popularity = self.inner(
                text, image, audio, video, presence
            )
            return embedding, category, sentiment, popularity * self.std + self.mean

    serving = Serving(model, result.popularity_mean, result.popularity_std).eval()
    outputs = ("post_embedding", "category_probs", "sentiment_probs", "popularity")
    spec = EncoderSpec(
        name=f"fusion-{result.config.strategy}",
        modality="fusion",
        dim=result.config.embed_dim,
        version=f"fusion-{result.config.strategy}",
        source="postpulse fusion model",
        export=ExportSpec(
            input_names=(*modalities, "presence"),
            output_names=outputs,
            dynamic_axes={
                **{m: {0: "batch"} for m in (*modalities, "presence")},
                **{o: {0: "batch"} for o in outputs},
            },
            atol=1e-4,
        ),
        build_module=lambda: serving,
        sample_inputs=sample,
    )
    out = out.resolve()
    staging = out.with_name(out.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(base_bundle, staging)
    (staging / MANIFEST).unlink()
    export_module(serving, spec, staging / "fusion" / "model.onnx")
    report = check_parity(serving, spec, staging / "fusion" / "model.onnx")
    files = {
        str(p.relative_to(staging)): sha256_file(p)
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    version_key = json.dumps({"files": files, "config": asdict(result.config)}, sort_keys=True)
    import hashlib

    manifest = base.model_copy(
        update={
            "bundle_version": hashlib.sha256(version_key.encode()).hexdigest()[:12],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fusion": FusionEntry(
                strategy=f"trained-{result.config.strategy}",
                modalities=modalities,
                dim=result.config.embed_dim,
                trained=True,
                description=f"Trained {result.config.strategy} fusion with category, sentiment and popularity heads "
                f"(parity max|diff| {max(report.max_abs_diff.values()):.2g}).",
                file="fusion/model.onnx",
            ),
            "labels": {"category": result.labels, "sentiment": SENTIMENTS},
            "metrics": {**result.metrics, **(extra_metrics or {})},
            "files": files,
        }
    )
    (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return manifest
