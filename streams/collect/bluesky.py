"""Bluesky: the public firehose through Jetstream (JSON over WebSocket, replayable from a
``cursor`` in microseconds) and an account's posts through the AppView's
``app.bsky.feed.getAuthorFeed`` (with like, repost, reply and quote counts)."""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.parse
from typing import Any

import aiohttp

from streams.collect.core import CollectError, HttpClient, Page, Skip, parse_json
from streams.collect.streaming import LoopSource

POST_COLLECTION = "app.bsky.feed.post"
CDN = "https://cdn.bsky.app"
PUBLIC_APPVIEW = "https://public.api.bsky.app"
JETSTREAM = "wss://jetstream2.us-east.bsky.network"
PDS = "https://bsky.social"
# Jetstream replays from a cursor; going back a little covers events in flight at the
# crash (their ids are deduplicated), as Jetstream's documentation recommends.
REPLAY_MARGIN_US = 2_000_000


def _post_id(did: str, rkey: str) -> str:
    return f"bluesky:{did}/{rkey}"


def _blob_link(blob: Any) -> str:
    ref = blob["ref"]
    return str(ref["$link"] if isinstance(ref, dict) else ref)


def record_media(did: str, embed: Any) -> list[dict[str, str]]:
    """Media references of a post record's embed (images through the Bluesky CDN,
    videos as repository blobs)."""
    if not isinstance(embed, dict):
        return []
    kind = embed.get("$type", "")
    if kind == "app.bsky.embed.recordWithMedia":
        return record_media(did, embed.get("media"))
    if kind == "app.bsky.embed.images":
        return [
            {
                "kind": "image",
                "uri": f"{CDN}/img/feed_fullsize/plain/{did}/{_blob_link(i['image'])}@jpeg",
            }
            for i in embed.get("images", [])
        ]
    if kind == "app.bsky.embed.video":
        return [{"kind": "video", "uri": _video_blob(did, _blob_link(embed["video"]))}]
    return []


def view_media(did: str, embed: Any) -> list[dict[str, str]]:
    """Media of a post *view* (the AppView's hydrated embed: CDN URLs given)."""
    if not isinstance(embed, dict):
        return []
    kind = embed.get("$type", "")
    if kind == "app.bsky.embed.recordWithMedia#view":
        return view_media(did, embed.get("media"))
    if kind == "app.bsky.embed.images#view":
        return [{"kind": "image", "uri": i["fullsize"]} for i in embed.get("images", [])]
    if kind == "app.bsky.embed.video#view":
        return [{"kind": "video", "uri": _video_blob(did, str(embed["cid"]))}]
    return []


def _video_blob(did: str, cid: str) -> str:
    """The MP4 blob itself (the CDN serves videos only as HLS playlists, which the media
    decoder does not read), from the repository host most accounts live on."""
    query = urllib.parse.urlencode({"did": did, "cid": cid})
    return f"{PDS}/xrpc/com.atproto.sync.getBlob?{query}"


def _langs(record: dict[str, Any]) -> dict[str, str]:
    langs = record.get("langs")
    return {"lang": str(langs[0])} if isinstance(langs, list) and langs else {}


class Jetstream(LoopSource):
    """Posts from Jetstream's ``/subscribe?wantedCollections=app.bsky.feed.post``.
    The cursor is the ``time_us`` of the last event of a page; a restart reconnects with
    it (less a small margin) and Jetstream replays what was missed."""

    def __init__(
        self,
        client: HttpClient,
        endpoint: str = JETSTREAM,
        page_size: int = 100,
        page_wait_s: float = 5.0,
    ) -> None:
        super().__init__(client, page_size, page_wait_s)
        self.endpoint = endpoint.rstrip("/")
        self.name = f"bluesky:jetstream:{urllib.parse.urlsplit(self.endpoint).netloc}"
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.last_time_us: int | None = None

    def url(self, time_us: int | None) -> str:
        query = {"wantedCollections": POST_COLLECTION}
        if time_us is not None:
            query["cursor"] = str(max(0, time_us - REPLAY_MARGIN_US))
        return f"{self.endpoint}/subscribe?{urllib.parse.urlencode(query)}"

    def page(self, cursor: dict[str, Any]) -> Page:
        if self.last_time_us is None and cursor.get("time_us") is not None:
            self.last_time_us = int(cursor["time_us"])
        return self.run(self._page())

    async def _page(self) -> Page:
        items: list[Any] = []
        loop = asyncio.get_running_loop()
        end = self.deadline()
        while len(items) < self.page_size and (left := end - loop.time()) > 0:
            if self._ws is None:
                url = self.url(self.last_time_us)
                self._ws = await self.with_retries(url, functools.partial(self._connect, url))
            try:
                message = await asyncio.wait_for(self._ws.receive(), left)
            except TimeoutError:
                break
            if message.type == aiohttp.WSMsgType.TEXT:
                items.append(message.data)
                try:
                    time_us = json.loads(message.data).get("time_us")
                    if isinstance(time_us, int):
                        self.last_time_us = max(self.last_time_us or 0, time_us)
                except (ValueError, AttributeError):
                    pass
            elif message.type == aiohttp.WSMsgType.BINARY:
                items.append(message.data.decode("utf-8", "replace"))
            else:  # closed or failed: reconnect from the cursor, politely
                await self._ws.close()
                self._ws = None
                self.reconnects += 1
                await self.sleep(self.client.backoff_s)
        return Page(items, {"time_us": self.last_time_us})

    async def _connect(self, url: str) -> aiohttp.ClientWebSocketResponse:
        session = await self.session()
        return await session.ws_connect(url, heartbeat=30.0)

    def to_post(self, item: Any) -> dict[str, Any]:
        event = json.loads(item)
        if not isinstance(event, dict):
            raise ValueError("an event must be an object")
        if event.get("kind") != "commit":
            raise Skip(f"{event.get('kind')} event")
        did, commit = event["did"], event["commit"]
        if commit.get("collection") != POST_COLLECTION:
            raise Skip(f"{commit.get('collection')} record")
        if commit.get("operation") == "delete":
            raise Skip("deleted")
        record = commit["record"]
        return {
            "post_id": _post_id(did, commit["rkey"]),
            "platform": "bluesky",
            "author_id": did,
            "created_at": record["createdAt"],
            "text": str(record.get("text", "")),
            **_langs(record),
            "media": record_media(did, record.get("embed")),
        }

    async def _close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        await super()._close()


class BlueskyAuthorFeed:
    """An account's posts, newest first (``GET /xrpc/app.bsky.feed.getAuthorFeed``,
    paginated by ``cursor``); reposts by the account are skipped (they are other
    accounts' posts)."""

    def __init__(
        self, actor: str, client: HttpClient, appview: str = PUBLIC_APPVIEW, limit: int = 50
    ) -> None:
        self.actor = actor.lstrip("@")
        self.client = client
        self.appview = appview.rstrip("/")
        self.limit = limit
        self.name = f"bluesky:{self.actor}"

    def page(self, cursor: dict[str, Any]) -> Page:
        query = {"actor": self.actor, "limit": str(self.limit), "filter": "posts_no_replies"}
        if cursor.get("cursor"):
            query["cursor"] = cursor["cursor"]
        url = f"{self.appview}/xrpc/app.bsky.feed.getAuthorFeed?{urllib.parse.urlencode(query)}"
        doc = parse_json(self.client.get(url), self.name)
        if not isinstance(doc, dict) or not isinstance(doc.get("feed"), list):
            raise CollectError(f"{self.name}: expected an object with a 'feed' list")
        following = doc.get("cursor")
        return Page(doc["feed"], {"cursor": following} if following and doc["feed"] else None)

    def to_post(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise ValueError(f"a feed item must be an object, not {type(item).__name__}")
        reason = item.get("reason")
        if isinstance(reason, dict) and "Repost" in str(reason.get("$type", "")):
            raise Skip("repost")
        view = item["post"]
        did = view["author"]["did"]
        if not str(view["uri"]).startswith(f"at://{did}/{POST_COLLECTION}/"):
            raise ValueError(f"unexpected post uri {view['uri']!r}")
        rkey = str(view["uri"]).rsplit("/", 1)[1]
        record = view["record"]
        return {
            "post_id": _post_id(did, rkey),
            "platform": "bluesky",
            "author_id": did,
            "created_at": record["createdAt"],
            "text": str(record.get("text", "")),
            **_langs(record),
            "media": view_media(did, view.get("embed")),
            "engagement": {
                "likes": int(view.get("likeCount") or 0),
                "shares": int(view.get("repostCount") or 0) + int(view.get("quoteCount") or 0),
                "comments": int(view.get("replyCount") or 0),
            },
        }

    def close(self) -> None:
        return None
