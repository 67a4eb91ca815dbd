"""The polite crawler against a local site: a robots.txt that forbids /private/ and asks
for a crawl delay, pages publishing posts as JSON-LD (``SocialMediaPosting`` at the top
level, in ``@graph`` and in a list) and as Open Graph articles, malformed structured
data, a feed that is not HTML, links and a redirect to a host outside the allow-list
(a second server on 127.0.0.2 that must never see a request). No request leaves this
machine."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streams.cli import main
from streams.collect import CollectState, ListOutputs, collect
from streams.collect.crawl import Crawler, json_ld_postings, posting_to_post
from tests.http_server import serve

pytestmark = pytest.mark.integration

LOOPBACK = ("127.0.0.0/8",)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ld(doc: Any) -> str:
    return f'<script type="application/ld+json">{json.dumps(doc)}</script>'


def page(body: str, head: str = "") -> str:
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"


POSTING_1 = {
    "@context": "https://schema.org",
    "@type": "SocialMediaPosting",
    "@id": "/posts/1",
    "headline": "Ferry timetable",
    "articleBody": "The winter ferry timetable starts on Monday #harbour",
    "datePublished": "2026-11-27T08:00:00Z",
    "inLanguage": "en",
    "author": {"@type": "Person", "name": "Harbour Office", "url": "/people/office"},
    "image": {"@type": "ImageObject", "url": "/media/ferry.jpg"},
    "interactionStatistic": [
        {
            "@type": "InteractionCounter",
            "interactionType": "https://schema.org/LikeAction",
            "userInteractionCount": 12,
        },
        {
            "@type": "InteractionCounter",
            "interactionType": {"@type": "ShareAction"},
            "userInteractionCount": 3,
        },
    ],
}


def site_pages(other: str) -> dict[str, tuple[str, str]]:
    """path -> (content type, body)."""
    html = "text/html; charset=utf-8"
    index_links = [
        "/posts/1",
        "/posts/1#comments",
        "posts/2",
        "/posts/3",
        "/og/article",
        "/private/secret",
        "/bad/jsonld",
        "/nodate",
        "/feed.xml",
        "/redirect-out",
        f"{other}/elsewhere",
        "mailto:office@example.org",
    ]
    links = "".join(f'<a href="{h}">x</a>' for h in index_links)
    return {
        "/": (html, page(links + '<a rel="nofollow" href="/nofollow">n</a>')),
        "/posts/1": (html, page('<a href="/">home</a>', ld(POSTING_1))),
        "/posts/2": (
            html,
            page(
                "",
                ld(
                    {
                        "@context": "https://schema.org",
                        "@graph": [
                            {"@type": "WebPage", "@id": "/posts/2"},
                            {
                                "@type": "DiscussionForumPosting",
                                "url": "/posts/2",
                                "text": "Who saw the tall ship this morning?",
                                "datePublished": "2026-11-27T09:30:00+01:00",
                                "author": {"@type": "Person", "alternateName": "@gull"},
                                "interactionStatistic": {
                                    "@type": "InteractionCounter",
                                    "interactionType": "https://schema.org/CommentAction",
                                    "userInteractionCount": 7,
                                },
                            },
                        ],
                    }
                ),
            ),
        ),
        "/posts/3": (
            html,
            page(
                "",
                ld(
                    [
                        {"@type": "BreadcrumbList", "itemListElement": []},
                        {
                            "@type": "SocialMediaPosting",
                            "url": "/posts/3",
                            "articleBody": "Storm footage from the pier",
                            "datePublished": "2026-11-27T10:00:00Z",
                            "author": "pier-cam",
                            "video": {"@type": "VideoObject", "contentUrl": "/media/storm.mp4"},
                        },
                    ]
                ),
            ),
        ),
        "/og/article": (
            html,
            page(
                "",
                '<meta property="og:type" content="article">'
                '<meta property="og:title" content="Harbour opens new quay">'
                '<meta property="og:description" content="Larger ships can now dock.">'
                '<meta property="og:image" content="/media/quay.jpg">'
                '<meta property="og:locale" content="en_GB">'
                '<meta property="article:published_time" content="2026-11-26T15:00:00Z">'
                '<meta property="article:author" content="harbour-news">',
            ),
        ),
        "/private/secret": (
            html,
            page("", ld({**POSTING_1, "@id": "/private/secret", "headline": "private"})),
        ),
        "/bad/jsonld": (
            html,
            page("", '<script type="application/ld+json">{"@type": "SocialMediaPosting",</script>'),
        ),
        "/nodate": (
            html,
            page("", ld({"@type": "SocialMediaPosting", "text": "undated", "author": "x"})),
        ),
        "/feed.xml": ("application/rss+xml", "<rss></rss>"),
        "/nofollow": (html, page("", ld({**POSTING_1, "@id": "/nofollow"}))),
    }


ROBOTS = "User-agent: *\nDisallow: /private/\nCrawl-delay: 1\n\nUser-agent: BadBot\nDisallow: /\n"


class Site:
    def __init__(self) -> None:
        self.requests: list[tuple[float, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.robots_status = 200
        self.fail_once: dict[str, int] = {}  # path -> status of its first answer


@pytest.fixture
def sites() -> Iterator[tuple[str, Site, str, Site]]:
    """The allowed site on 127.0.0.1 and an outside one on 127.0.0.2."""
    site, outside = Site(), Site()
    outside_port = _free_port("127.0.0.2")
    other = f"http://127.0.0.2:{outside_port}"

    def app_for(recorder: Site) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            recorder.requests.append((time.monotonic(), request.path_qs))
            recorder.in_flight += 1
            recorder.max_in_flight = max(recorder.max_in_flight, recorder.in_flight)
            try:
                await asyncio.sleep(0.05)
                if request.path == "/robots.txt":
                    if recorder.robots_status != 200:
                        return web.Response(status=recorder.robots_status)
                    return web.Response(text=ROBOTS, content_type="text/plain")
                if request.path in recorder.fail_once:
                    status = recorder.fail_once.pop(request.path)
                    return web.Response(status=status, headers={"Retry-After": "1"})
                if request.path == "/redirect-out":
                    raise web.HTTPFound(f"{other}/landing")
                pages = site_pages(other)
                if request.path not in pages:
                    raise web.HTTPNotFound()
                content_type, body = pages[request.path]
                return web.Response(body=body.encode(), headers={"Content-Type": content_type})
            finally:
                recorder.in_flight -= 1

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        return app

    with (
        serve(app_for(site), "127.0.0.1", _free_port()) as base,
        serve(app_for(outside), "127.0.0.2", outside_port),
    ):
        yield base, site, other, outside


def crawler(base: str, **overrides: Any) -> Crawler:
    options: dict[str, Any] = {
        "allowed_networks": LOOPBACK,
        "delay_s": 0.1,
        "page_size": 8,
    }
    options.update(overrides)
    return Crawler([f"{base}/"], ["127.0.0.1"], **options)


def test_crawl_obeys_robots_allow_list_delay_and_extracts_posts(
    sites: tuple[str, Site, str, Site], tmp_path: Path
) -> None:
    base, site, _other, outside = sites
    site.fail_once = {"/posts/2": 429}
    source = crawler(base)
    outputs = ListOutputs()
    result = collect(source, CollectState(tmp_path / "c.json"), outputs)
    paths = [p for _, p in site.requests]
    assert "/private/secret" not in paths  # robots.txt forbids it
    assert "/nofollow" not in paths
    assert outside.requests == []  # never touched: not on the allow-list
    assert paths[0] == "/robots.txt" and paths.count("/robots.txt") == 1
    assert paths.count("/posts/2") == 2 and source.stats.backed_off_s >= 1.0  # 429: again
    paths.remove("/posts/2")
    assert len(paths) == len(set(paths))  # the #fragment link is the same page
    starts = [t for t, _ in site.requests]
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.95  # Crawl-delay: 1
    assert site.max_in_flight == 1  # one request to the host at once

    by_text = {p["text"]: p for p in outputs.posts}
    assert sorted(by_text) == [
        "Harbour opens new quay\n\nLarger ships can now dock.",
        "Storm footage from the pier",
        "The winter ferry timetable starts on Monday #harbour",
        "Who saw the tall ship this morning?",
    ]
    ferry = by_text["The winter ferry timetable starts on Monday #harbour"]
    assert ferry["media"] == [{"kind": "image", "uri": f"{base}/media/ferry.jpg"}]
    assert ferry["engagement"] == {"likes": 12, "shares": 3}
    assert ferry["author_id"] == "/people/office" and ferry["lang"] == "en"
    assert by_text["Who saw the tall ship this morning?"]["engagement"] == {"comments": 7}
    assert by_text["Who saw the tall ship this morning?"]["author_id"] == "@gull"
    storm = by_text["Storm footage from the pier"]
    assert storm["media"] == [{"kind": "video", "uri": f"{base}/media/storm.mp4"}]
    quay = by_text["Harbour opens new quay\n\nLarger ships can now dock."]
    assert quay["lang"] == "en" and quay["author_id"] == "harbour-news"
    assert quay["media"] == [{"kind": "image", "uri": f"{base}/media/quay.jpg"}]
    assert sorted(d["detail"].split(" on ")[0].split(":")[0] for d in outputs.dead) == [
        "ValueError",
        "ValueError",
    ]
    assert any("datePublished" in d["detail"] for d in outputs.dead)
    assert any("not JSON" in d["detail"] for d in outputs.dead)
    assert source.stats.refused == {
        "disallowed by robots.txt": 1,
        "host not on the allow-list": 2,  # the link and the redirect's target
    }
    assert result.skipped["not an HTML page"] == 1


def test_crawl_resumes_its_frontier_without_refetching(
    sites: tuple[str, Site, str, Site], tmp_path: Path
) -> None:
    base, site, _, _ = sites
    path = tmp_path / "c.json"
    first = ListOutputs()
    collect(crawler(base, page_size=2), CollectState.load(path), first, max_posts=1)
    assert 1 <= len(first.posts) < 4
    second = ListOutputs()
    collect(crawler(base, page_size=2), CollectState.load(path), second)
    ids = [p["post_id"] for p in first.posts + second.posts]
    assert len(ids) == len(set(ids)) == 4
    pages = [p for _, p in site.requests if p != "/robots.txt"]
    assert len(pages) == len(set(pages))  # no page fetched twice across the restart


def test_the_address_guard_and_robots_failures(
    sites: tuple[str, Site, str, Site], tmp_path: Path
) -> None:
    base, site, _, _ = sites
    guarded = crawler(base, allowed_networks=())  # loopback is not public
    outputs = ListOutputs()
    collect(guarded, CollectState(tmp_path / "a.json"), outputs)
    assert site.requests == [] and outputs.posts == []
    assert guarded.stats.refused == {"127.0.0.1 is not a public address": 1}
    named = Crawler([f"{base.replace('127.0.0.1', 'localhost')}/"], ["localhost"], delay_s=0.1)
    collect(named, CollectState(tmp_path / "b.json"), outputs)
    assert site.requests == []  # the resolver refused what localhost resolves to
    assert [why for why in named.stats.refused] == [
        "localhost resolves only to non-public addresses (127.0.0.1)"
    ]

    site.robots_status = 503  # RFC 9309: unreachable robots.txt -> fetch nothing
    collect(crawler(base), CollectState(tmp_path / "c.json"), outputs)
    assert [p for _, p in site.requests] == ["/robots.txt"]
    site.robots_status = 404  # no robots.txt -> no rules
    unruly = ListOutputs()
    collect(crawler(base, delay_s=0.0), CollectState(tmp_path / "d.json"), unruly)
    assert "/private/secret" in [p for _, p in site.requests]
    assert len(unruly.posts) == 5  # the private page's post too (nofollow is still not followed)


def test_the_cli_crawls_to_jsonl(
    sites: tuple[str, Site, str, Site],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, _, _, outside = sites
    out = tmp_path / "web.jsonl"
    args = ["collect", "crawl", "--seed", f"{base}/", "--allow-host", "127.0.0.1"]
    args += ["--out", str(out), "--state", str(tmp_path / "s.json"), "--delay", "0"]
    monkeypatch.setenv("POSTPULSE_FETCH_ALLOWED_NETWORKS", json.dumps(list(LOOPBACK)))
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert ": 4 new posts" in printed and "1 disallowed by robots.txt" in printed
    assert len(out.read_text().splitlines()) == 4
    assert len(out.with_suffix(".dlq.jsonl").read_text().splitlines()) == 2
    assert outside.requests == []


def test_json_ld_postings_and_mapping() -> None:
    doc = {"@graph": [{"@type": ["Thing", "SocialMediaPosting"], "datePublished": "2026-01-01"}]}
    assert len(json_ld_postings(doc)) == 1
    with pytest.raises(ValueError, match="author"):
        posting_to_post(json_ld_postings(doc)[0], "https://a.example/p")
