"""How the text encoder cuts a batch into runs of similar token length (pad less)."""

from __future__ import annotations

from itertools import combinations, pairwise

from hypothesis import given
from hypothesis import strategies as st

from encoders.text import ATTENTION_WIDTH, RUN_COST_TOKENS, length_runs


def _cost(lengths: list[int], runs: list[tuple[int, int]]) -> float:
    return sum(
        RUN_COST_TOKENS
        + (end - start) * lengths[end - 1] * (1 + lengths[end - 1] / ATTENTION_WIDTH)
        for start, end in runs
    )


def _cheapest_by_enumeration(lengths: list[int], max_rows: int) -> float:
    n = len(lengths)
    best = float("inf")
    for k in range(n):
        for inner in combinations(range(1, n), k):
            edges = [0, *inner, n]
            runs = list(pairwise(edges))
            if all(end - start <= max_rows for start, end in runs):
                best = min(best, _cost(lengths, runs))
    return best


@given(
    st.lists(st.integers(min_value=2, max_value=256), min_size=1, max_size=9),
    st.integers(min_value=1, max_value=9),
)
def test_runs_cover_the_batch_in_order_and_cost_the_least(lengths: list[int], rows: int) -> None:
    lengths.sort()
    runs = length_runs(lengths, rows)
    assert runs[0][0] == 0 and runs[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in pairwise(runs))
    assert all(0 < end - start <= rows for start, end in runs)
    assert abs(_cost(lengths, runs) - _cheapest_by_enumeration(lengths, rows)) < 1e-6


def test_one_long_text_gets_a_run_of_its_own_and_equal_texts_share_one() -> None:
    assert length_runs([12] * 31 + [256], 32) == [(0, 31), (31, 32)]
    assert length_runs([20] * 32, 32) == [(0, 32)]
    assert len(length_runs([20] * 40, 32)) == 2  # equal texts: as few runs as fit


def test_an_empty_batch_has_no_runs() -> None:
    assert length_runs([], 32) == []
