"""The live sources against local servers that answer as the platforms document them:
Mastodon's streaming API (server-sent events: ``update``, ``status.update``,
``delete``, ``:thump`` heartbeats) and Bluesky's Jetstream (JSON over WebSocket,
replay from a ``cursor`` in microseconds, identity and account events). Each server
first answers 429 with ``Retry-After`` and closes the stream after its events, so the
client must back off and reconnect. No request leaves this machine."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streams.collect import CollectState, HttpClient, ListOutputs, MastodonStream, collect
from streams.collect.bluesky import REPLAY_MARGIN_US, Jetstream
from streams.collect.mastodon import SseParser
from tests.http_server import serve

pytestmark = pytest.mark.integration


def status(i: int, likes: int = 0) -> dict[str, Any]:
    return {
        "id": str(2000 + i),
        "created_at": f"2026-11-21T08:{i:02d}:00.000Z",
        "content": f"<p>live {i}</p>",
        "account": {"id": str(i % 3)},
        "favourites_count": likes,
        "reblogs_count": 0,
        "replies_count": 0,
        "media_attachments": [],
    }


LIVE = 12


def mastodon_events() -> list[tuple[str, str]]:
    events = [("update", json.dumps(status(i))) for i in range(LIVE)]
    events.insert(3, ("delete", "1999"))
    events.insert(5, ("status.update", json.dumps(status(2, likes=9))))
    events.insert(6, ("update", "{not json"))
    events.insert(8, ("update", json.dumps({"id": "2999", "created_at": "2026-11-21T08:00:00Z"})))
    events.insert(9, ("notification", "{}"))
    return events


class Recorder:
    def __init__(self) -> None:
        self.fail_next: list[int] = []
        self.requests: list[tuple[float, dict[str, str], str | None]] = []
        self.position = 0  # live events already published (a stream has no replay)
        self.timeline: list[tuple[float, dict[str, str]]] = []


@pytest.fixture
def mastodon() -> Iterator[tuple[str, Recorder]]:
    """Publishes each event once, to whichever stream is connected at that moment; the
    REST timeline serves the statuses as they are now (``min_id`` paging)."""
    recorder = Recorder()
    events = mastodon_events()
    current = {str(2000 + i): status(i, likes=9 if i == 2 else 0) for i in range(LIVE)}

    async def stream(request: web.Request) -> web.StreamResponse:
        recorder.requests.append(
            (time.monotonic(), dict(request.query), request.headers.get("Authorization"))
        )
        if recorder.fail_next:
            code = recorder.fail_next.pop(0)
            return web.Response(status=code, headers={"Retry-After": "1"} if code == 429 else {})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b":)\n\n")
        while recorder.position < len(events):
            n = recorder.position
            recorder.position += 1
            event, data = events[n]
            if n == 4:  # a JSON payload split over two data lines is one event
                cut = data.index(", ") + 1  # between two JSON members
                await response.write(
                    f"event: {event}\ndata: {data[:cut]}\ndata: {data[cut:]}\n\n".encode()
                )
            else:
                await response.write(f"event: {event}\ndata: {data}\n\n".encode())
            if n == 6:
                await response.write(b":thump\n\n")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        return response  # the server ends the stream: the client reconnects

    async def timeline(request: web.Request) -> web.Response:
        recorder.timeline.append((time.monotonic(), dict(request.query)))
        min_id = request.query.get("min_id", "0")
        limit = int(request.query.get("limit", "20"))
        newer = sorted(k for k in current if (len(k), k) > (len(min_id), min_id))[:limit]
        return web.json_response([current[k] for k in reversed(newer)])

    app = web.Application()
    app.router.add_get("/api/v1/streaming/hashtag", stream)
    app.router.add_get("/api/v1/timelines/tag/harbour", timeline)
    with serve(app, "127.0.0.1", _free_port()) as base:
        yield base, recorder


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stream_run(base: str, state: CollectState, max_posts: int) -> tuple[ListOutputs, Any]:
    outputs = ListOutputs()
    client = HttpClient(token="stream-token", backoff_s=0.1)
    source = MastodonStream(base, client, hashtag="harbour", page_size=4, page_wait_s=2.0)
    result = collect(source, state, outputs, max_posts=max_posts, max_seconds=30)
    return outputs, result


def test_mastodon_stream_posts_once_updates_and_dead_letters(
    mastodon: tuple[str, Recorder], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base, recorder = mastodon
    recorder.fail_next = [429]
    outputs, result = stream_run(base, CollectState(tmp_path / "s.json"), LIVE)
    ids = [p["post_id"] for p in outputs.posts]
    assert ids == [f"mastodon:{2000 + i}" for i in range(LIVE)]
    assert outputs.posts[4]["text"] == "live 4"  # the split event was reassembled
    assert [(u["post_id"], u["engagement"]["likes"]) for u in outputs.updates] == [
        ("mastodon:2002", 9)
    ]
    reasons = sorted(d["detail"].split(":")[0] for d in outputs.dead)
    assert reasons == ["JSONDecodeError", "ValueError"]  # bad JSON; a status with no account
    assert result.skipped == {"deleted": 1, "event notification": 1}
    (t0, _, _), (t1, query, auth) = recorder.requests[:2]
    assert t1 - t0 >= 1.0  # Retry-After honoured before reconnecting
    assert query == {"tag": "harbour"} and auth == "Bearer stream-token"
    assert "429" in caplog.text and "stream-token" not in caplog.text  # logged, token not


def test_mastodon_stream_restart_catches_up_without_duplicates(
    mastodon: tuple[str, Recorder], tmp_path: Path
) -> None:
    base, recorder = mastodon
    path = tmp_path / "s.json"
    first, _ = stream_run(base, CollectState.load(path), 5)
    last_id = CollectState.load(path).cursor["last_id"]
    recorder.position = len(mastodon_events())  # the rest is published while we are down
    assert recorder.timeline == []
    second, _ = stream_run(base, CollectState.load(path), LIVE - len(first.posts))
    ids = [p["post_id"] for p in first.posts + second.posts]
    assert sorted(ids) == sorted(f"mastodon:{2000 + i}" for i in range(LIVE))
    assert len(ids) == len(set(ids))
    assert recorder.timeline[0][1]["min_id"] == last_id  # caught up from the cursor
    assert CollectState.load(path).cursor["last_id"] == "2011"


def test_sse_parser_fields_comments_and_multiline_data() -> None:
    parser = SseParser()
    lines = [b": hello\n", b"event: update\r\n", b'data: {"a":\n', b"data: 1}\n", b"\n"]
    assert [parser.feed(line) for line in lines][-1] == ("update", '{"a":\n1}')
    assert parser.feed(b"data:x\n") is None and parser.feed(b"\n") == ("message", "x")


# --- Jetstream ------------------------------------------------------------------------------

T0 = 1_764_000_000_000_000
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


def jetstream_events() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for i in range(15):
        record: dict[str, Any] = {
            "$type": "app.bsky.feed.post",
            "createdAt": f"2026-11-25T09:{i:02d}:00.000Z",
            "langs": ["en"],
            "text": f"sky post {i}",
        }
        if i == 4:
            record["embed"] = {
                "$type": "app.bsky.embed.images",
                "images": [
                    {
                        "alt": "",
                        "image": {
                            "$type": "blob",
                            "ref": {"$link": "bafkreiabc"},
                            "mimeType": "image/jpeg",
                            "size": 1000,
                        },
                    }
                ],
            }
        events.append(
            {
                "did": DID,
                "time_us": T0 + i * 1_000_000,
                "kind": "commit",
                "commit": {
                    "rev": f"rev{i}",
                    "operation": "create",
                    "collection": "app.bsky.feed.post",
                    "rkey": f"3kpost{i:02d}",
                    "record": record,
                    "cid": f"bafyrei{i}",
                },
            }
        )
    events.insert(
        2,
        {"did": DID, "time_us": T0 + 1_500_000, "kind": "identity", "identity": {"did": DID}},
    )
    events.insert(
        6,
        {
            "did": DID,
            "time_us": T0 + 4_500_000,
            "kind": "commit",
            "commit": {
                "rev": "x",
                "operation": "delete",
                "collection": "app.bsky.feed.post",
                "rkey": "3kold",
            },
        },
    )
    bad = json.loads(json.dumps(events[9]))  # a create whose record lacks createdAt
    bad["time_us"] += 100
    bad["commit"]["rkey"] = "3kbad"
    del bad["commit"]["record"]["createdAt"]
    events.insert(10, bad)
    return events


@pytest.fixture
def jetstream() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    async def subscribe(request: web.Request) -> web.StreamResponse:
        recorder.requests.append((time.monotonic(), dict(request.query), None))
        if recorder.fail_next:
            return web.Response(status=recorder.fail_next.pop(0), headers={"Retry-After": "1"})
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        cursor = int(request.query.get("cursor", 0))
        for event in jetstream_events():
            if event["time_us"] >= cursor:
                await ws.send_str(json.dumps(event))
        await asyncio.sleep(0.05)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/subscribe", subscribe)
    with serve(app, "127.0.0.1", _free_port()) as base:
        yield base.replace("http://", "ws://"), recorder


def jet_run(endpoint: str, state: CollectState, max_posts: int) -> tuple[ListOutputs, Any]:
    outputs = ListOutputs()
    source = Jetstream(HttpClient(backoff_s=0.1), endpoint, page_size=3, page_wait_s=2.0)
    result = collect(source, state, outputs, max_posts=max_posts, max_seconds=30)
    return outputs, result


def test_jetstream_posts_once_with_media_and_dead_letters(
    jetstream: tuple[str, Recorder], tmp_path: Path
) -> None:
    endpoint, recorder = jetstream
    recorder.fail_next = [429]
    outputs, result = jet_run(endpoint, CollectState(tmp_path / "j.json"), 15)
    assert [p["post_id"] for p in outputs.posts] == [
        f"bluesky:{DID}/3kpost{i:02d}" for i in range(15)
    ]
    post = outputs.posts[4]
    assert post["media"] == [
        {
            "kind": "image",
            "uri": f"https://cdn.bsky.app/img/feed_fullsize/plain/{DID}/bafkreiabc@jpeg",
        }
    ]
    assert post["author_id"] == DID and post["lang"] == "en" and post["text"] == "sky post 4"
    assert [d["item"] for d in outputs.dead] == [json.dumps(jetstream_events()[10])]
    assert "createdAt" in outputs.dead[0]["detail"]
    assert result.skipped == {"identity event": 1, "deleted": 1}
    assert recorder.requests[1][0] - recorder.requests[0][0] >= 1.0
    assert recorder.requests[1][1] == {"wantedCollections": "app.bsky.feed.post"}


def test_jetstream_resumes_from_its_cursor(jetstream: tuple[str, Recorder], tmp_path: Path) -> None:
    endpoint, recorder = jetstream
    path = tmp_path / "j.json"
    first, _ = jet_run(endpoint, CollectState.load(path), 6)
    saved = CollectState.load(path).cursor["time_us"]
    reconnect = len(recorder.requests)
    second, result = jet_run(endpoint, CollectState.load(path), 15 - len(first.posts))
    ids = [p["post_id"] for p in first.posts + second.posts]
    assert sorted(ids) == sorted(f"bluesky:{DID}/3kpost{i:02d}" for i in range(15))
    assert len(ids) == len(set(ids))
    # the restart asked Jetstream to replay from the saved cursor, less the margin...
    assert int(recorder.requests[reconnect][1]["cursor"]) == saved - REPLAY_MARGIN_US
    # ...so the events in the margin came again and were recognised
    assert result.duplicates >= 1
