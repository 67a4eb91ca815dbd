"""``postpulse dataset`` and ``postpulse train``: the offline workflow end to end."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from encoders.bundle import load_manifest
from encoders.training.baselines import tfidf_logistic_regression
from encoders.training.data import (
    EmbeddingCache,
    apply_engagement,
    build_cache,
    deduplicate,
    encoders_key,
    latest_engagement,
    read_posts,
)
from encoders.training.errors import CacheMismatchError
from encoders.training.report import write_report
from encoders.training.train import TrainConfig, compare_imbalance, export_trained_bundle, train


def build_dataset(
    inputs: list[Path],
    out: Path,
    bundle: Path,
    seed: int = 0,
    progress: bool = True,
    replayed: list[dict[str, Any]] | None = None,
    split_mode: str = "stratified",
    engagement: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Read posts (files, and posts replayed from Kafka), apply the latest engagement
    updates (``postpulse collect``'s engagement records), deduplicate, embed and split
    them; writes ``embeddings.npz`` and ``data_card.json``."""
    from encoders.serving import ServedBundle

    posts: list[dict[str, Any]] = list(replayed or [])
    for path in inputs:
        posts += read_posts(path)
    latest, invalid_updates = latest_engagement(engagement or [])
    posts, updated = apply_engagement(posts, latest)
    kept, dropped = deduplicate(posts)
    cache, card = build_cache(
        kept, ServedBundle(bundle), seed=seed, progress=progress, split_mode=split_mode
    )
    card["split_mode"] = split_mode
    card["replayed_posts"] = len(replayed or [])
    card["engagement_updates"] = {
        "posts_updated": updated,
        "records": len(engagement or []),
        "invalid": invalid_updates,
    }
    card["deduplicated"] = dropped
    card["inputs"] = [str(p) for p in inputs]
    card["synthetic"] = any(bool((p.get("labels") or {}).get("synthetic")) for p in kept)
    out.mkdir(parents=True, exist_ok=True)
    cache.save(out / "embeddings.npz")
    (out / "data_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def run_training(
    config: TrainConfig, compare: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train the configured model, compare alternatives, export the bundle, write the report."""
    cache = EmbeddingCache.load(Path(config.cache))
    manifest = load_manifest(Path(config.bundle))
    if cache.encoders_key != encoders_key(manifest):
        raise CacheMismatchError(
            f"{config.cache} was embedded with other encoders than {config.bundle}; rebuild it "
            "with 'postpulse dataset build --bundle ...'"
        )
    modalities = [
        m
        for m in config.modalities
        if m in cache.modalities and cache.presence[:, cache.modalities.index(m)].any()
    ]
    config = replace(config, modalities=modalities)
    started = time.monotonic()
    main = train(cache, config, progress=progress)
    main_seconds = time.monotonic() - started
    comparisons: dict[str, dict[str, float]] = {}
    multimodal = len(modalities) > 1
    if compare:
        quiet = {"progress": False}
        single = (
            {modalities[0]: main.metrics}  # one modality: the main model is the single one
            if not multimodal
            else {
                m: train(
                    cache, replace(config, modalities=[m], modality_dropout=0.0), **quiet
                ).metrics
                for m in modalities
            }
        )
        if "text" in single and cache.texts is not None and not config.multi_label:
            baseline = tfidf_logistic_regression(cache)
            comparisons["text_head_vs_tfidf"] = {
                "text head (fusion model, text only)": single["text"]["macro_f1"],
                f"TF-IDF + logistic regression (C={baseline['C']:g}, "
                f"class weight {baseline['class_weight']})": baseline["macro_f1"],
            }
    if compare and multimodal:
        comparisons["fusion_strategies"] = {
            s: train(cache, replace(config, strategy=s), **quiet).metrics["macro_f1"]
            for s in ("early", "intermediate", "late")
        }
        comparisons["single_modality"] = {m: v["macro_f1"] for m, v in single.items()}
        # the gap between the two is a few points: averaged over training seeds so that
        # seed noise does not decide it
        seeds = [config.seed + k for k in range(config.comparison_seeds)]
        with_dropout = [main.metrics] + [
            train(cache, replace(config, seed=s), **quiet).metrics for s in seeds[1:]
        ]
        without = [
            train(cache, replace(config, seed=s, modality_dropout=0.0), **quiet).metrics
            for s in seeds
        ]

        def average(runs: list[dict[str, Any]], key: str) -> float:
            return float(np.mean([r[key] for r in runs]))

        over = f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""
        dropped = f"{config.test_missing_rate:.0%} dropped"
        rate = f"{config.modality_dropout:g}"
        comparisons["missing_modalities"] = {
            f"modality dropout {rate}, all present{over}": average(with_dropout, "macro_f1"),
            f"modality dropout {rate}, {dropped}{over}": average(with_dropout, "macro_f1_missing"),
            f"no modality dropout, all present{over}": average(without, "macro_f1"),
            f"no modality dropout, {dropped}{over}": average(without, "macro_f1_missing"),
        }
    if compare and main.model.temporal is not None:
        mean = train(cache, replace(config, train_temporal=False), progress=False).metrics
        comparisons["video_temporal_model"] = {
            "mean pooling (untrained), accuracy on posts with video": mean["accuracy_with_video"],
            "attention pooling (trained), accuracy on posts with video": main.metrics[
                "accuracy_with_video"
            ],
        }
    if compare and config.distill_from:
        alone = train(cache, replace(config, distill_from=None), progress=False).metrics
        teacher = train(
            cache, replace(config, strategy=config.distill_from, distill_from=None), progress=False
        )
        comparisons["distillation"] = {
            f"teacher ({config.distill_from})": teacher.metrics["macro_f1"],
            f"student ({config.strategy}) alone": alone["macro_f1"],
            f"student ({config.strategy}) distilled": main.metrics["macro_f1"],
        }
    if config.imbalance_ratio:
        comparisons |= compare_imbalance(cache, config, config.imbalance_ratio)
    out = Path(config.out)
    card_path = Path(config.cache).with_name("data_card.json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else None
    manifest_out = export_trained_bundle(
        main, Path(config.bundle), out, {"comparisons": comparisons}
    )
    (out / "train_config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    report = write_report(
        out / "report",
        {**main.metrics, "test_missing_rate": config.test_missing_rate},
        main.labels,
        comparisons,
        card,
        synthetic=bool(card and card.get("synthetic")),
    )
    return {
        "bundle": str(out),
        "bundle_version": manifest_out.bundle_version,
        "report": str(report),
        "metrics": main.metrics,
        "comparisons": comparisons,
        "train_seconds": main_seconds,
    }
