"""The collector: walks a source page by page from a resumable cursor, maps items to
:class:`Post` records, delivers each post once, sends later engagement counts of a
delivered post to the engagement output, dead-letters malformed items with the reason,
and saves the cursor after every page so a restarted run continues where the last
one stopped. Also the rate-limit-aware HTTP client the REST sources share.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from tqdm import tqdm

from streams.records import Post, parse_created_at

log = logging.getLogger(__name__)

USER_AGENT = "postpulse-collector/0.1 (+https://github.com/postpulse/postpulse)"
SEEN_IDS_KEPT = 50_000
ENGAGEMENT_FIELDS = ("likes", "comments", "shares", "views")


class CollectError(RuntimeError):
    """The source cannot be read (after retries), or answered something unusable."""


class Skip(Exception):
    """An item that is not a post to collect (a deletion, another record type); counted
    by reason, never dead-lettered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- HTTP -----------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def origin_of(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default


class CredentialsStayHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but drops ``Authorization`` (and cookies) when one leads to
    another origin: urllib would otherwise send the bearer token to whatever host the
    redirect names."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin_of(newurl) != origin_of(req.full_url):
            for name in ("Authorization", "Cookie", "Proxy-authorization"):
                new.headers.pop(name, None)
                new.unredirected_hdrs.pop(name, None)
        return new


_OPENER = urllib.request.build_opener(CredentialsStayHome)


def lower_headers(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


@dataclass
class HttpClient:
    """GET with rate-limit awareness: waits out ``Retry-After`` on 429/503, and waits
    for the reset when a rate-limit header says nothing is left (Mastodon's
    ``X-RateLimit-*``, Reddit's ``X-Ratelimit-*``, Bluesky's ``RateLimit-*``); retries 5xx
    and connection errors with exponential back-off. Tokens go in the Authorization
    header only and never into logs or errors."""

    token: str = ""
    user_agent: str = USER_AGENT
    timeout_s: float = 20.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_wait_s: float = 900.0
    sleep: Callable[[float], None] = time.sleep
    waited_s: float = 0.0

    def get(self, url: str) -> Response:
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, headers={"User-Agent": self.user_agent})
            if self.token:
                request.add_header("Authorization", f"Bearer {self.token}")
            try:
                with _OPENER.open(request, timeout=self.timeout_s) as resp:
                    response = Response(
                        resp.status, lower_headers(resp.headers.items()), resp.read()
                    )
            except urllib.error.HTTPError as err:
                response = Response(err.code, lower_headers(err.headers.items()), err.read())
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.max_retries:
                    raise CollectError(f"GET {redact(url)} failed: {exc}") from exc
                log.warning("GET %s failed (%s); retrying in %.1fs", redact(url), exc, delay)
                self.wait(delay)
                delay *= 2
                continue
            wait = self.retry_wait(url, response.status, response.headers, attempt, delay)
            if wait is not None:
                self.wait(wait)
                delay *= 2
                continue
            if response.status >= 400:
                raise CollectError(
                    f"GET {redact(url)}: HTTP {response.status}: {response.body[:200]!r}"
                )
            self.respect_limits(response.headers)
            return response
        raise AssertionError("unreachable")

    def retry_wait(
        self, url: str, status: int, headers: dict[str, str], attempt: int, delay: float
    ) -> float | None:
        """Seconds to wait before retrying a request answered ``status``; ``None`` when
        the answer is final. Raises once the retries are spent."""
        if status not in (429, 503) and status < 500:
            return None
        if attempt == self.max_retries:
            raise CollectError(f"GET {redact(url)}: HTTP {status} after retries")
        wait = retry_after(headers) if status in (429, 503) else None
        if wait is None and status == 429:
            wait = reset_wait(headers) or None
        wait = delay if wait is None else wait
        log.warning("GET %s: HTTP %d; waiting %.1fs", redact(url), status, wait)
        return wait

    def respect_limits(self, headers: dict[str, str]) -> None:
        """Wait for the reset when the window's requests are spent."""
        remaining = headers.get("x-ratelimit-remaining", headers.get("ratelimit-remaining"))
        try:
            spent = remaining is not None and float(remaining) < 1
        except ValueError:
            spent = False
        if spent:
            reset = reset_wait(headers)
            if reset:
                log.info("rate limit exhausted; waiting %.1fs for the reset", reset)
                self.wait(reset)

    def budget(self, seconds: float) -> float:
        """``seconds`` bounded to ``[0, max_wait_s]``, counted as waited."""
        seconds = min(max(seconds, 0.0), self.max_wait_s)
        self.waited_s += seconds
        return seconds

    def wait(self, seconds: float) -> None:
        self.sleep(self.budget(seconds))


def redact(url: str) -> str:
    """A URL without its query values that look like credentials."""
    parts = urllib.parse.urlsplit(url)
    query = [
        (k, "***" if re.search(r"token|key|secret|password|auth", k, re.I) else v)
        for k, v in urllib.parse.parse_qsl(parts.query)
    ]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def retry_after(headers: dict[str, str]) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def reset_wait(headers: dict[str, str]) -> float:
    """Seconds until the rate-limit window resets. Platforms say it three ways: an ISO
    8601 time (Mastodon ``X-RateLimit-Reset``), epoch seconds (Bluesky
    ``RateLimit-Reset``) or seconds from now (Reddit ``X-Ratelimit-Reset``)."""
    value = headers.get("x-ratelimit-reset", headers.get("ratelimit-reset"))
    if not value:
        return 0.0
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        try:
            return max(0.0, parse_created_at(value) / 1000 - time.time())
        except ValueError:
            return 0.0
    if number > 1_000_000_000:  # an epoch time, not a delta
        return max(0.0, number - time.time())
    return max(0.0, number)


def next_link(headers: dict[str, str]) -> str | None:
    """The ``rel="next"`` URL of an RFC 8288 ``Link`` header."""
    for part in headers.get("link", "").split(","):
        match = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', part)
        if match:
            return match.group(1)
    return None


def parse_json(response: Response, source: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise CollectError(f"{source}: the answer is not JSON: {exc}") from exc


# --- sources, state and the collector -----------------------------------------------------


@dataclass
class Page:
    items: list[Any]
    cursor: dict[str, Any] | None  # None: nothing after this page


class Source(Protocol):
    """A platform source: pages of items from a cursor, and items mapped to posts
    (``to_post`` raises ``ValueError``/``KeyError``/``TypeError`` for a malformed item and
    :class:`Skip` for one that is not a post)."""

    name: str

    def page(self, cursor: dict[str, Any]) -> Page: ...
    def to_post(self, item: Any) -> dict[str, Any]: ...
    def close(self) -> None: ...


@dataclass
class CollectState:
    """The cursor of one source and the recently delivered post ids with the engagement
    last delivered for each, in a JSON file."""

    path: Path
    cursor: dict[str, Any] = field(default_factory=dict)
    seen: OrderedDict[str, list[int] | None] = field(default_factory=OrderedDict)
    done: bool = False

    @classmethod
    def load(cls, path: Path) -> CollectState:
        if not path.exists():
            return cls(path)
        doc = json.loads(path.read_text())
        seen: OrderedDict[str, list[int] | None] = OrderedDict()
        for entry in doc.get("seen", []):
            post_id, counts = (entry, None) if isinstance(entry, str) else entry
            seen[post_id] = counts
        return cls(path, doc.get("cursor") or {}, seen, bool(doc.get("done")))

    def remember(self, post_id: str, counts: list[int] | None) -> None:
        self.seen[post_id] = counts
        self.seen.move_to_end(post_id)
        while len(self.seen) > SEEN_IDS_KEPT:
            self.seen.popitem(last=False)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        seen = [[k, v] for k, v in self.seen.items()]
        tmp.write_text(json.dumps({"cursor": self.cursor, "seen": seen, "done": self.done}))
        tmp.replace(self.path)  # atomic: a crash leaves the old state or the new one


@dataclass
class CollectResult:
    posts: int = 0
    duplicates: int = 0
    engagement_updates: int = 0
    dead_letters: int = 0
    pages: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return (
            f"{self.posts} new posts in {self.pages} page(s); {self.duplicates} already "
            f"delivered, {self.engagement_updates} engagement updates, {self.dead_letters} "
            f"dead-lettered" + (f", skipped: {skipped}" if skipped else "")
        )


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


class Outputs(Protocol):
    """Where collected records go: Kafka topics or JSONL files."""

    def post(self, key: bytes, value: bytes) -> None: ...
    def engagement(self, key: bytes, value: bytes) -> None: ...
    def dead_letter(self, value: bytes) -> None: ...


@dataclass
class ListOutputs:
    """Collected records kept in lists (library use and tests)."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)

    def post(self, key: bytes, value: bytes) -> None:
        self.posts.append(json.loads(value))

    def engagement(self, key: bytes, value: bytes) -> None:
        self.updates.append(json.loads(value))

    def dead_letter(self, value: bytes) -> None:
        self.dead.append(json.loads(value))


def engagement_counts(post: Post) -> list[int] | None:
    if post.engagement is None:
        return None
    return [int(getattr(post.engagement, name)) for name in ENGAGEMENT_FIELDS]


def engagement_update(post: Post, doc: dict[str, Any]) -> bytes:
    """The record on the engagement topic: the post's id and its counts now."""
    return json.dumps(
        {
            "post_id": post.post_id,
            "platform": post.platform,
            "observed_at": int(time.time() * 1000),
            "engagement": doc.get("engagement"),
        }
    ).encode()


def collect(
    source: Source,
    state: CollectState,
    outputs: Outputs,
    max_posts: int | None = None,
    max_seconds: float | None = None,
    progress: bool = False,
) -> CollectResult:
    """Walk ``source`` from ``state``'s cursor until the source ends, ``max_posts`` new
    posts were delivered, or ``max_seconds`` passed (both checked after each page).
    A post id delivered before is not delivered again; if its engagement changed, the
    new counts go to ``outputs.engagement``. The cursor and the delivered ids are saved
    after every page, once its records were handed over: a crash re-delivers at most
    one page (at least once; the worker's Milvus upsert by post id makes that
    harmless)."""
    result = CollectResult()
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    bar = tqdm(total=max_posts, unit="post", desc=source.name, disable=not progress)
    try:
        while not state.done and (max_posts is None or result.posts < max_posts):
            if deadline is not None and time.monotonic() >= deadline:
                break
            page = source.page(state.cursor)
            result.pages += 1
            for item in page.items:
                try:
                    doc = source.to_post(item)
                    post = Post.model_validate(doc)
                except Skip as skip:
                    result.skipped[skip.reason] += 1
                    continue
                except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
                    reason = (
                        f"missing field {exc}"
                        if isinstance(exc, KeyError)
                        else f"{type(exc).__name__}: {exc}"
                    )
                    outputs.dead_letter(Rejected(source.name, reason, item).to_json())
                    result.dead_letters += 1
                    continue
                counts = engagement_counts(post)
                if post.post_id in state.seen:
                    before = state.seen[post.post_id]
                    if counts is not None and counts != before:
                        outputs.engagement(post.post_id.encode(), engagement_update(post, doc))
                        state.remember(post.post_id, counts)
                        result.engagement_updates += 1
                    else:
                        result.duplicates += 1
                    continue
                outputs.post(post.post_id.encode(), json.dumps(doc).encode())
                state.remember(post.post_id, counts)
                result.posts += 1
                bar.update(1)
            if page.cursor is None:
                state.done = True
            else:
                state.cursor = page.cursor
            state.save()
            bar.set_postfix(pages=result.pages, dead=result.dead_letters)
    finally:
        bar.close()
        source.close()
    return result
