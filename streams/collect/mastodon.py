"""Mastodon: public and hashtag timelines (REST, ``Link``-header pagination) and the
streaming API (server-sent events), as the Mastodon API documents them."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import urllib.parse
from typing import Any

import aiohttp

from streams.collect.core import (
    CollectError,
    HttpClient,
    Page,
    Skip,
    next_link,
    parse_json,
)
from streams.collect.streaming import LoopSource

MEDIA_KINDS = {"image": "image", "video": "video", "gifv": "video", "audio": "audio"}


def _instance_name(instance: str, hashtag: str | None) -> str:
    host = urllib.parse.urlsplit(instance).netloc
    return f"mastodon:{host}" + (f":#{hashtag}" if hashtag else "")


class MastodonTimeline:
    """A public or hashtag timeline, newest first, older pages by ``max_id``
    (``GET /api/v1/timelines/public`` or ``/api/v1/timelines/tag/:hashtag``)."""

    def __init__(
        self, instance: str, client: HttpClient, hashtag: str | None = None, limit: int = 40
    ) -> None:
        self.instance = instance.rstrip("/")
        self.client = client
        self.hashtag = hashtag.lstrip("#") if hashtag else None
        self.limit = limit
        self.name = _instance_name(self.instance, self.hashtag)

    def first_url(self) -> str:
        path = (
            f"/api/v1/timelines/tag/{urllib.parse.quote(self.hashtag)}"
            if self.hashtag
            else "/api/v1/timelines/public"
        )
        return f"{self.instance}{path}?limit={self.limit}"

    def page(self, cursor: dict[str, Any]) -> Page:
        response = self.client.get(cursor.get("next") or self.first_url())
        items = parse_json(response, self.name)
        if not isinstance(items, list):
            raise CollectError(f"{self.name}: expected a list of statuses, got {type(items)}")
        following = next_link(response.headers)
        return Page(items, {"next": following} if following and items else None)

    def to_post(self, item: Any) -> dict[str, Any]:
        return status_to_post(item)

    def close(self) -> None:
        return None


def status_to_post(item: Any) -> dict[str, Any]:
    """A status as a postpulse post (a reblog as the status it reblogs); raises
    ``ValueError`` saying what is wrong."""
    if not isinstance(item, dict):
        raise ValueError(f"a status must be an object, not {type(item).__name__}")
    status = item["reblog"] if isinstance(item.get("reblog"), dict) else item
    for key in ("id", "created_at", "account"):
        if key not in status:
            raise ValueError(f"status without {key!r}")
    media = []
    for attachment in status.get("media_attachments") or []:
        kind = MEDIA_KINDS.get(attachment.get("type"))
        url = attachment.get("url") or attachment.get("remote_url")
        if kind and url:
            media.append({"kind": kind, "uri": url})
    return {
        "post_id": f"mastodon:{status['id']}",
        "platform": "mastodon",
        "author_id": str(status["account"].get("id", "")),
        "created_at": status["created_at"],
        "text": html_to_text(status.get("content") or ""),
        **({"lang": status["language"]} if status.get("language") else {}),
        "media": media,
        "engagement": {
            "likes": int(status.get("favourites_count") or 0),
            "shares": int(status.get("reblogs_count") or 0),
            "comments": int(status.get("replies_count") or 0),
        },
    }


def html_to_text(content: str) -> str:
    """Mastodon's status HTML as plain text (paragraphs and breaks become newlines)."""
    text = re.sub(r"<br\s*/?>", "\n", content, flags=re.I)
    text = re.sub(r"</p>\s*<p>", "\n\n", text, flags=re.I)
    text = re.sub(r"<[^>]+>", "", text)
    return html.unescape(text).strip()


def _id_order(status_id: str) -> tuple[int, str]:
    """Mastodon ids are numeric strings that grow with time."""
    return (len(status_id), status_id)


class SseParser:
    """Server-sent events, line by line: ``event:`` and ``data:`` fields, dispatched at
    a blank line; ``:`` comments (Mastodon's ``:thump`` heartbeat) ignored."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, raw: bytes) -> tuple[str, str] | None:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if not self.data:
                self.event = "message"
                return None
            event = (self.event, "\n".join(self.data))
            self.event, self.data = "message", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


class MastodonStream(LoopSource):
    """The streaming API's public or hashtag stream (``GET /api/v1/streaming/public``,
    ``/api/v1/streaming/hashtag?tag=``): ``update`` events are new statuses,
    ``status.update`` edited ones (their new counts reach the engagement output),
    ``delete`` is counted as skipped. The stream has no replay: after a restart the
    statuses published meanwhile come from the REST timeline (newer than the cursor's
    ``last_id``), then the stream continues; ids already delivered are not sent again."""

    def __init__(
        self,
        instance: str,
        client: HttpClient,
        hashtag: str | None = None,
        page_size: int = 50,
        page_wait_s: float = 5.0,
    ) -> None:
        super().__init__(client, page_size, page_wait_s)
        self.instance = instance.rstrip("/")
        self.hashtag = hashtag.lstrip("#") if hashtag else None
        self.name = _instance_name(self.instance, self.hashtag) + ":stream"
        self._response: aiohttp.ClientResponse | None = None
        self._parser = SseParser()
        self._caught_up = False

    def url(self) -> str:
        if self.hashtag:
            tag = urllib.parse.quote(self.hashtag)
            return f"{self.instance}/api/v1/streaming/hashtag?tag={tag}"
        return f"{self.instance}/api/v1/streaming/public"

    async def _open(self) -> aiohttp.ClientResponse:
        session = await self.session()
        response = await session.get(self.url(), headers={"Accept": "text/event-stream"})
        if response.status >= 400:
            response.release()
            raise aiohttp.ClientResponseError(
                response.request_info,
                response.history,
                status=response.status,
                headers=response.headers,
            )
        self._parser = SseParser()
        return response

    def page(self, cursor: dict[str, Any]) -> Page:
        if not self._caught_up:
            # the stream has no replay: after a restart, connect first (so nothing
            # published from now on is missed), then fetch what was published while we
            # were away from the timeline, newer than the last status delivered
            self._caught_up = True
            if cursor.get("last_id"):
                self.run(self._connect())
                missed = self.missed_since(str(cursor["last_id"]))
                if missed:
                    newest = str(missed[-1]["id"])
                    events = [{"event": "update", "payload": json.dumps(s)} for s in missed]
                    return Page(events, {"last_id": newest})
        return self.run(self._page(cursor))

    def missed_since(self, last_id: str, max_pages: int = 50) -> list[dict[str, Any]]:
        """Statuses newer than ``last_id`` from the REST timeline (``min_id`` pages,
        each the statuses immediately newer than its ``min_id``), oldest first."""
        timeline = MastodonTimeline(self.instance, self.client, self.hashtag)
        found: dict[str, dict[str, Any]] = {}
        newest = last_id
        for _ in range(max_pages):
            url = f"{timeline.first_url()}&min_id={urllib.parse.quote(newest)}"
            items = parse_json(self.client.get(url), self.name)
            if not isinstance(items, list):
                raise CollectError(f"{self.name}: expected a list of statuses")
            ids = [str(i["id"]) for i in items if isinstance(i, dict) and "id" in i]
            if not ids:
                break
            for item, status_id in zip(items, ids, strict=False):
                found[status_id] = item
            newest = max(ids, key=_id_order)
        return [found[k] for k in sorted(found, key=_id_order)]

    async def _connect(self) -> None:
        if self._response is None:
            self._response = await self.with_retries(self.url(), self._open)

    async def _page(self, cursor: dict[str, Any]) -> Page:
        events: list[tuple[str, str]] = []
        end = self.deadline()
        loop = asyncio.get_running_loop()
        while len(events) < self.page_size and (left := end - loop.time()) > 0:
            await self._connect()
            assert self._response is not None
            try:
                line = await asyncio.wait_for(self._response.content.readline(), left)
            except TimeoutError:
                break
            except (aiohttp.ClientError, OSError):
                line = b""
            if not line:  # the server closed the stream: reconnect, politely
                self._response.release()
                self._response = None
                self.reconnects += 1
                await self.sleep(self.client.backoff_s)
                continue
            event = self._parser.feed(line)
            if event is not None:
                events.append(event)
        ids = [cursor["last_id"]] if cursor.get("last_id") else []
        for name, data in events:
            if name == "update":
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    ids.append(str(json.loads(data)["id"]))
        newest = max(ids, key=_id_order) if ids else None
        return Page([{"event": n, "payload": d} for n, d in events], {"last_id": newest})

    def to_post(self, item: Any) -> dict[str, Any]:
        event = item["event"]
        if event in ("update", "status.update"):
            return status_to_post(json.loads(item["payload"]))
        if event == "delete":
            raise Skip("deleted")
        raise Skip(f"event {event}")

    async def _close(self) -> None:
        if self._response is not None:
            self._response.release()
            self._response = None
        await super()._close()
