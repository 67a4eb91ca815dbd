"""Classical baselines measured in the same run as the fusion model."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from encoders.training.data import EmbeddingCache

TFIDF_GRID_C = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def tfidf_logistic_regression(cache: EmbeddingCache) -> dict[str, Any]:
    """TF-IDF (word 1-2-grams, sublinear tf) + logistic regression on the posts' texts.

    Fitted on the train split; its regularisation ``C`` and class weighting are chosen on
    the validation split (the fusion model gets no such tuning, so the comparison leans
    towards the baseline); scored by category macro-F1 on the test split.
    """
    if cache.texts is None:
        raise ValueError(
            "the embedding cache has no texts; rebuild it with 'postpulse dataset build'"
        )
    texts = np.asarray(cache.texts, dtype=object)
    y = cache.category
    train, val, test = (cache.split == k for k in range(3))
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    x_train = vectorizer.fit_transform(texts[train])
    best: tuple[float, float, str | None] = (-1.0, 10.0, None)
    if val.any():
        x_val = vectorizer.transform(texts[val])
        for c in TFIDF_GRID_C:
            for weight in (None, "balanced"):
                model = LogisticRegression(C=c, class_weight=weight, max_iter=5000)
                model.fit(x_train, y[train])
                score = float(f1_score(y[val], model.predict(x_val), average="macro"))
                if score > best[0]:
                    best = (score, c, weight)
    model = LogisticRegression(C=best[1], class_weight=best[2], max_iter=5000)
    model.fit(x_train, y[train])
    predicted = model.predict(vectorizer.transform(texts[test]))
    return {
        "macro_f1": float(f1_score(y[test], predicted, average="macro")),
        "accuracy": float(np.mean(predicted == y[test])),
        "C": best[1],
        "class_weight": best[2] or "none",
        "vocabulary": len(vectorizer.vocabulary_),
    }
