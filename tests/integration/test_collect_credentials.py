"""Collectors keep credentials home: a redirect to another origin never carries the
bearer token (urllib's add_header forwarded it), and robots.txt is matched as RFC 9309
says. Real HTTP servers on two loopback addresses (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiohttp import web

from streams.broker import free_port
from streams.collect.core import HttpClient
from streams.collect.crawl import robots_rules
from streams.collect.streaming import LoopSource
from tests.http_server import serve

pytestmark = pytest.mark.integration


def _recording_app(
    seen: list[tuple[str, str | None]], redirect_to: str | None = None
) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.headers.get("Authorization")))
        if redirect_to is not None and request.path.startswith("/api"):
            raise web.HTTPFound(redirect_to + request.path_qs)
        if request.path.startswith("/same"):
            raise web.HTTPFound("/landed")
        return web.json_response([])

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


def test_the_token_is_not_sent_to_another_origin_on_a_redirect() -> None:
    foreign: list[tuple[str, str | None]] = []
    home: list[tuple[str, str | None]] = []
    with contextlib.ExitStack() as stack:
        other = stack.enter_context(
            serve(_recording_app(foreign), "127.0.0.2", free_port("127.0.0.2"))
        )
        base = stack.enter_context(
            serve(_recording_app(home, redirect_to=other), "127.0.0.1", free_port())
        )
        client = HttpClient(token="s3cret-token", max_retries=0)
        assert client.get(f"{base}/api/v1/timelines/public").status == 200
        # a redirect within the origin keeps it (the platform's own hosts)
        assert client.get(f"{base}/same/x").status == 200

        # the streaming sources' aiohttp session: the same rule
        async def stream_get() -> int:
            source = LoopSource(client, 10, 1.0)
            session = await source.session()
            try:
                async with session.get(f"{base}/api/v1/streaming") as resp:
                    return resp.status
            finally:
                await session.close()

        assert asyncio.run(stream_get()) == 200
    assert home[0] == ("/api/v1/timelines/public", "Bearer s3cret-token")
    assert ("/landed", "Bearer s3cret-token") in home
    assert [path for path, _ in foreign] == ["/api/v1/timelines/public", "/api/v1/streaming"]
    assert all(auth is None for _, auth in foreign), foreign


ROBOTS = b"""
User-agent: *
Disallow: /news/
Allow: /news/public
Disallow: /*.pdf$
Allow: /shop/
Disallow: /shop/
"""


@pytest.mark.parametrize(
    ("path", "allowed", "why"),
    [
        ("/news/today", False, "disallowed prefix"),
        ("/news/public/today", True, "longest match wins (first-match says no)"),
        ("/files/report.pdf", False, "* and $ (ignored by urllib.robotparser)"),
        ("/files/report.pdf?x=1", True, "$ anchors the end"),
        ("/shop/cart", True, "allow beats disallow on a tie"),
        ("/about", True, "no rule"),
    ],
)
def test_robots_txt_is_matched_as_rfc_9309_says(path: str, allowed: bool, why: str) -> None:
    rules: Any = robots_rules(200, ROBOTS)
    assert rules.can_fetch(f"https://example.org{path}", "postpulse-collector") is allowed, why


def test_robots_txt_unreachable_or_missing() -> None:
    assert not robots_rules(503, b"").can_fetch("https://e.org/a", "x")
    assert robots_rules(404, b"").can_fetch("https://e.org/a", "x")
