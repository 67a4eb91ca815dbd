"""Long-lived connections (server-sent events, WebSocket) read in pages by the
synchronous collector: each source owns a private event loop; the connection stays open
on it between pages and is re-opened with back-off when it drops."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from streams.collect.core import CollectError, HttpClient, lower_headers, redact

log = logging.getLogger(__name__)
T = TypeVar("T")


class LoopSource:
    """Base of the streaming sources: a private event loop and one HTTP session."""

    def __init__(self, client: HttpClient, page_size: int, page_wait_s: float) -> None:
        self.client = client
        self.page_size = page_size
        self.page_wait_s = page_wait_s
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self.reconnects = 0

    def run(self, coro: Awaitable[T]) -> T:
        return self._loop.run_until_complete(coro)

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"User-Agent": self.client.user_agent}
            if self.client.token:
                headers["Authorization"] = f"Bearer {self.client.token}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(sock_connect=self.client.timeout_s),
                trust_env=False,
            )
        return self._session

    async def with_retries(self, url: str, opener: Callable[[], Awaitable[Any]]) -> Any:
        """``opener()`` until it succeeds: 429/503 wait out ``Retry-After``, 5xx and
        connection errors back off exponentially, other 4xx are final."""
        delay = self.client.backoff_s
        for attempt in range(self.client.max_retries + 1):
            try:
                return await opener()
            except aiohttp.WSServerHandshakeError as exc:
                status, headers = exc.status, lower_headers((exc.headers or {}).items())
            except aiohttp.ClientResponseError as exc:
                status, headers = exc.status, lower_headers((exc.headers or {}).items())
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if attempt == self.client.max_retries:
                    raise CollectError(f"connecting to {redact(url)} failed: {exc}") from exc
                log.warning(
                    "connecting to %s failed (%s); retrying in %.1fs", redact(url), exc, delay
                )
                await self.sleep(delay)
                delay *= 2
                continue
            wait = self.client.retry_wait(url, status, headers, attempt, delay)
            if wait is None:
                raise CollectError(f"connecting to {redact(url)}: HTTP {status}")
            await self.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(self.client.budget(seconds))

    def deadline(self) -> float:
        return time.monotonic() + self.page_wait_s

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def close(self) -> None:
        if not self._loop.is_closed():
            self.run(self._close_all())
            self._loop.close()

    async def _close_all(self) -> None:
        await self._close()
