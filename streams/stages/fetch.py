"""Fetching media from untrusted URLs: timeouts, byte cap, redirect cap, SSRF guard, sniffing.

Media URLs come from posts anyone can publish, so every hop of every request is
checked: only http(s), only public addresses (loopback, private, link-local,
multicast and reserved ranges are refused unless a network is explicitly allowed),
the resolved address is the one connected to (no DNS-rebinding window), redirects are
followed by hand and re-checked, bodies are streamed and cut at the byte cap, and the
bytes must look like the kind of media the post says they are.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlparse

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from streams.records import DeadLetterReason

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """A URL could not be fetched; carries the dead-letter reason."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on every remote fetch."""

    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 3
    concurrency: int = 16
    allowed_networks: tuple[str, ...] = ()
    user_agent: str = "postpulse-media-fetcher/0.1"


@dataclass
class FetchedMedia:
    """Bytes of one URL, with what the server said and what the bytes are."""

    url: str
    data: bytes
    content_type: str | None
    sniffed: str | None
    redirects: list[str] = field(default_factory=list)


# --- content sniffing ---------------------------------------------------------------------

_IMAGE, _VIDEO, _AUDIO, _ARCHIVE = "image", "video", "audio", "archive"


def sniff(data: bytes) -> str | None:
    """A coarse content class from magic bytes: image, video, audio, archive, or None."""
    head = data[:64]
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")):
        return _IMAGE
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _IMAGE
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _AUDIO
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B ", b"M4P "):
            return _AUDIO
        if brand in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
            return _IMAGE
        return _VIDEO  # mp4/mov/3gp; audio-only MP4s are decided by the decoder
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return _VIDEO  # Matroska / WebM (may be audio-only; the decoder decides)
    if head.startswith((b"OggS", b"fLaC", b"ID3")) or head[:2] in (
        b"\xff\xfb",
        b"\xff\xf3",
        b"\xff\xf2",
    ):
        return _AUDIO
    if head[:2] == b"\xff\xf1" or head[:2] == b"\xff\xf9":
        return _AUDIO  # ADTS AAC
    if head.startswith((b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!")):
        return _ARCHIVE
    return None


_COMPATIBLE = {
    "image": {_IMAGE},
    "video": {_VIDEO},
    "audio": {_AUDIO, _VIDEO},  # audio in an mp4/webm container is common
}


def check_kind(kind: str, data: bytes, content_type: str | None) -> str | None:
    """Raise unless ``data`` plausibly is media of ``kind``; returns the sniffed class."""
    sniffed = sniff(data)
    if sniffed is not None and sniffed not in _COMPATIBLE[kind]:
        raise FetchError(
            DeadLetterReason.MEDIA_TYPE_MISMATCH,
            f"declared {kind} (content-type {content_type or 'none'}) but the bytes are {sniffed}",
        )
    return sniffed


# --- address policy -----------------------------------------------------------------------


class AddressPolicy:
    """Which IP addresses a fetch may connect to."""

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed: list[IPNetwork] = [
            ipaddress.ip_network(n, strict=False) for n in allowed_networks
        ]

    def refuses_literal(self, host: str) -> str | None:
        """Why a host given as an IP literal may not be dialled (``None`` when it may, or
        when it is a name: the guarded resolver checks what a name resolves to)."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return None
        return None if self.permits(literal) else f"{host} is not a public address"

    def permits(self, address: IPAddress) -> bool:
        """Public unicast addresses, plus anything inside an explicitly allowed network."""
        if any(address in net for net in self.allowed):
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return self.permits(address.ipv4_mapped)
        return not (
            address.is_loopback
            or address.is_private
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
            or not address.is_global
        )


class GuardedResolver(AbstractResolver):
    """Resolves names and returns only permitted addresses (so the checked IP is dialled)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror as exc:
            raise FetchError(
                DeadLetterReason.MEDIA_UNAVAILABLE, f"cannot resolve {host}: {exc}"
            ) from exc
        results: list[ResolveResult] = []
        refused = []
        for fam, _type, proto, _canon, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0])
            if not self.policy.permits(address):
                refused.append(str(address))
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=int(sockaddr[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not results:
            raise FetchError(
                DeadLetterReason.MEDIA_FORBIDDEN_ADDRESS,
                f"{host} resolves only to non-public addresses ({', '.join(refused)})",
            )
        return results

    async def close(self) -> None:
        return None


# --- the fetcher ---------------------------------------------------------------------------


class MediaFetcher:
    """Fetches URLs concurrently within :class:`FetchLimits`; one instance per event loop."""

    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self.policy = AddressPolicy(limits.allowed_networks)

    def _check_url(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise FetchError(
                DeadLetterReason.UNSUPPORTED_MEDIA, f"scheme {parsed.scheme!r} is not fetched"
            )
        if not parsed.hostname:
            raise FetchError(DeadLetterReason.MEDIA_UNAVAILABLE, f"no host in {url!r}")
        refused = self.policy.refuses_literal(parsed.hostname)
        if refused:
            raise FetchError(DeadLetterReason.MEDIA_FORBIDDEN_ADDRESS, refused)

    async def fetch_many(self, urls: list[str]) -> list[FetchedMedia | FetchError]:
        """Fetch all URLs concurrently; each result is the media or the error for that URL."""
        if not urls:
            return []
        limits = self.limits
        timeout = aiohttp.ClientTimeout(
            total=limits.total_timeout_s,
            sock_connect=limits.connect_timeout_s,
            sock_read=limits.read_timeout_s,
        )
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.policy), limit=limits.concurrency, use_dns_cache=False
        )
        semaphore = asyncio.Semaphore(limits.concurrency)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": limits.user_agent},
            auto_decompress=False,
            trust_env=False,
        ) as session:

            async def one(url: str) -> FetchedMedia | FetchError:
                async with semaphore:
                    try:
                        return await asyncio.wait_for(
                            self._fetch(session, url), limits.total_timeout_s + 1
                        )
                    except FetchError as exc:
                        return exc
                    except TimeoutError:
                        return FetchError(DeadLetterReason.MEDIA_TIMEOUT, f"{url}: timed out")
                    except aiohttp.ClientError as exc:
                        return FetchError(
                            DeadLetterReason.MEDIA_UNAVAILABLE,
                            f"{url}: {type(exc).__name__}: {exc}",
                        )
                    except OSError as exc:
                        return FetchError(DeadLetterReason.MEDIA_UNAVAILABLE, f"{url}: {exc}")

            return await asyncio.gather(*(one(u) for u in urls))

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> FetchedMedia:
        limits = self.limits
        redirects: list[str] = []
        current = url
        while True:
            self._check_url(current)
            try:
                async with session.get(current, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308):
                        location = resp.headers.get("Location")
                        if not location:
                            raise FetchError(
                                DeadLetterReason.MEDIA_UNAVAILABLE,
                                f"{current}: redirect without Location",
                            )
                        if len(redirects) >= limits.max_redirects:
                            raise FetchError(
                                DeadLetterReason.TOO_MANY_REDIRECTS,
                                f"{url}: more than {limits.max_redirects} redirects",
                            )
                        redirects.append(current)
                        current = urljoin(current, location)
                        continue
                    if resp.status != 200:
                        raise FetchError(
                            DeadLetterReason.MEDIA_UNAVAILABLE, f"{current}: HTTP {resp.status}"
                        )
                    declared = resp.content_length
                    if declared is not None and declared > limits.max_bytes:
                        raise FetchError(
                            DeadLetterReason.MEDIA_TOO_LARGE,
                            f"{current}: Content-Length {declared} over the {limits.max_bytes}-byte cap",
                        )
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        body.extend(chunk)
                        if len(body) > limits.max_bytes:
                            raise FetchError(
                                DeadLetterReason.MEDIA_TOO_LARGE,
                                f"{current}: body over the {limits.max_bytes}-byte cap",
                            )
                    return FetchedMedia(
                        url=current,
                        data=bytes(body),
                        content_type=resp.headers.get("Content-Type"),
                        sniffed=sniff(bytes(body[:64])),
                        redirects=redirects,
                    )
            except aiohttp.ClientConnectorError as exc:
                inner = exc.__cause__ or exc.os_error
                if isinstance(inner, FetchError):
                    raise inner from None
                raise FetchError(DeadLetterReason.MEDIA_UNAVAILABLE, f"{current}: {exc}") from exc
