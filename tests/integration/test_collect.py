"""``postpulse collect mastodon`` against a local server that answers as the Mastodon API
documents: paginated timelines with ``Link`` headers, rate-limit headers, a 429 with
``Retry-After``, a 503, a malformed status, a reblog and a status repeated across pages.
No request leaves this machine."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kafka import KafkaConsumer

from streams.broker import LocalBroker
from streams.cli import main
from streams.collect import (
    CollectState,
    HttpClient,
    ListOutputs,
    MastodonTimeline,
    collect,
    html_to_text,
)
from streams.settings import LOCAL_BROKER_PROFILE, Settings

pytestmark = pytest.mark.integration

STATUSES = 23  # ids 1000..1022, newest first; pages of 5


def status(i: int) -> dict[str, Any]:
    return {
        "id": str(1000 + i),
        "created_at": f"2026-11-20T10:{i:02d}:00.000Z",
        "content": f"<p>Post number {i} about <a href='x'>#harbour</a></p><p>second &amp; last</p>",
        "language": "en",
        "account": {"id": str(70 + i % 4), "acct": f"user{i % 4}"},
        "favourites_count": i,
        "reblogs_count": i % 3,
        "replies_count": 1,
        "media_attachments": (
            [{"type": "image", "url": f"https://files.example/{i}.jpg"}] if i % 5 == 0 else []
        ),
        "reblog": None,
    }


class MastodonStub:
    """Serves /api/v1/timelines/tag/harbour newest first, 5 per page, ``max_id`` paging."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, str, str | None]] = []
        self.fail_next: list[int] = []  # statuses to answer the next requests with
        statuses = [status(i) for i in reversed(range(STATUSES))]
        statuses.insert(7, {"id": "9999", "content": "no account, no date"})  # malformed
        reblogged = status(STATUSES - 1)  # a reblog of a status already on the timeline
        statuses.insert(
            12,
            {
                "id": "8888",
                "created_at": "2026-11-20T11:00:00Z",
                "account": {"id": "5"},
                "reblog": reblogged,
            },
        )
        self.statuses = statuses

    def like(self, i: int, more: int) -> None:
        status = next(s for s in self.statuses if s["id"] == str(i))
        status["favourites_count"] += more

    def page(self, max_id: str | None) -> tuple[list[dict[str, Any]], str | None]:
        start = 0
        if max_id is not None:
            start = next(i for i, s in enumerate(self.statuses) if s["id"] == max_id) + 1
        items = self.statuses[start : start + 5]
        more = start + 5 < len(self.statuses)
        return items, (items[-1]["id"] if items and more else None)


@pytest.fixture
def server() -> Iterator[tuple[str, MastodonStub]]:
    stub = MastodonStub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            stub.requests.append((time.monotonic(), url.path, self.headers.get("Authorization")))
            if stub.fail_next:
                code = stub.fail_next.pop(0)
                self.send_response(code)
                if code == 429:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                return
            if url.path != "/api/v1/timelines/tag/harbour":
                self.send_error(404)
                return
            query = parse_qs(url.query)
            items, last = stub.page(query.get("max_id", [None])[0])
            body = json.dumps(items).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-RateLimit-Limit", "300")
            self.send_header("X-RateLimit-Remaining", "250")
            if last is not None:
                base = f"http://127.0.0.1:{self.server.server_address[1]}{url.path}"
                self.send_header(
                    "Link",
                    f'<{base}?limit=5&max_id={last}>; rel="next", '
                    f'<{base}?limit=5&min_id=2000>; rel="prev"',
                )
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", stub
    finally:
        httpd.shutdown()


def run(
    base: str, state: CollectState, max_posts: int | None = None, token: str = ""
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], HttpClient]:
    outputs = ListOutputs()
    client = HttpClient(token=token, backoff_s=0.2)
    source = MastodonTimeline(base, client, hashtag="harbour", limit=5)
    collect(source, state, outputs, max_posts)
    assert outputs.updates == []  # nothing changed between pages
    return outputs.posts, outputs.dead, client


def collect_args(base: str, tmp_path: Path, *more: str) -> list[str]:
    """``postpulse collect mastodon`` on the stub's hashtag timeline."""
    return [
        "collect",
        "mastodon",
        "--instance",
        base,
        "--hashtag",
        "#harbour",
        "--state",
        str(tmp_path / "state.json"),
        *more,
    ]


def test_every_post_once_with_its_engagement_and_the_malformed_one_dead_lettered(
    server: tuple[str, MastodonStub], tmp_path: Path
) -> None:
    base, stub = server
    posts, dead, _ = run(base, CollectState(tmp_path / "state.json"), token="secret-token")
    ids = [p["post_id"] for p in posts]
    assert sorted(ids) == sorted(f"mastodon:{1000 + i}" for i in range(STATUSES))
    assert len(ids) == len(set(ids))  # the reblog of a collected status is not a second post
    first = next(p for p in posts if p["post_id"] == "mastodon:1010")
    assert first["text"] == "Post number 10 about #harbour\n\nsecond & last"
    assert first["engagement"] == {"likes": 10, "shares": 1, "comments": 1}
    assert first["media"] == [{"kind": "image", "uri": "https://files.example/10.jpg"}]
    assert first["author_id"] == "72" and first["lang"] == "en"
    assert [d["item"]["id"] for d in dead] == ["9999"]
    assert "created_at" in dead[0]["detail"] and dead[0]["reason"] == "malformed_item"
    assert all(auth == "Bearer secret-token" for _, _, auth in stub.requests)


def test_a_restart_resumes_from_the_cursor_without_duplicates(
    server: tuple[str, MastodonStub], tmp_path: Path
) -> None:
    base, stub = server
    state_file = tmp_path / "state.json"
    first, _, _ = run(base, CollectState.load(state_file), max_posts=8)
    assert 8 <= len(first) < STATUSES
    requests_before = len(stub.requests)
    second, _, _ = run(base, CollectState.load(state_file))  # a new process, same state
    ids = [p["post_id"] for p in first + second]
    assert sorted(ids) == sorted(f"mastodon:{1000 + i}" for i in range(STATUSES))
    assert len(ids) == len(set(ids))
    pages = (STATUSES + 2 + 4) // 5
    assert len(stub.requests) == pages  # no page fetched twice
    assert requests_before < pages
    third, _, _ = run(base, CollectState.load(state_file))  # exhausted: nothing new
    assert third == [] and len(stub.requests) == pages


def test_a_rewalk_sends_changed_engagement_only(
    server: tuple[str, MastodonStub], tmp_path: Path
) -> None:
    base, stub = server
    state_file = tmp_path / "state.json"
    first, _, _ = run(base, CollectState.load(state_file))
    assert len(first) == STATUSES
    stub.like(1003, 7)
    stub.like(1020, 1)
    state = CollectState.load(state_file)
    state.cursor, state.done = {}, False  # what --from-start does
    outputs = ListOutputs()
    result = collect(
        MastodonTimeline(base, HttpClient(), hashtag="harbour", limit=5), state, outputs
    )
    assert outputs.posts == []
    assert {u["post_id"]: u["engagement"]["likes"] for u in outputs.updates} == {
        "mastodon:1003": 10,
        "mastodon:1020": 21,
    }
    assert result.engagement_updates == 2 and result.duplicates == STATUSES + 1 - 2


def test_429_is_waited_out_and_5xx_retried(
    server: tuple[str, MastodonStub], tmp_path: Path
) -> None:
    base, stub = server
    stub.fail_next = [429, 503, 502]
    posts, _, client = run(base, CollectState(tmp_path / "s.json"), max_posts=1)
    assert posts  # it got through
    times = [t for t, _, _ in stub.requests]
    assert times[1] - times[0] >= 1.0  # Retry-After: 1 was honoured
    assert client.waited_s >= 1.0 + 1.0  # 429's second, 503 (no header: back-off), 502


def test_the_cli_appends_jsonl_and_dead_letters(
    server: tuple[str, MastodonStub], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = server
    out = tmp_path / "posts.jsonl"
    args = collect_args(base, tmp_path, "--out", str(out))
    assert main(args) == 0
    assert ": 23 new posts" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == STATUSES
    assert len(out.with_suffix(".dlq.jsonl").read_text().splitlines()) == 1
    assert main(args) == 0
    assert ": 0 new posts" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == STATUSES


def test_html_to_text() -> None:
    assert html_to_text("<p>a<br/>b</p><p>c &lt;3</p>") == "a\nb\n\nc <3"


def test_the_cli_publishes_to_the_posts_topic_keyed_by_post_id(
    server: tuple[str, MastodonStub],
    tmp_path: Path,
    broker: LocalBroker,
    settings_for,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, stub = server
    settings: Settings = settings_for(broker, prefix="collect")
    monkeypatch.setenv("POSTPULSE_TOPIC_POSTS", settings.topic_posts)
    monkeypatch.setenv("POSTPULSE_TOPIC_DLQ", settings.topic_dlq)
    monkeypatch.setenv("POSTPULSE_TOPIC_ENGAGEMENT", f"{settings.topic_posts}.engagement")
    args = collect_args(base, tmp_path, "--broker", broker.url)
    assert main(args) == 0
    stub.like(1005, 40)  # counts move after collection; a re-walk reports them
    assert main([*args, "--from-start"]) == 0
    consumer = KafkaConsumer(
        settings.topic_posts,
        settings.topic_dlq,
        f"{settings.topic_posts}.engagement",
        bootstrap_servers=[broker.bootstrap],
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        **LOCAL_BROKER_PROFILE.kafka_consumer,
    )
    try:
        records = list(consumer)
    finally:
        consumer.close()
    posts = [r for r in records if r.topic == settings.topic_posts]
    assert sorted(r.key.decode() for r in posts) == sorted(
        f"mastodon:{1000 + i}" for i in range(STATUSES)
    )
    assert all(json.loads(r.value)["post_id"] == r.key.decode() for r in posts)
    dead = [json.loads(r.value) for r in records if r.topic == settings.topic_dlq]
    assert [d["item"]["id"] for d in dead] == ["9999", "9999"]  # once per walk
    updates = [r for r in records if r.topic == f"{settings.topic_posts}.engagement"]
    assert [r.key for r in updates] == [b"mastodon:1005"]
    assert json.loads(updates[0].value)["engagement"]["likes"] == 45
