"""Annotation round-trip: posts exported as Label Studio tasks, annotated (three
annotators, some disagreeing, some cancelling, some tasks left open) in Label Studio's
JSON export format, imported back, and built into a data set whose labels are the
annotators' majority — equal to the truth the posts were generated with."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoders.serving import ServedBundle
from encoders.training.data import build_cache, read_posts
from encoders.training.labelstudio import (
    import_annotations,
    margin,
    select_stratified,
    select_uncertain,
)
from encoders.training.synth import CLASSES
from streams.cli import _category_probabilities, main
from streams.settings import Settings

pytestmark = pytest.mark.integration


def choices(name: str, values: list[str]) -> dict[str, Any]:
    return {
        "id": f"r-{name}",
        "from_name": name,
        "to_name": "text",
        "type": "choices",
        "value": {"choices": values},
        "origin": "manual",
    }


def annotation(n: int, category: str, sentiment: str, cancelled: bool = False) -> dict[str, Any]:
    return {
        "id": n,
        "completed_by": n % 3 + 1,
        "result": []
        if cancelled
        else [choices("category", [category]), choices("sentiment", [sentiment])],
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": f"2026-11-29T10:{n % 60:02d}:00.000000Z",
        "updated_at": f"2026-11-29T10:{n % 60:02d}:00.000000Z",
        "lead_time": 4.2,
    }


@pytest.fixture(scope="module")
def synth_posts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ls") / "posts.jsonl"
    assert main(["dataset", "synth", "--posts", "48", "--seed", "5", "--out", str(out)]) == 0
    return out


def test_export_annotate_import_build_keeps_the_labels(
    synth_posts: Path, tmp_path: Path, bundle_path: Path, served_bundle: ServedBundle
) -> None:
    truth = {p["post_id"]: p["labels"] for p in read_posts(synth_posts)}
    tasks_path = tmp_path / "tasks.json"
    args = ["label", "export", "--input", str(synth_posts), "--n", "24", "--out", str(tasks_path)]
    args += ["--bundle", str(bundle_path)]
    for category in CLASSES:
        args += ["--category", category]
    assert main(args) == 0
    tasks = json.loads(tasks_path.read_text())
    assert len(tasks) == 24
    exported = [t["data"]["post"]["post_id"] for t in tasks]
    assert {truth[i]["category"] for i in exported} == set(CLASSES)  # every stratum
    assert all("labels" not in t["data"]["post"] for t in tasks)  # annotators label blind
    for task in tasks:
        media = {m["kind"] for m in task["data"]["post"]["media"]}
        for kind in ("image", "audio", "video"):
            assert task["data"][kind].startswith("data:") == (kind in media)
    config = ET.fromstring((tmp_path / "label_config.xml").read_text())
    controls = {c.get("name"): [x.get("value") for x in c] for c in config.iter("Choices")}
    assert controls == {"category": list(CLASSES), "sentiment": ["negative", "neutral", "positive"]}
    assert {t.get("value") for t in config if t.tag in ("Text", "Image", "Audio", "Video")} <= {
        "$text",
        "$image",
        "$audio",
        "$video",
    }

    # Label Studio's JSON export of the project after annotation
    wrong_category = {c: next(o for o in CLASSES if o != c) for c in CLASSES}
    exported_tasks = []
    for n, task in enumerate(tasks):
        labels = truth[task["data"]["post"]["post_id"]]
        right = (labels["category"], labels["sentiment"])
        wrong = (wrong_category[right[0]], "neutral" if right[1] != "neutral" else "positive")
        annotations = [annotation(3 * n, *right), annotation(3 * n + 1, *right)]
        if n % 4 == 0:
            annotations.append(annotation(3 * n + 2, *wrong))  # outvoted
        if n == 1:
            annotations = []  # nobody got to it
        if n == 2:
            annotations = [annotation(3 * n, *wrong, cancelled=True)]  # skipped only
        if n == 3:
            annotations.insert(0, annotation(3 * n + 2, *wrong, cancelled=True))
        exported_tasks.append(
            {
                "id": 100 + n,
                "data": task["data"],
                "annotations": annotations,
                "predictions": [],
                "meta": {},
                "created_at": "2026-11-29T09:00:00.000000Z",
                "project": 7,
            }
        )
    export_path = tmp_path / "project-7-at-2026-11-29.json"
    export_path.write_text(json.dumps(exported_tasks))
    labelled = tmp_path / "labelled.jsonl"
    assert main(["label", "import", str(export_path), "--out", str(labelled)]) == 0
    posts = read_posts(labelled)
    assert len(posts) == 22
    assert {p["post_id"] for p in posts} == set(exported) - {exported[1], exported[2]}
    for post in posts:
        assert post["labels"]["category"] == truth[post["post_id"]]["category"]
        assert post["labels"]["sentiment"] == truth[post["post_id"]]["sentiment"]
    original = {p["post_id"]: p for p in read_posts(synth_posts)}
    assert all(p["media"] == original[p["post_id"]]["media"] for p in posts)

    cache, card = build_cache(posts, served_bundle, progress=False)
    assert card["posts"] == 22 and card["skipped"] == {}
    for post_id, category, sentiment in zip(
        cache.post_ids, cache.category, cache.sentiment, strict=True
    ):
        assert category == truth[str(post_id)]["category"]
        assert sentiment == truth[str(post_id)]["sentiment"]


def test_uncertainty_export_picks_the_smallest_margins(
    synth_posts: Path, tmp_path: Path, bundle_path: Path
) -> None:
    posts = read_posts(synth_posts)[:30]
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps(p) + "\n" for p in posts))
    out = tmp_path / "tasks.json"
    args = ["label", "export", "--input", str(subset), "--n", "8", "--by", "uncertainty"]
    args += ["--predictions", "--out", str(out), "--bundle", str(bundle_path)]
    assert main(args) == 0
    tasks = json.loads(out.read_text())
    probs = _category_probabilities(posts, Settings(bundle_path=bundle_path))
    margins = {p["post_id"]: margin(pr) for p, pr in zip(posts, probs, strict=True) if pr}
    chosen = {t["data"]["post"]["post_id"] for t in tasks}
    assert len(chosen) == 8
    assert max(margins[i] for i in chosen) <= min(m for i, m in margins.items() if i not in chosen)
    prediction = tasks[0]["predictions"][0]
    assert prediction["result"][0]["from_name"] == "category"
    assert 0 < prediction["score"] <= 1


def test_selection_and_import_rules() -> None:
    posts = [{"labels": {"category": c}} for c in ["a"] * 90 + ["b"] * 9 + ["c"]]
    chosen = select_stratified(posts, 10, seed=1)
    counts = {c: sum(posts[i]["labels"]["category"] == c for i in chosen) for c in "abc"}
    assert sum(counts.values()) == 10 and counts["c"] == 1 and counts["a"] >= 8
    assert select_uncertain([{"x": 0.5, "y": 0.5}, None, {"x": 0.9, "y": 0.1}], 1) == [0]
    tie = {
        "data": {"post": {"post_id": "p1", "labels": {"split": "test"}}},
        "annotations": [
            annotation(1, "a", "negative") | {"updated_at": "2026-11-29T10:00:00Z"},
            annotation(2, "b", "negative") | {"updated_at": "2026-11-29T11:00:00Z"},
        ],
    }
    result = import_annotations([tie, {"data": {"text": "not ours"}}])
    assert result.posts[0]["labels"] == {
        "split": "test",
        "category": "b",  # a tie goes to the latest annotation
        "sentiment": "negative",
        "annotators": 2,
    }
    assert result.disagreements == 1 and result.skipped == {"not a postpulse task": 1}
    with pytest.raises(ValueError):
        import_annotations({"tasks": []})
    assert np.isclose(margin({"a": 0.7, "b": 0.2, "c": 0.1}), 0.5)
