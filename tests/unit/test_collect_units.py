"""The collector's parts that need no server: rate-limit header forms, redaction, the
state file (and its older format), engagement updates and skips in the collect loop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from streams.collect import CollectState, HttpClient, ListOutputs, Page, Skip, collect, redact
from streams.collect.core import reset_wait, retry_after


def test_reset_wait_reads_each_platforms_form() -> None:
    now = time.time()
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 30))
    assert 28 <= reset_wait({"x-ratelimit-reset": iso}) <= 31  # Mastodon: ISO 8601
    assert 28 <= reset_wait({"ratelimit-reset": str(int(now) + 30)}) <= 31  # Bluesky: epoch
    assert reset_wait({"x-ratelimit-reset": "42"}) == 42  # Reddit: seconds from now
    assert reset_wait({"x-ratelimit-reset": "soon"}) == 0 and reset_wait({}) == 0
    assert retry_after({"retry-after": "7"}) == 7 and retry_after({}) is None


def test_a_spent_window_waits_whatever_the_header_spelling() -> None:
    waits: list[float] = []
    client = HttpClient(sleep=waits.append)
    client.respect_limits({"x-ratelimit-remaining": "0.0", "x-ratelimit-reset": "3"})  # Reddit
    client.respect_limits({"ratelimit-remaining": "0", "ratelimit-reset": "3"})
    client.respect_limits({"x-ratelimit-remaining": "12", "x-ratelimit-reset": "3"})
    assert waits == [3.0, 3.0] and client.waited_s == 6.0


def test_redact_hides_credentials_in_urls() -> None:
    url = redact("https://h.example/api?access_token=abc&limit=5&auth=x")
    assert "abc" not in url and "limit=5" in url and "auth=%2A%2A%2A" in url


def test_state_reads_the_older_id_list_and_bounds_itself(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"cursor": {"next": "u"}, "seen": ["a", "b"], "done": False}))
    state = CollectState.load(path)
    assert list(state.seen) == ["a", "b"] and state.seen["a"] is None
    state.remember("c", [1, 0, 0, 0])
    state.save()
    again = CollectState.load(path)
    assert again.seen["c"] == [1, 0, 0, 0] and again.cursor == {"next": "u"}


class Pages:
    """A source of fixed pages (the code around the sources under test)."""

    name = "fixed"

    def __init__(self, pages: list[list[Any]]) -> None:
        self.pages = pages
        self.closed = False

    def page(self, cursor: dict[str, Any]) -> Page:
        n = int(cursor.get("n", 0))
        return Page(self.pages[n], {"n": n + 1} if n + 1 < len(self.pages) else None)

    def to_post(self, item: Any) -> dict[str, Any]:
        if item == "deleted":
            raise Skip("deleted")
        post_id, likes = item
        return {
            "post_id": post_id,
            "platform": "t",
            "author_id": "a",
            "created_at": 1_700_000_000_000,
            "text": "x",
            "engagement": {"likes": likes},
        }

    def close(self) -> None:
        self.closed = True


def test_collect_updates_engagement_counts_skips_and_closes(tmp_path: Path) -> None:
    source = Pages([[("p1", 1), ("p2", 1)], ["deleted", ("p1", 1), ("p1", 4)], [("bad id!", 0)]])
    outputs = ListOutputs()
    result = collect(source, CollectState(tmp_path / "s.json"), outputs)
    assert [p["post_id"] for p in outputs.posts] == ["p1", "p2"]
    assert [(u["post_id"], u["engagement"]["likes"]) for u in outputs.updates] == [("p1", 4)]
    assert result.duplicates == 1 and result.skipped == {"deleted": 1}
    assert result.dead_letters == 1 and "post_id" in outputs.dead[0]["detail"]
    assert source.closed and result.pages == 3
    assert "1 engagement updates" in result.summary()


@pytest.mark.parametrize("max_posts", [1, 2])
def test_collect_stops_at_the_page_that_reaches_max_posts(tmp_path: Path, max_posts: int) -> None:
    source = Pages([[("p1", 0), ("p2", 0)], [("p3", 0)]])
    state = CollectState(tmp_path / "s.json")
    result = collect(source, state, ListOutputs(), max_posts=max_posts)
    assert result.pages == 1 and state.cursor == {"n": 1} and not state.done
