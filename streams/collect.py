"""Collecting posts from platform APIs (``postpulse collect``): a source yields pages of
platform items and a resumable cursor; the collector maps items to :class:`Post`
records, drops posts it has already delivered, dead-letters malformed items with the
reason, respects the platform's rate limits, retries with back-off, and saves the
cursor after every page so a restarted run continues where the last one stopped.

Sources so far: Mastodon public and hashtag timelines (REST, paginated by ``Link``
headers, as the Mastodon API documents them).
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from streams.records import Post

log = logging.getLogger(__name__)

USER_AGENT = "postpulse-collector/0.1 (+https://github.com/postpulse/postpulse)"
SEEN_IDS_KEPT = 50_000


class CollectError(RuntimeError):
    """The source cannot be read (after retries), or answered something unusable."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpClient:
    """GET with rate-limit awareness: waits out ``Retry-After`` on 429/503 and an
    exhausted ``X-RateLimit-Remaining`` until ``X-RateLimit-Reset``; retries 5xx and
    connection errors with exponential back-off. Tokens go in the Authorization header
    only and never into logs."""

    token: str = ""
    timeout_s: float = 20.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_wait_s: float = 900.0
    sleep: Callable[[float], None] = time.sleep
    waited_s: float = 0.0

    def get(self, url: str) -> Response:
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            if self.token:
                request.add_header("Authorization", f"Bearer {self.token}")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                    response = Response(resp.status, dict(resp.headers.items()), resp.read())
            except urllib.error.HTTPError as err:
                response = Response(err.code, dict(err.headers.items()), err.read())
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.max_retries:
                    raise CollectError(f"GET {redact(url)} failed: {exc}") from exc
                log.warning("GET %s failed (%s); retrying in %.1fs", redact(url), exc, delay)
                self._wait(delay)
                delay *= 2
                continue
            if response.status in (429, 503) or response.status >= 500:
                if attempt == self.max_retries:
                    raise CollectError(f"GET {redact(url)}: HTTP {response.status} after retries")
                wait = retry_after(response.headers) if response.status in (429, 503) else None
                wait = delay if wait is None else wait
                log.warning("GET %s: HTTP %d; waiting %.1fs", redact(url), response.status, wait)
                self._wait(wait)
                delay *= 2
                continue
            if response.status >= 400:
                raise CollectError(
                    f"GET {redact(url)}: HTTP {response.status}: {response.body[:200]!r}"
                )
            remaining = response.headers.get("X-RateLimit-Remaining")
            if remaining is not None and remaining.strip() == "0":
                reset = reset_wait(response.headers.get("X-RateLimit-Reset"))
                if reset:
                    log.info("rate limit exhausted; waiting %.1fs for the reset", reset)
                    self._wait(reset)
            return response
        raise AssertionError("unreachable")

    def _wait(self, seconds: float) -> None:
        seconds = min(max(seconds, 0.0), self.max_wait_s)
        self.waited_s += seconds
        self.sleep(seconds)


def redact(url: str) -> str:
    """A URL without its query values that look like credentials."""
    parts = urllib.parse.urlsplit(url)
    query = [
        (k, "***" if re.search(r"token|key|secret|password", k, re.I) else v)
        for k, v in urllib.parse.parse_qsl(parts.query)
    ]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def retry_after(headers: dict[str, str]) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def reset_wait(value: str | None) -> float:
    """Seconds until an ``X-RateLimit-Reset`` time (ISO 8601, as Mastodon sends it)."""
    if not value:
        return 0.0
    from streams.records import parse_created_at

    try:
        return max(0.0, parse_created_at(value) / 1000 - time.time())
    except ValueError:
        return 0.0


def next_link(headers: dict[str, str]) -> str | None:
    """The ``rel="next"`` URL of an RFC 8288 ``Link`` header."""
    for part in headers.get("Link", "").split(","):
        match = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', part)
        if match:
            return match.group(1)
    return None


@dataclass
class Page:
    items: list[Any]
    cursor: dict[str, Any] | None  # None: nothing after this page


class Source(Protocol):
    """A platform source: pages of items from a cursor, and items mapped to posts."""

    name: str

    def page(self, cursor: dict[str, Any]) -> Page: ...
    def to_post(self, item: Any) -> dict[str, Any]: ...


class MastodonTimeline:
    """A Mastodon public or hashtag timeline, newest first, older pages by ``max_id``
    (``GET /api/v1/timelines/public`` or ``/api/v1/timelines/tag/:hashtag``)."""

    def __init__(
        self, instance: str, client: HttpClient, hashtag: str | None = None, limit: int = 40
    ) -> None:
        self.instance = instance.rstrip("/")
        self.client = client
        self.hashtag = hashtag.lstrip("#") if hashtag else None
        self.limit = limit
        self.name = f"mastodon:{urllib.parse.urlsplit(self.instance).netloc}" + (
            f":#{self.hashtag}" if self.hashtag else ""
        )

    def first_url(self) -> str:
        path = (
            f"/api/v1/timelines/tag/{urllib.parse.quote(self.hashtag)}"
            if self.hashtag
            else "/api/v1/timelines/public"
        )
        return f"{self.instance}{path}?limit={self.limit}"

    def page(self, cursor: dict[str, Any]) -> Page:
        url = cursor.get("next") or self.first_url()
        response = self.client.get(url)
        try:
            items = response.json()
        except ValueError as exc:
            raise CollectError(f"{self.name}: the page is not JSON: {exc}") from exc
        if not isinstance(items, list):
            raise CollectError(f"{self.name}: expected a list of statuses, got {type(items)}")
        following = next_link(response.headers)
        return Page(items, {"next": following} if following and items else None)

    def to_post(self, item: Any) -> dict[str, Any]:
        """A status as a postpulse post; raises ``ValueError`` saying what is wrong."""
        if not isinstance(item, dict):
            raise ValueError(f"a status must be an object, not {type(item).__name__}")
        status = item["reblog"] if isinstance(item.get("reblog"), dict) else item
        for key in ("id", "created_at", "account"):
            if key not in status:
                raise ValueError(f"status without {key!r}")
        media = []
        for attachment in status.get("media_attachments") or []:
            kind = {"image": "image", "video": "video", "gifv": "video", "audio": "audio"}.get(
                attachment.get("type")
            )
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


@dataclass
class CollectState:
    """The cursor and the recently delivered post ids of one source, in a JSON file."""

    path: Path
    cursor: dict[str, Any] = field(default_factory=dict)
    seen: deque[str] = field(default_factory=lambda: deque(maxlen=SEEN_IDS_KEPT))
    done: bool = False

    @classmethod
    def load(cls, path: Path) -> CollectState:
        if not path.exists():
            return cls(path)
        doc = json.loads(path.read_text())
        return cls(
            path,
            doc.get("cursor") or {},
            deque(doc.get("seen", []), SEEN_IDS_KEPT),
            bool(doc.get("done")),
        )

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"cursor": self.cursor, "seen": list(self.seen), "done": self.done})
        )
        tmp.replace(self.path)  # atomic: a crash leaves the old state or the new one


@dataclass
class CollectResult:
    posts: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    pages: int = 0


@dataclass(frozen=True)
class Rejected:
    """An item that could not become a post: the reason and the item as received."""

    source: str
    reason: str
    item: Any

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "source": self.source,
                "reason": "malformed_item",
                "detail": self.reason,
                "item": self.item,
            },
            default=str,
        ).encode()


def collect(
    source: Source,
    state: CollectState,
    emit: Callable[[bytes, bytes], None],
    dead_letter: Callable[[bytes], None],
    max_posts: int | None = None,
) -> CollectResult:
    """Walk ``source`` from ``state``'s cursor; ``emit(key, value)`` each new post,
    ``dead_letter(record)`` each malformed item. Stops at the end of the source or of
    the page that reaches ``max_posts``. The cursor and the delivered ids are saved after
    every page, once its posts were emitted: a crash re-emits at most one page (at least
    once; the worker's Milvus upsert by post id makes that harmless)."""
    result = CollectResult()
    seen = set(state.seen)
    while not state.done and (max_posts is None or result.posts < max_posts):
        page = source.page(state.cursor)
        result.pages += 1
        for item in page.items:
            try:
                doc = source.to_post(item)
                post = Post.model_validate(doc)
            except (ValueError, KeyError, TypeError, ValidationError) as exc:
                dead_letter(Rejected(source.name, f"{type(exc).__name__}: {exc}", item).to_json())
                result.dead_letters += 1
                continue
            if post.post_id in seen:
                result.duplicates += 1
                continue
            emit(post.post_id.encode(), json.dumps(doc).encode())
            seen.add(post.post_id)
            state.seen.append(post.post_id)
            result.posts += 1
        if page.cursor is None:
            state.done = True
        else:
            state.cursor = page.cursor
        state.save()
    return result
