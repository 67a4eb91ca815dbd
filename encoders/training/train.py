"""Training and evaluation of the fusion model on an embedding cache, and export of the
trained model into a bundle the worker serves (``postpulse train``)."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
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

from encoders.bundle import (
    MANIFEST,
    EncoderEntry,
    FusionEntry,
    Manifest,
    load_manifest,
    sha256_file,
)
from encoders.export import check_parity, export_module
from encoders.registry import EncoderSpec, ExportSpec
from encoders.training.data import LABEL_SEPARATOR, SENTIMENTS, EmbeddingCache, category_labels
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
    comparison_seeds: int = 3  # training seeds averaged in the modality-dropout comparison
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
    lexical: bool = True  # token-bag (TF-IDF weighted) input to the text branch
    select_on_validation: bool = True  # keep the epoch with the best validation macro-F1
    train_temporal: bool = True  # learn the video temporal model from cached frames
    multi_label: bool = False  # posts may have several categories (labels.category a list)

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
    category: torch.Tensor  # (n,) the primary (first) category
    category_multi: torch.Tensor  # (n, categories) multi-hot
    sentiment: torch.Tensor
    popularity: torch.Tensor
    popularity_known: torch.Tensor
    tokens: tuple[torch.Tensor, torch.Tensor] | None = None
    video: tuple[torch.Tensor, torch.Tensor] | None = None  # (row -> clip index, clips)

    def rows(self, b: torch.Tensor, presence: torch.Tensor) -> dict[str, Any]:
        """Model inputs of the rows ``b`` with the given presence mask."""
        tokens = None if self.tokens is None else (self.tokens[0][b], self.tokens[1][b])
        video = None
        if self.video is not None:
            index = self.video[0][b]
            video = (self.video[1][index.clamp(min=0)], index >= 0)
        return {
            "parts": [p[b] for p in self.parts],
            "presence": presence,
            "tokens": tokens,
            "video": video,
        }


def _token_bags(cache: EmbeddingCache, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    ids = cache.extra["text_token_ids"][rows]
    counts = cache.extra["text_token_counts"][rows]
    width = max(1, int((counts > 0).sum(axis=1).max(initial=0)))  # bags are left-packed
    return (
        torch.from_numpy(ids[:, :width].astype(np.int64)),
        torch.from_numpy(counts[:, :width].astype(np.float32)),
    )


def uses_lexical(cache: EmbeddingCache, config: TrainConfig) -> bool:
    """Whether the model gets the token-bag input (configured, and the cache has bags)."""
    return (
        config.lexical
        and "text" in config.modalities
        and "text_token_ids" in cache.extra
        and cache.text_vocab_size > 0
    )


def _multi_hot(categories: np.ndarray, labels: list[str]) -> torch.Tensor:
    out = torch.zeros((len(categories), len(labels)))
    for i, value in enumerate(categories):
        for c in str(value).split(LABEL_SEPARATOR):
            out[i, labels.index(c)] = 1.0
    return out


def uses_temporal(cache: EmbeddingCache, config: TrainConfig) -> bool:
    """Whether the video temporal model trains (configured, and the cache has frames)."""
    return (
        config.train_temporal
        and "video" in config.modalities
        and cache.video_frames is not None
        and "video_index" in cache.extra
    )


def prepare(
    cache: EmbeddingCache,
    rows: np.ndarray,
    modalities: list[str],
    labels: list[str],
    lexical: bool = False,
    temporal: bool = False,
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
        category=torch.tensor(
            [labels.index(str(c).split(LABEL_SEPARATOR)[0]) for c in cache.category[rows]],
            dtype=torch.long,
        ),
        category_multi=_multi_hot(cache.category[rows], labels),
        sentiment=torch.tensor(
            [SENTIMENTS.index(s) for s in cache.sentiment[rows]], dtype=torch.long
        ),
        popularity=torch.from_numpy(np.nan_to_num(pop).astype(np.float32)),
        popularity_known=torch.from_numpy(np.isfinite(pop)),
        tokens=_token_bags(cache, rows) if lexical else None,
        video=(
            (
                torch.from_numpy(cache.extra["video_index"][rows].astype(np.int64)),
                torch.from_numpy(cache.video_frames.astype(np.float32, copy=False)),
            )
            if temporal and cache.video_frames is not None
            else None
        ),
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


def _optimisers(model: FusionModel, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW for the dense weights; the token table's gradients are sparse (a batch
    touches a few hundred of its rows), so it gets SparseAdam and costs per row used."""
    if model.lexical is None:
        return [
            torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        ]
    table = model.lexical.table.weight
    dense = [p for p in model.parameters() if p is not table]
    return [
        torch.optim.AdamW(dense, lr=config.lr, weight_decay=config.weight_decay),
        torch.optim.SparseAdam([table], lr=config.lr),
    ]


def train(cache: EmbeddingCache, config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train one model on the cache's train split; evaluate on its test split. With
    ``distill_from`` a teacher of that strategy is trained first and the model also
    matches the teacher's softened category distribution (knowledge distillation)."""
    teacher_probs: torch.Tensor | None = None
    labels = category_labels(cache.category)
    multi = config.multi_label
    if not multi and any(LABEL_SEPARATOR in str(c) for c in cache.category):
        raise ValueError("some posts have several categories: set multi_label: true")
    if multi and (config.distill_from or config.imbalance == "focal"):
        raise ValueError("multi_label supports imbalance none/class_weighted/over/undersample")
    train_rows = np.flatnonzero(cache.split == 0)
    lexical = uses_lexical(cache, config)
    temporal = uses_temporal(cache, config)
    data = prepare(cache, train_rows, config.modalities, labels, lexical, temporal)
    if config.distill_from:
        teacher = train(
            cache, replace(config, strategy=config.distill_from, distill_from=None), progress=False
        )
        with torch.no_grad():
            everything = torch.arange(len(train_rows))
            logits = teacher.model.logits(**data.rows(everything, data.presence))["category"]
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
        lexical_vocab=cache.text_vocab_size if lexical else 0,
        temporal=temporal,
        multi_label=multi,
    )
    if model.lexical is not None and data.tokens is not None:
        model.lexical.fit_idf(*data.tokens)
    optimisers = _optimisers(model, config)
    y = data.category.numpy()
    counts = np.bincount(y, minlength=len(labels)).astype(np.float32)
    class_weight = None
    if config.imbalance in ("class_weighted", "focal"):
        class_weight = torch.from_numpy(len(y) / (len(labels) * np.maximum(counts, 1.0)))
    positives = data.category_multi.sum(dim=0)
    pos_weight = (  # multi-label, cost-sensitive: each label's negatives per positive
        (len(y) - positives) / positives.clamp(min=1.0)
        if multi and config.imbalance == "class_weighted"
        else None
    )
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    validation_rows = np.flatnonzero(cache.split == 1)
    validation = (
        prepare(cache, validation_rows, config.modalities, labels, lexical, temporal)
        if config.select_on_validation and len(validation_rows)
        else None
    )
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for _epoch in tqdm(range(config.epochs), desc=f"train {config.strategy}", disable=not progress):
        model.train()
        order = _sample_indices(y, config.imbalance, rng)
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            b = torch.from_numpy(order[start : start + config.batch_size])
            presence = modality_dropout(data.presence[b], config.modality_dropout, generator)
            out = model.logits(**data.rows(b, presence))
            if multi:
                loss = F.binary_cross_entropy_with_logits(
                    out["category"], data.category_multi[b], pos_weight=pos_weight
                )
            elif config.imbalance == "focal":
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
            targets = data.category_multi[b]  # clusters by category (all of a post's)
            loss = loss + config.embedding_weight * F.cross_entropy(
                out["embedding_logits"], targets / targets.sum(dim=1, keepdim=True)
            )
            known_b = data.popularity_known[b]
            if known_b.any():
                target = (data.popularity[b][known_b] - pop_mean) / pop_std
                loss = loss + config.popularity_weight * F.mse_loss(
                    out["popularity"][known_b], target
                )
            for optimiser in optimisers:
                optimiser.zero_grad()
            loss.backward()
            for optimiser in optimisers:
                optimiser.step()
        if validation is not None:
            model.eval()
            score = _macro_f1(model, validation)
            if best is None or score > best[0]:
                best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    result = TrainResult(model, config, labels, pop_mean, pop_std, {})
    result.metrics = evaluate(result, cache)
    return result


def decide_labels(scores: np.ndarray, multi_label: bool) -> np.ndarray:
    """Multi-hot decisions from category probabilities (or logits, ``multi_label`` uses
    sigmoid probabilities): the top category, and with ``multi_label`` every category
    over 0.5 too."""
    out = np.zeros(scores.shape, dtype=bool)
    out[np.arange(len(scores)), scores.argmax(axis=1)] = True
    if multi_label:
        out |= scores > 0.5
    return out


def _macro_f1(model: FusionModel, data: Prepared) -> float:
    with torch.no_grad():
        everything = torch.arange(len(data.category))
        logits = model.logits(**data.rows(everything, data.presence))["category"]
        scores = torch.sigmoid(logits) if model.multi_label else logits
    decided = decide_labels(scores.numpy(), model.multi_label)
    truth = data.category_multi.numpy().astype(bool)
    return float(f1_score(truth, decided, average="macro", zero_division=0))


def predict(result: TrainResult, data: Prepared) -> dict[str, np.ndarray]:
    """Class predictions and de-standardised popularity."""
    with torch.no_grad():
        everything = torch.arange(len(data.category))
        out = result.model.logits(**data.rows(everything, data.presence))
    multi = result.model.multi_label
    scores = (torch.sigmoid(out["category"]) if multi else out["category"]).numpy()
    return {
        "category": scores.argmax(axis=1),
        "category_multi": decide_labels(scores, multi),
        "sentiment": out["sentiment"].argmax(dim=1).numpy(),
        "popularity": out["popularity"].numpy() * result.popularity_std + result.popularity_mean,
    }


def evaluate(result: TrainResult, cache: EmbeddingCache, split: int = 2) -> dict[str, Any]:
    """Macro-F1, per-class scores, confusion matrix, popularity Spearman/MAE, accuracy by
    missing-modality pattern, and macro-F1 with ``test_missing_rate`` of modalities dropped."""
    rows = np.flatnonzero(cache.split == split)
    data = prepare(
        cache,
        rows,
        result.config.modalities,
        result.labels,
        result.model.lexical is not None,
        result.model.temporal is not None,
    )
    return score_predictions(
        lambda d: predict(result, d),
        data,
        result.labels,
        cache.modalities,
        result.config.test_missing_rate,
        result.config.seed,
        result.model.multi_label,
    )


def score_predictions(
    predict_fn: Callable[[Prepared], dict[str, np.ndarray]],
    data: Prepared,
    labels: list[str],
    modalities: list[str],
    test_missing_rate: float = 0.7,
    seed: int = 0,
    multi_label: bool = False,
) -> dict[str, Any]:
    """Every evaluation metric of a predictor (a trained PyTorch model or an exported
    bundle's ONNX fusion model) on one prepared split. Multi-label: F1 and recall per
    category over the multi-hot decisions; the confusion matrix and accuracies use the
    primary (first) category."""
    pred = predict_fn(data)
    y = data.category.numpy()
    truth_multi = data.category_multi.numpy().astype(bool)

    def macro_f1(p: dict[str, np.ndarray]) -> float:
        if multi_label:
            return float(
                f1_score(truth_multi, p["category_multi"], average="macro", zero_division=0)
            )
        return float(f1_score(y, p["category"], average="macro"))

    every = list(range(len(labels)))
    truth, decided = (truth_multi, pred["category_multi"]) if multi_label else (y, pred["category"])
    metrics: dict[str, Any] = {
        "test_posts": len(y),
        "multi_label": multi_label,
        "macro_f1": macro_f1(pred),
        "per_class_f1": dict(
            zip(
                labels,
                f1_score(truth, decided, average=None, labels=every, zero_division=0).tolist(),
                strict=True,
            )
        ),
        "per_class_recall": dict(
            zip(
                labels,
                recall_score(truth, decided, average=None, labels=every, zero_division=0).tolist(),
                strict=True,
            )
        ),
        "confusion": confusion_matrix(y, pred["category"], labels=every).tolist(),
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
        key = "+".join(m for m, p in zip(modalities, row, strict=True) if p) or "none"
        patterns.setdefault(key, []).append(bool(ok))
    metrics["accuracy_by_pattern"] = {
        k: {"n": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(patterns.items())
    }
    if "video" in modalities:
        with_video = data.presence.numpy()[:, modalities.index("video")] > 0
        if with_video.any():
            metrics["accuracy_with_video"] = float(np.mean((pred["category"] == y)[with_video]))
    generator = torch.Generator().manual_seed(seed + 1)
    scores = []
    for _ in range(10):  # average over random masks: one mask on a small test split is noisy
        presence = modality_dropout(data.presence, test_missing_rate, generator)
        degraded = replace(data, presence=presence)
        scores.append(macro_f1(predict_fn(degraded)))
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
    if config.multi_label:
        raise ValueError("the imbalance comparison needs single-label categories")
    minority = category_labels(cache.category)[-1]
    recall, macro = {}, {}
    for method in IMBALANCE_METHODS:
        metrics = train(skewed, replace(config, imbalance=method), progress=False).metrics
        name = f"{method} (chosen)" if method == config.imbalance else method
        recall[name] = metrics["per_class_recall"][minority]
        macro[name] = metrics["macro_f1"]
    return {
        f"imbalance_{ratio:g}to1_minority_recall": recall,
        f"imbalance_{ratio:g}to1_macro_f1": macro,
    }


def _export_temporal(temporal: torch.nn.Module, base: Manifest, staging: Path) -> EncoderEntry:
    """The trained video temporal model replaces the bundle's, through the checked export
    path (same names and shapes as the untrained one, so the worker runs it unchanged)."""
    from encoders.video import ATTENTION_POOLING

    entry = base.encoders["video"]
    spec = replace(ATTENTION_POOLING, version=f"{entry.name}@trained")
    temporal = temporal.eval()
    path = staging / entry.file
    export_module(temporal, spec, path)
    parity = check_parity(temporal, spec, path)
    return entry.model_copy(
        update={
            "version": spec.version,
            "source": "postpulse attention pooling, trained with the fusion model",
            "parity_max_abs_diff": parity.max_abs_diff,
        }
    )


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
    lexical = model.lexical is not None
    token_inputs = ("text_token_ids", "text_token_counts") if lexical else ()

    def sample(batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(batch)
        feed: dict[str, np.ndarray] = {
            m: rng.normal(size=(batch, d)).astype(np.float32) for m, d in dims.items()
        }
        presence = (rng.random((batch, len(modalities))) > 0.4).astype(np.float32)
        presence[:, 0] = 1.0
        feed["presence"] = presence
        if model.lexical is not None:
            vocab = model.lexical.table.num_embeddings
            feed["text_token_ids"] = rng.integers(0, vocab, size=(batch, 7), dtype=np.int64)
            feed["text_token_counts"] = rng.integers(0, 4, size=(batch, 7)).astype(np.float32)
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
            text_token_ids: torch.Tensor | None = None,
            text_token_counts: torch.Tensor | None = None,
        ) -> tuple[torch.Tensor, ...]:
            tokens = () if text_token_ids is None else (text_token_ids, text_token_counts)
            embedding, category, sentiment, popularity = self.inner(
                text, image, audio, video, presence, *tokens
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
            input_names=(*modalities, "presence", *token_inputs),
            output_names=outputs,
            dynamic_axes={
                **{m: {0: "batch"} for m in (*modalities, "presence")},
                **{t: {0: "batch", 1: "tokens"} for t in token_inputs},
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
    encoders = dict(base.encoders)
    if model.temporal is not None:
        encoders["video"] = _export_temporal(model.temporal, base, staging)
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
                multi_label=model.multi_label,
                description=f"Trained {result.config.strategy} fusion with category, sentiment and popularity heads "
                f"(parity max|diff| {max(report.max_abs_diff.values()):.2g}).",
                file="fusion/model.onnx",
            ),
            "labels": {"category": result.labels, "sentiment": SENTIMENTS},
            "metrics": {**result.metrics, **(extra_metrics or {})},
            "files": files,
            "encoders": encoders,
        }
    )
    (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return manifest


def evaluate_bundle(
    bundle: Path,
    cache: EmbeddingCache,
    split: int = 2,
    test_missing_rate: float = 0.7,
    seed: int = 0,
) -> tuple[dict[str, Any], list[str]]:
    """Score a trained bundle's exported fusion model (ONNX Runtime, exactly what the
    worker runs) on one split of an embedding cache; returns the metrics and labels."""
    from encoders.runtime import OnnxModel
    from encoders.serving import l2_normalize
    from encoders.training.data import encoders_key
    from encoders.training.errors import CacheMismatchError

    manifest = load_manifest(bundle)
    if not manifest.fusion.trained or manifest.fusion.file is None:
        raise ValueError(f"{bundle} has no trained fusion model to evaluate")
    if cache.encoders_key != encoders_key(manifest):
        raise CacheMismatchError(
            f"the cache was embedded with other encoders than {bundle}; rebuild it with "
            f"'postpulse dataset build --bundle {bundle}'"
        )
    if list(manifest.fusion.modalities) != cache.modalities:
        raise ValueError(
            f"bundle modalities {manifest.fusion.modalities} != cache {cache.modalities}"
        )
    labels = list(manifest.labels["category"])
    multi_label = manifest.fusion.multi_label
    rows = np.flatnonzero(cache.split == split)
    unknown = sorted(set(category_labels(cache.category[rows])) - set(labels))
    if unknown:
        raise ValueError(f"categories the bundle was not trained on: {unknown}")
    model = OnnxModel(bundle / manifest.fusion.file)
    lexical = "text_token_ids" in model.input_names
    data = prepare(cache, rows, cache.modalities, labels, lexical)
    if cache.video_frames is not None and "video_index" in cache.extra:
        # videos through the bundle's own temporal model, as the worker does
        temporal = OnnxModel(bundle / manifest.encoders["video"].file)
        index = cache.extra["video_index"][rows]
        has = np.flatnonzero(index >= 0)
        if len(has):
            frames = cache.video_frames[index[has]].astype(np.float32)
            mask = (np.abs(frames).sum(-1) > 0).astype(np.float32)
            pooled = l2_normalize(temporal.run({"frame_embeddings": frames, "frame_mask": mask})[0])
            video = data.parts[cache.modalities.index("video")]
            video[torch.from_numpy(has)] = torch.from_numpy(pooled.astype(np.float32))

    def predict_onnx(d: Prepared) -> dict[str, np.ndarray]:
        outputs: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(d.category), 1024):
            b = torch.arange(start, min(start + 1024, len(d.category)))
            inputs = d.rows(b, d.presence[b])
            feed = {m: x.numpy() for m, x in zip(cache.modalities, inputs["parts"], strict=True)}
            feed["presence"] = inputs["presence"].numpy()
            if lexical:
                feed["text_token_ids"] = inputs["tokens"][0].numpy()
                feed["text_token_counts"] = inputs["tokens"][1].numpy()
            for name, value in zip(model.output_names, model.run(feed), strict=True):
                outputs.setdefault(name, []).append(value)
        joined = {k: np.concatenate(v) for k, v in outputs.items()}
        probs = joined["category_probs"]
        return {
            "category": probs.argmax(axis=1),
            "category_multi": decide_labels(probs, multi_label),
            "sentiment": joined["sentiment_probs"].argmax(axis=1),
            "popularity": joined["popularity"].reshape(-1),
        }

    return score_predictions(
        predict_onnx, data, labels, cache.modalities, test_missing_rate, seed, multi_label
    ), labels
