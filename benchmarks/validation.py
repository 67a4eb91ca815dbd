"""What issue 15's validation costs on the hot path: the validate stage on real election
tweets, with the sink checks (lone surrogates, nesting depth, created_at range, UTF-8
bytes of platform), against the same messages parsed and model-validated only (the
stage before those checks). Same messages, same process, one variable changed."""

from __future__ import annotations

import json
import time
from typing import Any

from encoders.training.corpora import load_corpus
from streams.records import Envelope, Post
from streams.stages.validate import PostValidator, ValidationLimits


def _best_of(repeats: int, run: Any) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def bench_validation(count: int = 3000, repeats: int = 5) -> dict[str, Any]:
    """Messages/s of the full validate stage vs. parse + model validation alone."""
    tweets = load_corpus("election-tweets-2016", limit=count, seed=1)
    envelopes = [
        Envelope(value=json.dumps(t).encode(), partition=0, offset=i) for i, t in enumerate(tweets)
    ]
    validator = PostValidator(ValidationLimits())

    def full() -> None:
        for env in envelopes:
            validator(env)

    def bare() -> None:
        for env in envelopes:
            Post.model_validate(json.loads(env.value))

    with_checks, without = _best_of(repeats, full), _best_of(repeats, bare)
    return {
        "messages": len(envelopes),
        "validate_stage_per_s": round(len(envelopes) / with_checks),
        "parse_and_model_only_per_s": round(len(envelopes) / without),
        "time_ratio": round(with_checks / without, 3),
    }


if __name__ == "__main__":
    print(json.dumps(bench_validation(), indent=1))
