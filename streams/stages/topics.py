"""The topics of a post: its predicted category, its hashtags, its key phrases, and the
emerging topic (an online cluster of fused embeddings) it belongs to when no category
explains it.

:class:`TopicExtractor` is the pipeline's ``topics`` stage: analysed posts in, trend
events out (published to the trend-events topic and counted by the trends agent).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from encoders.text import normalize_social
from streams.stages.analyse import AnalysedPost
from streams.stages.heavy_hitters import SpaceSaving
from streams.stages.trends import TrendEvent, category_topic, extract_hashtags, trend_events

log = logging.getLogger(__name__)
_WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)
_TOKEN = re.compile(r"#?[^\W\d_]+(?:'[^\W\d_]+)?|\S", re.UNICODE)
MAX_PHRASES_PER_POST = 3
STOPWORDS = frozenset(
    """
    the and for are but not you all any can had her was one our out day get has him his
    how man new now old see two way who boy did its let put say she too use that with
    have this will your from they know want been good much some time very when come here
    just like long make many more only over such take than them well were what into
    look also back after first even because these give most about there their would
    could should which where while those every being other again still today really
    http user yeah okay just got its it's off per via amp
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def post_terms(text: str) -> list[str]:
    """Distinct content words of a post (normalised like the encoders' input), hashtags
    as words, stop words and URL/mention placeholders left out."""
    words = _WORD.findall(normalize_social(text).casefold())
    words += [tag[1:] for tag in extract_hashtags(text)]
    return list(dict.fromkeys(w for w in words if w not in STOPWORDS))


def key_phrases(text: str, limit: int = MAX_PHRASES_PER_POST) -> list[str]:
    """A post's key phrases, as topic ids ``phrase:...``: runs of two or three content
    words between stop words, punctuation and hashtags (RAKE-style candidates),
    normalised like the encoders' input and case-folded, first ``limit`` in text order."""
    runs: list[list[str]] = []
    run: list[str] = []
    for token in [*_TOKEN.findall(normalize_social(text).casefold()), "."]:
        if token.startswith("#") or token in STOPWORDS or len(token) < 3 or not token[0].isalpha():
            if len(run) >= 2:
                runs.append(run)
            run = []
        else:
            run.append(token)
    phrases = list(dict.fromkeys("phrase:" + " ".join(r[:3]) for r in runs))
    return phrases[:limit]


@dataclass
class _Cluster:
    centroid: np.ndarray
    posts: int = 0
    terms: Counter[str] = field(default_factory=Counter)
    name: str | None = None
    last_seen: int = 0


@dataclass(frozen=True)
class EmergingConfig:
    """Online clustering of posts that no category explains."""

    similarity: float = 0.8
    min_support: int = 5
    max_clusters: int = 256
    max_category_prob: float = 0.5
    name_terms: int = 3
    term_capacity: int = 20_000


class EmergingTopics:
    """Leader clustering over unit-norm fused embeddings: a post joins the most similar
    cluster above ``similarity`` or starts one. A cluster that reaches ``min_support``
    posts becomes a topic named by its most typical terms (frequent in the cluster, rare
    among all clustered posts, as TF-IDF) and keeps that name. Memory is bounded: at most
    ``max_clusters`` clusters (the least recently joined unnamed one goes first) and a
    space-saving counter of document frequencies."""

    def __init__(self, config: EmergingConfig | None = None) -> None:
        self.config = config or EmergingConfig()
        self.clusters: list[_Cluster] = []
        # row k holds clusters[k].centroid (each centroid is a view of its row) and
        # _norms[k] its norm: a post is compared with every cluster in one product,
        # without stacking the centroids again for each post
        self._centroids: np.ndarray | None = None
        self._norms = np.zeros(self.config.max_clusters, dtype=np.float32)
        self.document_frequency: SpaceSaving[str] = SpaceSaving(self.config.term_capacity)
        self.documents = 0
        self._clock = 0

    def assign(self, embedding: np.ndarray, terms: list[str]) -> str | None:
        """The emerging topic id (``emerging:...``) of a post, once its cluster is big
        enough to be one; None before that."""
        self._clock += 1
        self.documents += 1
        for term in terms:
            self.document_frequency.offer(term)
        vector = embedding.astype(np.float32)
        norm = float(np.linalg.norm(vector))
        if norm == 0 or not terms:
            return None
        vector = vector / norm
        best, best_sim = -1, -1.0
        if self.clusters:
            sims = self._similarities(vector)
            best = int(np.argmax(sims))
            best_sim = float(sims[best])
        if best < 0 or best_sim < self.config.similarity:
            best = self._new_cluster(vector.shape[0])
        self._join(best, vector, terms)
        return self.clusters[best].name

    def _similarities(self, vector: np.ndarray) -> np.ndarray:
        """Cosine of the unit ``vector`` to each cluster's centroid, in cluster order."""
        assert self._centroids is not None
        n = len(self.clusters)
        return np.asarray(self._centroids[:n] @ vector / np.maximum(self._norms[:n], 1e-12))

    def _join(self, k: int, vector: np.ndarray, terms: list[str]) -> None:
        best = self.clusters[k]
        best.centroid += vector
        self._norms[k] = np.linalg.norm(best.centroid)
        best.posts += 1
        best.last_seen = self._clock
        best.terms.update(terms)
        if len(best.terms) > 512:  # keep the cluster's vocabulary bounded
            best.terms = Counter(dict(best.terms.most_common(256)))
        if best.name is None and best.posts >= self.config.min_support:
            best.name = self._name(best)

    def _new_cluster(self, dim: int) -> int:
        """The slot of a new, empty cluster: the next free one, or that of the least
        recently joined unnamed cluster (any cluster when all are named)."""
        if self._centroids is None:
            self._centroids = np.zeros((self.config.max_clusters, dim), dtype=np.float32)
        elif self._centroids.shape[1] != dim:
            raise ValueError(f"a {dim}-d embedding; the clusters are {self._centroids.shape[1]}-d")
        if len(self.clusters) >= self.config.max_clusters:
            # by position: comparing clusters by value compares their numpy centroids
            candidates = [k for k, c in enumerate(self.clusters) if c.name is None]
            candidates = candidates or list(range(len(self.clusters)))
            slot = min(candidates, key=lambda k: self.clusters[k].last_seen)
        else:
            slot = len(self.clusters)
            self.clusters.append(_Cluster(self._centroids[slot]))
        self._centroids[slot] = 0.0
        self._norms[slot] = 0.0
        self.clusters[slot] = _Cluster(self._centroids[slot])
        return slot

    def _name(self, cluster: _Cluster) -> str | None:
        scored = []
        for term, tf in cluster.terms.items():
            if tf < 2:
                continue
            df = self.document_frequency.counters.get(term)
            # a word in nearly every post (idf ~ 0) names nothing
            idf = math.log((self.documents + 1) / ((df.count if df else 0) + 1))
            if idf > 0.1:
                scored.append((-(tf / cluster.posts) * idf, term))
        if not scored:
            return None
        words = [term for _, term in sorted(scored)[: self.config.name_terms]]
        return "emerging:" + " ".join(words)


class TopicExtractor:
    """The ``topics`` stage: trend events for each analysed post."""

    name = "topics"

    def __init__(self, emerging: EmergingTopics | None = None) -> None:
        self.emerging = emerging or EmergingTopics()

    def basic_topics(self, post: AnalysedPost) -> list[str]:
        """The topics that come straight from the analysis and the text: the category
        and the hashtags."""
        analysis = post.analysis
        topics = [category_topic(analysis.category)] if analysis.category else []
        return topics + extract_hashtags(post.decoded.validated.post.text or "")

    def derived_topics(self, post: AnalysedPost) -> list[str]:
        """Key phrases and the emerging topic (clustering) of one post."""
        analysis = post.analysis
        text = post.decoded.validated.post.text or ""
        topics = key_phrases(text)
        best = max(analysis.category_probs.values(), default=0.0) if analysis.category else 0.0
        if best < self.emerging.config.max_category_prob and text:
            emerging = self.emerging.assign(post.embedding, post_terms(text))
            if emerging:
                topics.append(emerging)
        return topics

    def topics_of(self, post: AnalysedPost) -> list[str]:
        """Topic ids of one post: category, hashtags, key phrases, emerging topic."""
        return self.basic_topics(post) + self.derived_topics(post)

    def __call__(self, batch: list[AnalysedPost]) -> TopicEvents:
        """Trend events of a batch. A post whose derived topics raise still counts its
        category and hashtags; the error is counted and logged with the post id."""
        result = TopicEvents()
        for post in batch:
            envelope = post.decoded.validated.envelope
            if envelope.partition is None or envelope.offset is None:
                continue  # not from a topic (no position to deduplicate by): not counted
            a = post.analysis
            try:
                topics = self.basic_topics(post)
            except Exception:
                log.exception("topics of post %s: category and hashtags failed", a.post_id)
                result.errors += 1
                continue
            try:
                topics += self.derived_topics(post)
            except Exception:
                log.exception("topics of post %s: phrases/emerging topic failed", a.post_id)
                result.errors += 1
            result.events += trend_events(
                a.post_id, a.created_at_ms, a.sentiment, topics, envelope.partition, envelope.offset
            )
        return result


@dataclass
class TopicEvents:
    """A batch's trend events and how many posts' topic extraction raised."""

    events: list[TrendEvent] = field(default_factory=list)
    errors: int = 0
