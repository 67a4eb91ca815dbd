"""The chaos suite's short form (``make chaos`` runs 10,000 posts): real tweets with
pictures, media and broken records through the durable broker, two posts workers and a
trends worker, while workers are SIGKILLed, added and removed, the broker restarts and
Milvus stops; a plain kafka-python consumer checks that nothing was lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import print_table, run_chaos

pytestmark = pytest.mark.integration


def test_chaos_short_form_loses_nothing(bundle_path: Path, tmp_path: Path) -> None:
    result = run_chaos(1200, bundle_path, tmp_path, milvus_outage_s=15, timeout_s=600)
    print_table(result)
    assert len(result["faults"]) == 7
    assert result["messages_without_outcome"] == 0, result["lost_examples"]
    assert result["messages_with_two_kinds_of_outcome"] == 0
    assert result["invalid_posts_analysed"] == 0
    assert result["valid_posts_dead_lettered"] == 0, result["valid_dead_letter_reasons"]
    assert result["milvus_matches_analysed_posts"], result["milvus_rows"]
    assert result["trend_topics_differing"] == 0, result["trend_differences"]
