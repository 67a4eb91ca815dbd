"""A polite crawler for sites that allow it: it fetches only hosts on an allow-list,
only paths robots.txt allows for its user agent (RFC 9309), at most ``max_per_host``
requests to a host at once and one every crawl delay (robots.txt ``Crawl-delay`` or
the configured one, whichever is longer), through the same address guard as media
fetching (no loopback, private or link-local address unless allowed). From each page it
extracts posts published as structured data (JSON-LD ``SocialMediaPosting`` and its
subtypes, or Open Graph article tags) and follows links to pages of allowed hosts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import aiohttp
from protego import Protego

from streams.collect.core import USER_AGENT, Page, Skip, retry_after
from streams.stages.fetch import AddressPolicy, FetchError, GuardedResolver

log = logging.getLogger(__name__)

POSTING_TYPES = {"SocialMediaPosting", "DiscussionForumPosting", "LiveBlogPosting"}
HTML_TYPES = ("text/html", "application/xhtml+xml")
MAX_PAGE_BYTES = 5 * 1024 * 1024
INTERACTIONS = {
    "LikeAction": "likes",
    "ShareAction": "shares",
    "CommentAction": "comments",
    "WatchAction": "views",
    "ViewAction": "views",
}


class PageParser(HTMLParser):
    """What the crawler needs from a page: JSON-LD blocks, ``<meta>`` properties,
    links and the canonical URL."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.json_ld: list[str] = []
        self.meta: dict[str, str] = {}
        self.links: list[str] = []
        self.canonical: str | None = None
        self._in_json_ld = False
        self._buffer: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "script" and a.get("type", "").lower() == "application/ld+json":
            self._in_json_ld, self._buffer = True, []
        elif tag == "meta":
            key = a.get("property") or a.get("name")
            if key and "content" in a:
                self.meta.setdefault(key.lower(), a["content"])
        elif tag == "a" and a.get("href"):
            rel = a.get("rel", "").lower().split()
            if "nofollow" not in rel:
                self.links.append(a["href"])
        elif tag == "link" and "canonical" in a.get("rel", "").lower().split() and a.get("href"):
            self.canonical = a["href"]

    def handle_data(self, data: str) -> None:
        if self._in_json_ld:
            self._buffer.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._in_json_ld:
            self.json_ld.append("".join(self._buffer))
            self._in_json_ld = False


def _types(node: dict[str, Any]) -> set[str]:
    kind = node.get("@type", [])
    kinds = kind if isinstance(kind, list) else [kind]
    return {str(k).rsplit("/", 1)[-1] for k in kinds}


def json_ld_postings(block: Any) -> list[dict[str, Any]]:
    """Every posting node in a JSON-LD document (top level, lists and ``@graph``)."""
    found: list[dict[str, Any]] = []
    stack = [block]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, dict):
            if _types(node) & POSTING_TYPES:
                found.append(node)
            if "@graph" in node:
                stack.append(node["@graph"])
    return found


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _url_of(value: Any) -> str | None:
    value = _first(value)
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        found = value.get("contentUrl") or value.get("url")
        return str(found) if found else None
    return None


def _author(value: Any) -> str | None:
    value = _first(value)
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("@id", "url", "identifier", "alternateName", "name"):
            if value.get(key):
                return str(value[key])
    return None


def _media(node: dict[str, Any], page_url: str) -> list[dict[str, str]]:
    media = []
    for key, kind in (("image", "image"), ("video", "video"), ("audio", "audio")):
        values = node.get(key)
        for value in values if isinstance(values, list) else [values]:
            url = _url_of(value)
            if url:
                media.append({"kind": kind, "uri": urllib.parse.urljoin(page_url, url)})
    return media


def _engagement(node: dict[str, Any]) -> dict[str, int] | None:
    stats = node.get("interactionStatistic")
    counts: Counter[str] = Counter()
    for stat in stats if isinstance(stats, list) else [stats]:
        if not isinstance(stat, dict):
            continue
        kind = _first(stat.get("interactionType"))
        if isinstance(kind, dict):  # {"@type": "LikeAction"} as well as the IRI
            kind = kind.get("@type") or kind.get("@id")
        kind = str(kind or "")
        name = INTERACTIONS.get(kind.rsplit("/", 1)[-1].split(":")[-1])
        if name:
            counts[name] += int(stat.get("userInteractionCount") or 0)
    return dict(counts) if counts else None


def post_id_for(url: str) -> str:
    host = urllib.parse.urlsplit(url).hostname or "unknown"
    return f"web:{host}:{hashlib.sha1(url.encode()).hexdigest()[:20]}"


def posting_to_post(node: dict[str, Any], page_url: str) -> dict[str, Any]:
    """A JSON-LD posting as a postpulse post; raises ``ValueError`` saying what is
    missing."""
    if not node.get("datePublished"):
        raise ValueError("posting without datePublished")
    author = _author(node.get("author")) or _author(node.get("creator"))
    if not author:
        raise ValueError("posting without an author")
    url = urllib.parse.urljoin(page_url, str(node.get("url") or node.get("@id") or page_url))
    text = node.get("articleBody") or node.get("text") or node.get("headline") or ""
    lang = _first(node.get("inLanguage"))
    engagement = _engagement(node)
    return {
        "post_id": post_id_for(url),
        "platform": "web",
        "author_id": author[:128],
        "created_at": str(node["datePublished"]),
        "text": str(text),
        **({"lang": lang} if isinstance(lang, str) and len(lang) >= 2 else {}),
        "media": _media(node, page_url),
        **({"engagement": engagement} if engagement else {}),
    }


def open_graph_to_post(meta: dict[str, str], page_url: str) -> dict[str, Any]:
    """An Open Graph article (``og:*`` and ``article:*`` tags) as a post."""
    published = meta.get("article:published_time")
    if not published:
        raise ValueError("Open Graph article without article:published_time")
    url = urllib.parse.urljoin(page_url, meta.get("og:url") or page_url)
    text = "\n\n".join(v for v in (meta.get("og:title"), meta.get("og:description")) if v)
    media = [
        {"kind": kind, "uri": urllib.parse.urljoin(page_url, meta[key])}
        for key, kind in (("og:image", "image"), ("og:video", "video"), ("og:audio", "audio"))
        if meta.get(key)
    ]
    locale = meta.get("og:locale", "")
    return {
        "post_id": post_id_for(url),
        "platform": "web",
        "author_id": (meta.get("article:author") or urllib.parse.urlsplit(url).hostname or "web")[
            :128
        ],
        "created_at": published,
        "text": text,
        **({"lang": locale.split("_")[0]} if len(locale) >= 2 else {}),
        "media": media,
    }


@dataclass
class CrawlStats:
    fetched: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # reason -> URLs not fetched
    failed: int = 0
    backed_off_s: float = 0.0  # waited because a host answered 429/503


def robots_rules(status: int, body: bytes) -> Protego:
    """A host's robots.txt rules from its answer, matched as RFC 9309 says (longest
    match, ``*`` and ``$``, allow beats disallow on ties): a 200 is the rules; a 4xx
    means no rules; a 5xx or no answer means nothing may be fetched."""
    if status == 200:
        return Protego.parse(body.decode("utf-8", "replace"))
    if 400 <= status < 500:
        return Protego.parse("")
    return Protego.parse("User-agent: *\nDisallow: /")


class Crawler:
    """Crawls from seed URLs, breadth first, ``page_size`` pages per collector page.
    The cursor holds the frontier and the visited URLs, so a restart continues."""

    def __init__(
        self,
        seeds: list[str],
        allow_hosts: list[str],
        allowed_networks: tuple[str, ...] = (),
        user_agent: str = USER_AGENT,
        delay_s: float = 1.0,
        max_per_host: int = 1,
        max_pages: int = 1000,
        page_size: int = 8,
        timeout_s: float = 20.0,
        max_retries: int = 3,
        max_wait_s: float = 300.0,
    ) -> None:
        if not seeds:
            raise ValueError("the crawler needs at least one seed URL")
        if not allow_hosts:
            raise ValueError("the crawler needs an allow-list of hosts (--allow-host)")
        self.seeds = [self.normalise(s) for s in seeds]
        self.allow = {h.lower() for h in allow_hosts}
        self.policy = AddressPolicy(allowed_networks)
        self.user_agent = user_agent
        self.delay_s = delay_s
        self.max_per_host = max_per_host
        self.max_pages = max_pages
        self.page_size = page_size
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_wait_s = max_wait_s
        self.name = f"crawl:{urllib.parse.urlsplit(self.seeds[0]).netloc}"
        self.stats = CrawlStats()
        self.robots: dict[str, Protego] = {}
        self.requests: list[str] = []  # every URL requested, robots.txt included, in order
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        self._host_last: dict[str, float] = {}  # when the last request to a host started
        self._host_locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def normalise(url: str) -> str:
        url, _fragment = urllib.parse.urldefrag(url.strip())
        parts = urllib.parse.urlsplit(url)
        return urllib.parse.urlunsplit(
            parts._replace(netloc=parts.netloc.lower(), path=parts.path or "/")
        )

    def allowed_host(self, url: str) -> bool:
        parts = urllib.parse.urlsplit(url)
        return parts.scheme in ("http", "https") and (
            (parts.hostname or "") in self.allow or parts.netloc in self.allow
        )

    def page(self, cursor: dict[str, Any]) -> Page:
        frontier: list[str] = list(cursor.get("frontier", self.seeds))
        visited: list[str] = list(cursor.get("visited", []))
        seen = set(visited)
        batch: list[str] = []
        while (
            frontier and len(batch) < self.page_size and len(visited) + len(batch) < self.max_pages
        ):
            url = frontier.pop(0)
            if url not in seen and url not in batch:
                batch.append(url)
        items, links = asyncio.run(self._crawl(batch))
        visited += batch
        seen.update(batch)
        queued = set(frontier)
        for link in links:
            if link not in seen and link not in queued:
                frontier.append(link)
                queued.add(link)
        more = frontier and len(visited) < self.max_pages
        return Page(items, {"frontier": frontier, "visited": visited} if more else None)

    async def _crawl(self, urls: list[str]) -> tuple[list[Any], list[str]]:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.policy), use_dns_cache=False)
        self._host_slots, self._host_locks = {}, {}  # bound to this page's event loop
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"User-Agent": self.user_agent},
            trust_env=False,
        ) as session:
            results = await asyncio.gather(*(self._visit(session, u) for u in urls))
        items: list[Any] = []
        links: list[str] = []
        for page_items, page_links in results:
            items += page_items
            links += page_links
        return items, links

    def _refuse(self, url: str, reason: str) -> tuple[list[Any], list[str]]:
        self.stats.refused[reason] += 1
        log.info("not fetching %s: %s", url, reason)
        return [{"skip": reason, "url": url}], []

    async def _visit(self, session: aiohttp.ClientSession, url: str) -> tuple[list[Any], list[str]]:
        if not self.allowed_host(url):
            return self._refuse(url, "host not on the allow-list")
        literal = self.policy.refuses_literal(urllib.parse.urlsplit(url).hostname or "")
        if literal:
            return self._refuse(url, literal)
        try:
            robots = await self._robots(session, url)
        except FetchError as exc:  # the address guard refused the host
            return self._refuse(url, exc.detail)
        if not robots.can_fetch(url, self.user_agent):
            return self._refuse(url, "disallowed by robots.txt")
        backoff = max(self.delay_s, 1.0)
        for attempt in range(self.max_retries + 1):
            try:
                status, headers, body = await self._get(session, url, robots)
            except (FetchError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.stats.failed += 1
                return [{"skip": f"fetch failed: {type(exc).__name__}", "url": url}], []
            if status not in (429, 503) or attempt == self.max_retries:
                break
            # the host asks us to slow down: every request to it waits, then this one
            # is tried again
            wait = min(retry_after(headers) or backoff, self.max_wait_s)
            backoff *= 2
            host = urllib.parse.urlsplit(url).netloc
            self._host_last[host] = max(self._host_last.get(host, 0.0), time.monotonic() + wait)
            self.stats.backed_off_s += wait
            log.info("%s answered %d; waiting %.1fs", url, status, wait)
        if status in (301, 302, 303, 307, 308) and headers.get("location"):
            return [], [self.normalise(urllib.parse.urljoin(url, headers["location"]))]
        if status != 200:
            self.stats.failed += 1
            return [{"skip": f"HTTP {status}", "url": url}], []
        if not headers.get("content-type", "").lower().startswith(HTML_TYPES):
            return [{"skip": "not an HTML page", "url": url}], []
        self.stats.fetched += 1
        return self.extract(body.decode("utf-8", "replace"), url)

    def extract(self, html_text: str, url: str) -> tuple[list[Any], list[str]]:
        """The posting items and the followable links of one page."""
        parser = PageParser()
        parser.feed(html_text)
        base = urllib.parse.urljoin(url, parser.canonical) if parser.canonical else url
        items: list[Any] = []
        for block in parser.json_ld:
            try:
                doc = json.loads(block)
            except ValueError as exc:
                items.append({"url": base, "json_ld_error": str(exc), "raw": block[:2000]})
                continue
            items += [{"url": base, "json_ld": node} for node in json_ld_postings(doc)]
        if not items and parser.meta.get("og:type", "").lower() == "article":
            items.append({"url": base, "open_graph": parser.meta})
        links = []
        for href in parser.links:
            link = self.normalise(urllib.parse.urljoin(url, href))
            if urllib.parse.urlsplit(link).scheme in ("http", "https"):
                links.append(link)
        return items, links

    def to_post(self, item: Any) -> dict[str, Any]:
        if "skip" in item:
            raise Skip(item["skip"])
        if "json_ld_error" in item:
            raise ValueError(f"JSON-LD on {item['url']} is not JSON: {item['json_ld_error']}")
        if "json_ld" in item:
            return posting_to_post(item["json_ld"], item["url"])
        return open_graph_to_post(item["open_graph"], item["url"])

    async def _robots(self, session: aiohttp.ClientSession, url: str) -> Protego:
        """The host's robots.txt, fetched once. Per RFC 9309: a 4xx means no rules; a 5xx
        or an unreachable host means nothing may be fetched."""
        parts = urllib.parse.urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin in self.robots:
            return self.robots[origin]
        try:
            status, _headers, body = await self._get(session, f"{origin}/robots.txt", None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("robots.txt of %s unreachable (%s): not crawling it", origin, exc)
            status, body = 503, b""
        robots = self.robots[origin] = robots_rules(status, body)
        return robots

    async def _get(
        self,
        session: aiohttp.ClientSession,
        url: str,
        robots: Protego | None,
    ) -> tuple[int, dict[str, str], bytes]:
        host = urllib.parse.urlsplit(url).netloc
        slots = self._host_slots.setdefault(host, asyncio.Semaphore(self.max_per_host))
        lock = self._host_locks.setdefault(host, asyncio.Lock())
        delay = self.delay_s
        if robots is not None:
            asked = robots.crawl_delay(self.user_agent)
            delay = max(delay, float(asked or 0))
        async with slots:
            async with lock:  # one request start per crawl delay
                now = time.monotonic()
                last = self._host_last.get(host, -delay)
                start = max(now, last + delay if last <= now else last)
                await asyncio.sleep(start - now)
                self._host_last[host] = start
            self.requests.append(url)
            async with session.get(url, allow_redirects=False) as response:
                body = await response.content.read(MAX_PAGE_BYTES)
                headers = {k.lower(): v for k, v in response.headers.items()}
                return response.status, headers, body

    def close(self) -> None:
        return None
