"""The media fetcher against a real local HTTP server: SSRF guard, caps, timeouts, sniffing."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from PIL import Image

from streams.broker import free_port
from streams.records import DeadLetterReason
from streams.stages.fetch import (
    AddressPolicy,
    FetchedMedia,
    FetchError,
    FetchLimits,
    MediaFetcher,
    check_kind,
    sniff,
)
from tests.http_server import serve

HOST = "127.0.0.2"  # loopback, allowed explicitly below; 127.0.0.1 stays forbidden


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), "green").save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
ZIP = b"PK\x03\x04" + b"\x00" * 200


@dataclass
class Server:
    base: str
    port: int


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = free_port(HOST)
    other_port = free_port("127.0.0.1")

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def zip_as_jpeg(_: web.Request) -> web.Response:
        return web.Response(body=ZIP, content_type="image/jpeg")

    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(body=PNG)

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(50):
            await resp.write(b"x")
            await asyncio.sleep(0.2)
        return resp

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"0" * 300_000)

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # no Content-Length: the cap must hold while streaming
        await resp.prepare(request)
        for _ in range(100):
            await resp.write(b"1" * 10_000)
        return resp

    async def to_loopback(_: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{other_port}/image.png")

    async def to_image(_: web.Request) -> web.Response:
        raise web.HTTPFound("/image.png")

    async def loop_redirect(request: web.Request) -> web.Response:
        n = int(request.query.get("n", "0"))
        raise web.HTTPFound(f"/loop?n={n + 1}")

    async def missing(_: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app = web.Application()
    app.add_routes(
        [
            web.get("/image.png", image),
            web.get("/zip.jpg", zip_as_jpeg),
            web.get("/slow", slow),
            web.get("/trickle", trickle),
            web.get("/big", big),
            web.get("/big-chunked", big_chunked),
            web.get("/to-loopback", to_loopback),
            web.get("/to-image", to_image),
            web.get("/loop", loop_redirect),
            web.get("/missing", missing),
        ]
    )
    with serve(app, HOST, port) as base:
        yield Server(base, port)


def fetch(urls: list[str], **limits: object) -> list[FetchedMedia | FetchError]:
    base = {
        "allowed_networks": (f"{HOST}/32",),
        "read_timeout_s": 1.0,
        "total_timeout_s": 3.0,
        "max_bytes": 100_000,
    }
    base.update(limits)
    return asyncio.run(MediaFetcher(FetchLimits(**base)).fetch_many(urls))  # type: ignore[arg-type]


def reason(result: FetchedMedia | FetchError) -> DeadLetterReason:
    assert isinstance(result, FetchError), result
    return result.reason


def test_fetches_an_image_and_follows_a_checked_redirect(server: Server) -> None:
    ok, redirected = fetch([f"{server.base}/image.png", f"{server.base}/to-image"])
    assert isinstance(ok, FetchedMedia) and ok.data == PNG and ok.sniffed == "image"
    assert ok.content_type == "image/png"
    assert isinstance(redirected, FetchedMedia) and redirected.data == PNG
    assert redirected.redirects == [f"{server.base}/to-image"]


def test_ssrf_loopback_private_and_redirects_are_refused(server: Server) -> None:
    results = fetch(
        [
            f"{server.base}/to-loopback",
            "http://127.0.0.1:9/x.png",
            "http://localhost:9/x.png",
            "http://10.0.0.1/x.png",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x.png",
            "http://[::ffff:127.0.0.1]/x.png",
            "http://0.0.0.0/x.png",
        ]
    )
    assert [reason(r) for r in results] == [DeadLetterReason.MEDIA_FORBIDDEN_ADDRESS] * len(results)
    # without the explicit allowance, even the test host is refused
    (refused,) = fetch([f"{server.base}/image.png"], allowed_networks=())
    assert reason(refused) is DeadLetterReason.MEDIA_FORBIDDEN_ADDRESS


def test_caps_timeouts_and_errors_each_have_a_reason(server: Server) -> None:
    started = time.monotonic()
    results = fetch(
        [
            f"{server.base}/big",
            f"{server.base}/big-chunked",
            f"{server.base}/slow",
            f"{server.base}/trickle",
            f"{server.base}/loop",
            f"{server.base}/missing",
            f"http://{HOST}:{free_port(HOST)}/nothing-listens",
            "ftp://example.com/a.png",
        ]
    )
    elapsed = time.monotonic() - started
    assert [reason(r) for r in results] == [
        DeadLetterReason.MEDIA_TOO_LARGE,
        DeadLetterReason.MEDIA_TOO_LARGE,
        DeadLetterReason.MEDIA_TIMEOUT,
        DeadLetterReason.MEDIA_TIMEOUT,
        DeadLetterReason.TOO_MANY_REDIRECTS,
        DeadLetterReason.MEDIA_UNAVAILABLE,
        DeadLetterReason.MEDIA_UNAVAILABLE,
        DeadLetterReason.UNSUPPORTED_MEDIA,
    ]
    assert elapsed < 15, "the fetches run concurrently and each is bounded"


def test_zip_served_as_jpeg_is_a_type_mismatch(server: Server) -> None:
    (zipped,) = fetch([f"{server.base}/zip.jpg"])
    assert isinstance(zipped, FetchedMedia) and zipped.sniffed == "archive"
    with pytest.raises(FetchError) as err:
        check_kind("image", zipped.data, zipped.content_type)
    assert err.value.reason is DeadLetterReason.MEDIA_TYPE_MISMATCH
    assert check_kind("image", PNG, "image/png") == "image"


def test_sniffing_and_policy_units() -> None:
    assert sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "audio"
    assert sniff(b"\x00\x00\x00\x20ftypisom") == "video"
    assert sniff(b"\x1a\x45\xdf\xa3") == "video"
    assert sniff(b"fLaC") == "audio" and sniff(b"OggS") == "audio" and sniff(b"ID3\x04") == "audio"
    assert sniff(b"hello") is None
    import ipaddress

    policy = AddressPolicy(["192.168.5.0/24"])
    assert policy.permits(ipaddress.ip_address("93.184.216.34"))
    assert policy.permits(ipaddress.ip_address("192.168.5.9"))
    for bad in ("192.168.6.1", "127.0.0.1", "fe80::1", "::1", "100.64.0.1", "224.0.0.1"):
        assert not policy.permits(ipaddress.ip_address(bad)), bad
