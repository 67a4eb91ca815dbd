"""The chaos suite's short form (``make chaos`` is the long one): 1,200 real posts
(election tweets, some with pictures, video or audio, some broken) through the durable
broker, two posts workers and a trends worker while seven faults are injected — a posts
worker SIGKILLed, a third added and removed again, the broker restarted, Milvus stopped,
the other posts worker and the trends worker SIGKILLed. An independent kafka-python
consumer and pymilvus check the contract: nothing lost, nothing with two kinds of
outcome, Milvus holding exactly the analysed posts, trend counts equal to a clean
replay's."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import print_table, run_chaos

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1500)
def test_nothing_is_lost_while_everything_fails(bundle_path: Path, tmp_path: Path) -> None:
    result = run_chaos(1200, bundle_path, tmp_path, milvus_outage_s=15, timeout_s=600)
    print_table(result)
    assert [f["name"] for f in result["faults"]] == [
        "kill posts worker a",
        "add a posts worker",
        "restart the broker",
        "stop Milvus",
        "kill posts worker b",
        "remove a posts worker",
        "kill the trends worker",
    ]
    assert result["messages_without_outcome"] == 0, result["lost_examples"]
    assert result["messages_with_two_kinds_of_outcome"] == 0
    assert result["invalid_posts_analysed"] == 0
    # a valid post may only be dead-lettered by its own media (the av samples carry
    # real, decodable media, so none should be)
    assert result["valid_posts_dead_lettered"] == 0, result["valid_dead_letter_reasons"]
    assert result["milvus_rows"] == result["valid_posts"]
    assert result["milvus_matches_analysed_posts"]
    assert result["trend_topics_compared"] > 100
    # the trend counts equal a clean replay's; if not, the diagnosis says whether the
    # missing posts' trend events never reached the topic or were not counted
    assert result["trend_topics_differing"] == 0, (
        result["trend_differences"],
        result["trend_diagnosis"],
    )
