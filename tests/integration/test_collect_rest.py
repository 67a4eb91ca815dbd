"""Bluesky's author feed and Reddit's subreddit listings against local servers that
answer as the platforms document them: cursor / ``after`` pagination, their rate-limit
headers (``RateLimit-*`` with an epoch reset; ``X-Ratelimit-*`` with a reset in
seconds), 429s, reposts, deleted and malformed items. No request leaves this machine."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streams.cli import main
from streams.collect import CollectError, CollectState, HttpClient, ListOutputs, collect
from streams.collect.bluesky import BlueskyAuthorFeed
from streams.collect.reddit import RedditListing
from tests.http_server import serve

pytestmark = pytest.mark.integration

DID = "did:plc:z72i7hdynmk6r22z27h6tvur"
AGENT = "linux:org.postpulse.tests:0.1 (by /u/postpulse_bot)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self) -> None:
        self.requests: list[tuple[float, dict[str, str], dict[str, str]]] = []
        self.fail_next: list[tuple[int, dict[str, str]]] = []
        self.exhaust_on: set[int] = set()  # answer numbers whose window is spent

    def record(self, request: web.Request) -> web.Response | None:
        self.requests.append((time.monotonic(), dict(request.query), dict(request.headers)))
        if self.fail_next:
            status, headers = self.fail_next.pop(0)
            return web.Response(status=status, headers=headers)
        return None


# --- Bluesky author feed ----------------------------------------------------------------


def feed_item(i: int) -> dict[str, Any]:
    return {
        "post": {
            "uri": f"at://{DID}/app.bsky.feed.post/3kfeed{i:02d}",
            "cid": f"bafyreicid{i}",
            "author": {"did": DID, "handle": "harbour.bsky.social"},
            "record": {
                "$type": "app.bsky.feed.post",
                "createdAt": f"2026-11-26T12:{i:02d}:00.000Z",
                "langs": ["en"],
                "text": f"from the harbour {i}",
            },
            "embed": (
                {
                    "$type": "app.bsky.embed.images#view",
                    "images": [
                        {
                            "thumb": f"https://cdn.bsky.app/img/feed_thumbnail/plain/{DID}/b{i}@jpeg",
                            "fullsize": f"https://cdn.bsky.app/img/feed_fullsize/plain/{DID}/b{i}@jpeg",
                            "alt": "",
                        }
                    ],
                }
                if i % 4 == 0
                else None
            ),
            "replyCount": 1,
            "repostCount": i,
            "likeCount": 10 * i,
            "quoteCount": 2,
            "indexedAt": f"2026-11-26T12:{i:02d}:01.000Z",
        }
    }


FEED_POSTS = 11


def feed() -> list[dict[str, Any]]:
    items = [feed_item(i) for i in reversed(range(FEED_POSTS))]
    repost = feed_item(50)
    repost["post"]["author"]["did"] = "did:plc:someoneelse"
    repost["post"]["uri"] = "at://did:plc:someoneelse/app.bsky.feed.post/3kother"
    repost["reason"] = {"$type": "app.bsky.feed.defs#reasonRepost", "by": {"did": DID}}
    items.insert(3, repost)
    items.insert(6, {"post": {"uri": f"at://{DID}/app.bsky.feed.post/3kbroken", "cid": "x"}})
    return items


@pytest.fixture
def bluesky() -> Iterator[tuple[str, Server]]:
    server = Server()
    items = feed()

    async def author_feed(request: web.Request) -> web.Response:
        failed = server.record(request)
        if failed is not None:
            return failed
        assert request.query["actor"] == "harbour.bsky.social"
        start = int(request.query.get("cursor", "0"))
        limit = int(request.query["limit"])
        page = items[start : start + limit]
        body: dict[str, Any] = {"feed": page}
        if start + limit < len(items):
            body["cursor"] = str(start + limit)
        spent = len(server.requests) in server.exhaust_on
        headers = {
            "RateLimit-Limit": "3000",
            "RateLimit-Remaining": "0" if spent else "2990",
            "RateLimit-Reset": str(int(time.time()) + 2),
            "RateLimit-Policy": "3000;w=300",
        }
        return web.json_response(body, headers=headers)

    app = web.Application()
    app.router.add_get("/xrpc/app.bsky.feed.getAuthorFeed", author_feed)
    with serve(app, "127.0.0.1", _free_port()) as base:
        yield base, server


def feed_run(
    base: str, state: CollectState, max_posts: int | None = None
) -> tuple[ListOutputs, Any, HttpClient]:
    outputs = ListOutputs()
    client = HttpClient(backoff_s=0.1)
    result = collect(
        BlueskyAuthorFeed("@harbour.bsky.social", client, appview=base, limit=4),
        state,
        outputs,
        max_posts,
    )
    return outputs, result, client


def test_author_feed_posts_engagement_and_rate_limits(
    bluesky: tuple[str, Server], tmp_path: Path
) -> None:
    base, server = bluesky
    server.fail_next = [
        (429, {"RateLimit-Remaining": "0", "RateLimit-Reset": str(int(time.time()) + 2)})
    ]
    server.exhaust_on = {2}
    outputs, result, client = feed_run(base, CollectState(tmp_path / "b.json"))
    assert sorted(p["post_id"] for p in outputs.posts) == sorted(
        f"bluesky:{DID}/3kfeed{i:02d}" for i in range(FEED_POSTS)
    )
    post = next(p for p in outputs.posts if p["post_id"].endswith("3kfeed08"))
    assert post["engagement"] == {"likes": 80, "shares": 8 + 2, "comments": 1}
    assert post["media"] == [
        {"kind": "image", "uri": f"https://cdn.bsky.app/img/feed_fullsize/plain/{DID}/b8@jpeg"}
    ]
    assert post["created_at"] == "2026-11-26T12:08:00.000Z" and post["lang"] == "en"
    assert result.skipped == {"repost": 1}
    assert [d["item"]["post"]["uri"].rsplit("/", 1)[1] for d in outputs.dead] == ["3kbroken"]
    # the 429 waited for its reset; the spent window (answer 2) was waited out too
    # (epoch-second resets: +2 s means at least 1 s from now)
    assert server.requests[1][0] - server.requests[0][0] >= 1.0
    assert server.requests[2][0] - server.requests[1][0] >= 1.0
    assert client.waited_s >= 2.0


def test_author_feed_resumes_from_its_cursor(bluesky: tuple[str, Server], tmp_path: Path) -> None:
    base, server = bluesky
    path = tmp_path / "b.json"
    first, _, _ = feed_run(base, CollectState.load(path), max_posts=4)
    assert 4 <= len(first.posts) < FEED_POSTS
    cursors = [q.get("cursor") for _, q, _ in server.requests]
    second, _, _ = feed_run(base, CollectState.load(path))
    ids = [p["post_id"] for p in first.posts + second.posts]
    assert len(ids) == len(set(ids)) == FEED_POSTS
    resumed = [q.get("cursor") for _, q, _ in server.requests[len(cursors) :]]
    assert resumed[0] is not None and resumed[0] not in cursors  # no page read twice


# --- Reddit ------------------------------------------------------------------------------


def link(i: int, **extra: Any) -> dict[str, Any]:
    data = {
        "id": f"1h{i:03d}",
        "name": f"t3_1h{i:03d}",
        "title": f"Harbour thread {i}",
        "selftext": f"body {i}" if i % 2 else "",
        "author": f"sailor{i}",
        "author_fullname": f"t2_s{i}",
        "subreddit": "harbour",
        "created_utc": 1_764_000_000.0 + 60 * i,
        "score": 5 * i,
        "num_comments": i,
        "num_crossposts": i % 3,
        "view_count": None,
        "removed_by_category": None,
        "is_video": False,
        "permalink": f"/r/harbour/comments/1h{i:03d}/thread/",
    }
    data.update(extra)
    return {"kind": "t3", "data": data}


REDDIT_POSTS = 14


def listing() -> list[dict[str, Any]]:
    children = [link(i) for i in reversed(range(REDDIT_POSTS))]
    children[1] = link(REDDIT_POSTS - 2, post_hint="image", url="https://i.redd.it/abc.jpg")
    children[2] = link(
        REDDIT_POSTS - 3,
        is_video=True,
        secure_media={"reddit_video": {"fallback_url": "https://v.redd.it/xyz/DASH_720.mp4"}},
    )
    children[3] = link(
        REDDIT_POSTS - 4,
        is_gallery=True,
        gallery_data={"items": [{"media_id": "m1"}, {"media_id": "m2"}]},
        media_metadata={
            "m1": {"e": "Image", "s": {"u": "https://i.redd.it/m1.jpg"}},
            "m2": {"e": "Image", "s": {"u": "https://i.redd.it/m2.png"}},
        },
    )
    deleted = link(90, author="[deleted]", selftext="[deleted]", removed_by_category="deleted")
    children.insert(5, deleted)
    children.insert(8, {"kind": "t1", "data": {"id": "c1", "body": "a comment"}})
    bad = link(91)
    del bad["data"]["title"]
    children.insert(9, bad)
    return children


@pytest.fixture
def reddit() -> Iterator[tuple[str, Server]]:
    server = Server()
    children = listing()

    async def new(request: web.Request) -> web.Response:
        failed = server.record(request)
        if failed is not None:
            return failed
        if request.headers.get("User-Agent") != AGENT:
            return web.Response(status=429, text="Too Many Requests (no user agent)")
        after = request.query.get("after")
        start = (
            0
            if after is None
            else next(n + 1 for n, c in enumerate(children) if c["data"].get("name") == after)
        )
        limit = int(request.query["limit"])
        page = children[start : start + limit]
        more = start + limit < len(children)
        body = {
            "kind": "Listing",
            "data": {
                "after": page[-1]["data"].get("name") if more else None,
                "before": None,
                "children": page,
            },
        }
        spent = len(server.requests) in server.exhaust_on
        headers = {
            "X-Ratelimit-Used": "99" if spent else "3",
            "X-Ratelimit-Remaining": "0.0" if spent else "96.0",
            "X-Ratelimit-Reset": "1",
        }
        return web.json_response(body, headers=headers)

    app = web.Application()
    app.router.add_get("/r/harbour/new.json", new)
    with serve(app, "127.0.0.1", _free_port()) as base:
        yield base, server


def reddit_run(
    base: str, state: CollectState, max_posts: int | None = None
) -> tuple[ListOutputs, Any]:
    outputs = ListOutputs()
    client = HttpClient(user_agent=AGENT, backoff_s=0.1)
    source = RedditListing("r/harbour", client, base=base, limit=5)
    return outputs, collect(source, state, outputs, max_posts)


def test_reddit_listing_media_engagement_and_limits(
    reddit: tuple[str, Server], tmp_path: Path
) -> None:
    base, server = reddit
    server.fail_next = [(429, {"Retry-After": "1"}), (502, {})]
    server.exhaust_on = {3}
    outputs, result = reddit_run(base, CollectState(tmp_path / "r.json"))
    assert sorted(p["post_id"] for p in outputs.posts) == sorted(
        f"reddit:t3_1h{i:03d}" for i in range(REDDIT_POSTS)
    )
    by_id = {p["post_id"]: p for p in outputs.posts}
    assert by_id["reddit:t3_1h012"]["media"] == [
        {"kind": "image", "uri": "https://i.redd.it/abc.jpg"}
    ]
    assert by_id["reddit:t3_1h011"]["media"] == [
        {"kind": "video", "uri": "https://v.redd.it/xyz/DASH_720.mp4"}
    ]
    assert [m["uri"] for m in by_id["reddit:t3_1h010"]["media"]] == [
        "https://i.redd.it/m1.jpg",
        "https://i.redd.it/m2.png",
    ]
    seven = by_id["reddit:t3_1h007"]
    assert seven["text"] == "Harbour thread 7\n\nbody 7" and seven["author_id"] == "t2_s7"
    assert seven["engagement"] == {"likes": 35, "comments": 7, "shares": 1, "views": 0}
    assert seven["created_at"] == (1_764_000_000 + 420) * 1000
    assert result.skipped == {"deleted": 1}
    details = sorted(d["detail"] for d in outputs.dead)
    assert details == [
        "ValueError: a listing child must be a link object (kind t3)",
        "missing field 'title'",
    ]
    times = [t for t, _, _ in server.requests]
    assert times[1] - times[0] >= 1.0  # Retry-After
    assert times[3] - times[2] >= 0.9  # the third answer spent the window: its reset
    assert all(h["User-Agent"] == AGENT for _, _, h in server.requests)


def test_reddit_resumes_from_after(reddit: tuple[str, Server], tmp_path: Path) -> None:
    base, server = reddit
    path = tmp_path / "r.json"
    first, _ = reddit_run(base, CollectState.load(path), max_posts=3)
    before = len(server.requests)
    saved = CollectState.load(path).cursor["after"]
    second, _ = reddit_run(base, CollectState.load(path))
    ids = [p["post_id"] for p in first.posts + second.posts]
    assert len(ids) == len(set(ids)) == REDDIT_POSTS
    afters = [q.get("after") for _, q, _ in server.requests]
    assert afters[before] == saved  # the restart continued from the saved cursor
    assert len(afters) == len(set(afters))  # no page requested twice


def test_reddit_requires_a_descriptive_user_agent(
    reddit: tuple[str, Server], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, server = reddit
    with pytest.raises(CollectError, match="User-Agent"):
        RedditListing("harbour", HttpClient(user_agent="python-urllib/3.11"))
    args = ["collect", "reddit", "--subreddit", "harbour", "--base", base]
    args += ["--state", str(tmp_path / "r.json"), "--out", str(tmp_path / "r.jsonl")]
    assert main(args) == 2
    assert "User-Agent" in capsys.readouterr().err and server.requests == []
    assert main([*args, "--user-agent", AGENT]) == 0
    assert f": {REDDIT_POSTS} new posts" in capsys.readouterr().out
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == REDDIT_POSTS
    assert len((tmp_path / "r.dlq.jsonl").read_text().splitlines()) == 2
