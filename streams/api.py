"""``postpulse api``: the HTTP search and query API (aiohttp).

A process of its own, not pages on the worker's web server: the API answers requests
while workers restart and rebalance, scales with query load rather than with
partitions, and loads the encoders only to embed uploaded queries. Every route but
``/healthz``, ``/readyz`` and ``/openapi.json`` needs ``Authorization: Bearer <token>``
(``POSTPULSE_API_TOKEN``, compared in constant time). Errors are JSON:
``{"error": {"status": 422, "message": "..."}}``. The OpenAPI description is
:func:`streams.openapi.openapi_spec`, committed as docs/openapi.json.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pymilvus.exceptions import MilvusException

from streams.openapi import DURATION_PATTERN, LABEL_PATTERN, MAX_EPOCH_MS, openapi_spec
from streams.records import ID_PATTERN
from streams.search import (
    MAX_OFFSET,
    MAX_TOP_K,
    MediaQuery,
    SearchError,
    SearchFilters,
    SearchService,
    hit_json,
)
from streams.settings import Settings

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
MAX_QUERIES = 64
SERVICE_KEY = web.AppKey("service", SearchService)
SETTINGS_KEY = web.AppKey("settings", Settings)
EXECUTOR_KEY = web.AppKey("executor", ThreadPoolExecutor)
TRENDS_KEY = web.AppKey("trends", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# --- request models -------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


EpochMs = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS)]
Label = Annotated[str, Field(min_length=1, max_length=64, pattern=LABEL_PATTERN)]
Duration = Annotated[str, Field(max_length=16, pattern=DURATION_PATTERN)]


class FiltersModel(Strict):
    since: EpochMs | None = Field(default=None, description="created_at >= (epoch ms)")
    until: EpochMs | None = Field(default=None, description="created_at < (epoch ms)")
    platform: list[Label] = Field(default=[], max_length=32)
    category: list[Label] = Field(default=[], max_length=32)
    sentiment: list[Literal["negative", "neutral", "positive"]] = Field(default=[], max_length=3)
    min_popularity: float | None = Field(default=None, allow_inf_nan=False)
    max_popularity: float | None = Field(default=None, allow_inf_nan=False)

    def filters(self) -> SearchFilters:
        return SearchFilters(
            since_ms=self.since,
            until_ms=self.until,
            platforms=tuple(self.platform),
            categories=tuple(self.category),
            sentiments=tuple(self.sentiment),
            min_popularity=self.min_popularity,
            max_popularity=self.max_popularity,
        )


class MediaModel(Strict):
    kind: Literal["image", "audio", "video"]
    data_b64: str = Field(min_length=1)
    mime: str | None = Field(default=None, max_length=128)

    def query(self) -> MediaQuery:
        try:
            data = base64.b64decode(self.data_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SearchError(f"media data_b64 is not base64: {exc}", status=422) from exc
        return MediaQuery(self.kind, data, self.mime)


class QueryModel(Strict):
    post_id: str | None = Field(default=None, pattern=ID_PATTERN)
    text: str | None = Field(default=None, max_length=20_000)
    media: list[MediaModel] = Field(default=[], max_length=16)

    @model_validator(mode="after")
    def one_kind(self) -> QueryModel:
        by_content = bool((self.text and self.text.strip()) or self.media)
        if bool(self.post_id) == by_content:
            raise ValueError("a query is a post_id, or text and/or media (not both, not neither)")
        return self


class SearchRequest(Strict):
    queries: list[QueryModel] = Field(min_length=1, max_length=MAX_QUERIES)
    filters: FiltersModel = FiltersModel()
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class PageParams(FiltersModel):
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class UploadParams(PageParams):
    kind: Literal["image", "audio", "video"]


class DuplicateParams(Strict):
    threshold: float | None = Field(default=None, gt=0, le=1)
    top_k: int = Field(default=50, ge=1, le=MAX_TOP_K)


class EventParams(Strict):
    since: EpochMs
    until: EpochMs
    threshold: float | None = Field(default=None, gt=0, le=1)
    window: Duration | None = None
    min_size: int = Field(default=2, ge=1, le=10_000)


class TrendParams(Strict):
    window: Duration | None = None
    step: Duration | None = None
    top: int | None = Field(default=None, ge=1, le=1000)
    at: EpochMs | None = None
    kinds: list[Literal["category", "hashtag", "phrase", "emerging"]] = Field(default=[])


LIST_PARAMS = frozenset({"platform", "category", "sentiment"})


def query_params(request: web.Request, model: type[M]) -> M:
    """Validate the query string against ``model`` (repeated keys become lists)."""
    values: dict[str, Any] = {}
    for key in set(request.query):
        items = request.query.getall(key)
        if key in LIST_PARAMS or key == "kinds":
            values[key] = [v for item in items for v in item.split(",") if v]
        else:
            values[key] = items[-1]
    return model.model_validate(values)


async def json_body(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json":
        raise SearchError("send the body as application/json", status=415)
    raw = await request.read()
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        raise
    except ValueError as exc:
        raise SearchError(f"body is not JSON: {exc}", status=422) from exc


# --- middlewares ----------------------------------------------------------------------


def error_body(status: int, message: str, details: Any = None) -> web.Response:
    error: dict[str, Any] = {"status": status, "message": message}
    if details is not None:
        error["details"] = details
    return web.json_response({"error": error}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON with a clear message; a bug is logged and answered 500."""
    try:
        return await handler(request)
    except ValidationError as exc:
        details = [
            {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return error_body(
            422,
            "invalid request: " + "; ".join(f"{d['loc'] or 'body'}: {d['msg']}" for d in details),
            details,
        )
    except SearchError as exc:
        return error_body(exc.status, str(exc))
    except MilvusException as exc:
        log.warning("API %s %s: Milvus error %s", request.method, request.path, exc)
        return error_body(503, f"Milvus error: {exc.message}")
    except web.HTTPRequestEntityTooLarge as exc:
        return error_body(413, f"request body too large: {exc.text or ''}".strip())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_body(exc.status, exc.reason)
    except Exception:
        log.exception("API %s %s failed", request.method, request.path)
        return error_body(500, "internal error (logged by the server)")


def auth_middleware(settings: Settings) -> Any:
    expected = settings.api_token.get_secret_value().encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), expected
            ):
                response = error_body(401, "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = 'Bearer realm="postpulse"'
                return response
        return await handler(request)

    return auth


def size_limit(settings: Settings) -> Any:
    limit = settings.api_max_body_bytes

    @web.middleware
    async def limit_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > limit:
            return error_body(413, f"request body of {length} bytes is over the {limit} limit")
        return await handler(request)

    return limit_body


# --- handlers -------------------------------------------------------------------------


def stored_id(request: web.Request) -> str:
    """The ``post_id`` of the path; an id no post can have is 404 without a query."""
    post_id = request.match_info["post_id"]
    if not re.match(ID_PATTERN, post_id):
        raise SearchError(f"post {post_id!r} is not stored (not a valid post id)", status=404)
    return post_id


async def in_executor(request: web.Request, fn: Callable[[], T]) -> T:
    """Milvus and ONNX Runtime calls block: one worker thread runs them in turn."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[EXECUTOR_KEY], fn)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    try:
        count = await in_executor(request, service.index.count)
    except SearchError as exc:
        return error_body(503, f"not ready: {exc}")
    return web.json_response({"status": "ready", "posts": count})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec())


async def search(request: web.Request) -> web.Response:
    body = await json_body(request, SearchRequest)
    service = request.app[SERVICE_KEY]
    filters = body.filters.filters()

    def run() -> list[list[dict[str, Any]]]:
        import numpy as np

        vectors = [
            service.embedding_of(q.post_id)
            if q.post_id
            else service.embed_query(q.text, [m.query() for m in q.media])
            for q in body.queries
        ]
        # one Milvus call for all queries that exclude the same posts (a stored post
        # is never its own hit; text and media queries exclude nothing)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, q in enumerate(body.queries):
            groups.setdefault((q.post_id,) if q.post_id else (), []).append(i)
        results: list[list[dict[str, Any]]] = [[] for _ in vectors]
        for excluded, idx in groups.items():
            pages = service.search(
                np.stack([vectors[i] for i in idx]), filters, body.top_k, body.offset, excluded
            )
            for i, page in zip(idx, pages, strict=True):
                results[i] = [hit_json(h) for h in page]
        return results

    results = await in_executor(request, run)
    return web.json_response(
        {"top_k": body.top_k, "offset": body.offset, "results": [{"hits": r} for r in results]}
    )


async def search_upload(request: web.Request) -> web.Response:
    params = query_params(request, UploadParams)
    data = await request.read()
    if not data:
        raise SearchError("the body is empty: send the media file's bytes", status=422)
    service = request.app[SERVICE_KEY]
    mime = request.content_type if request.content_type != "application/octet-stream" else None
    media = MediaQuery(params.kind, data, mime)
    hits = await in_executor(
        request,
        lambda: service.similar_to_query(
            None, [media], params.filters(), params.top_k, params.offset
        ),
    )
    return web.json_response(
        {"top_k": params.top_k, "offset": params.offset, "hits": [hit_json(h) for h in hits]}
    )


async def get_post(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    post_id = stored_id(request)
    row = await in_executor(request, lambda: service.get_post(post_id))
    return web.json_response(row)


async def similar_posts(request: web.Request) -> web.Response:
    params = query_params(request, PageParams)
    service = request.app[SERVICE_KEY]
    post_id = stored_id(request)
    hits = await in_executor(
        request,
        lambda: service.similar_to_post(post_id, params.filters(), params.top_k, params.offset),
    )
    return web.json_response(
        {"top_k": params.top_k, "offset": params.offset, "hits": [hit_json(h) for h in hits]}
    )


async def duplicates(request: web.Request) -> web.Response:
    params = query_params(request, DuplicateParams)
    service = request.app[SERVICE_KEY]
    post_id = stored_id(request)
    threshold = params.threshold or request.app[SETTINGS_KEY].near_duplicate_threshold
    hits = await in_executor(
        request, lambda: service.near_duplicates(post_id, threshold, params.top_k)
    )
    return web.json_response({"threshold": threshold, "hits": [hit_json(h) for h in hits]})


async def event_groups(request: web.Request) -> web.Response:
    from streams.stages.trends import parse_duration

    params = query_params(request, EventParams)
    if params.until <= params.since:
        raise SearchError("until must be after since", status=422)
    service = request.app[SERVICE_KEY]
    try:
        window = parse_duration(params.window) if params.window else None
    except ValueError as exc:
        raise SearchError(str(exc), status=422) from exc
    groups = await in_executor(
        request,
        lambda: service.event_groups(
            params.since, params.until, params.threshold, window, params.min_size
        ),
    )
    group_id = request.match_info.get("group_id")
    if group_id is not None:
        found = [g for g in groups if g.group_id == group_id]
        if not found:
            raise SearchError(f"no event group {group_id!r} in that range", status=404)
        return web.json_response(found[0].to_json())
    return web.json_response({"groups": [g.to_json() for g in groups]})


async def trends(request: web.Request) -> web.Response:
    from streams.trending import trends_query

    params = query_params(request, TrendParams)
    settings = request.app[SETTINGS_KEY]
    state = request.app[TRENDS_KEY]

    def run() -> dict[str, Any]:
        reader = state.get("reader")
        if reader is None:
            if time.monotonic() - state.get("failed_at", -1e9) < 10:
                raise SearchError(f"trends unavailable: {state['error']}", status=503)
            from streams.settings import bootstrap_servers, broker_profile
            from streams.topics import trends_changelog_topic
            from streams.trending import ChangelogTrendReader

            try:
                reader = ChangelogTrendReader(
                    bootstrap_servers(settings.broker_url),
                    trends_changelog_topic(settings),
                    broker_profile(settings),
                )
            except Exception as exc:  # no broker: say so, and do not retry on every call
                state.update(failed_at=time.monotonic(), error=f"{type(exc).__name__}: {exc}")
                raise SearchError(f"trends unavailable: {state['error']}", status=503) from exc
            state["reader"] = reader
        try:
            snapshot = reader.snapshot()
        except LookupError as exc:  # no trends worker has written yet
            raise SearchError(str(exc), status=404) from exc
        except Exception as exc:
            raise SearchError(f"trends unavailable: {exc}", status=503) from exc
        return trends_query(
            snapshot,
            settings,
            window=params.window,
            step=params.step,
            top=params.top,
            at_ms=params.at,
            kinds=list(params.kinds) or None,
        )

    try:
        body = await in_executor(request, run)
    except ValueError as exc:  # e.g. a window that is not stored
        raise SearchError(str(exc), status=422) from exc
    return web.json_response(body)


# --- the application ------------------------------------------------------------------

ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/healthz", health),
    ("GET", "/readyz", ready),
    ("GET", "/openapi.json", openapi),
    ("POST", "/v1/search", search),
    ("POST", "/v1/search/upload", search_upload),
    ("GET", "/v1/posts/{post_id}", get_post),
    ("GET", "/v1/posts/{post_id}/similar", similar_posts),
    ("GET", "/v1/posts/{post_id}/duplicates", duplicates),
    ("GET", "/v1/events", event_groups),
    ("GET", "/v1/events/{group_id}", event_groups),
    ("GET", "/v1/trends", trends),
]


def create_api(settings: Settings, service: SearchService | None = None) -> web.Application:
    """The API application; ``service`` defaults to one opened from ``settings``."""
    if not settings.api_token.get_secret_value():
        raise SearchError("set POSTPULSE_API_TOKEN: the API refuses to run without a bearer token")
    app = web.Application(
        client_max_size=settings.api_max_body_bytes,
        middlewares=[errors, size_limit(settings), auth_middleware(settings)],
    )
    app[SETTINGS_KEY] = settings
    app[SERVICE_KEY] = service or SearchService(settings)
    app[EXECUTOR_KEY] = ThreadPoolExecutor(1, thread_name_prefix="postpulse-api")
    app[TRENDS_KEY] = {}
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)

    async def close(app: web.Application) -> None:
        app[EXECUTOR_KEY].shutdown(wait=True)
        reader = app[TRENDS_KEY].get("reader")
        if reader is not None:
            reader.close()
        app[SERVICE_KEY].close()

    app.on_cleanup.append(close)
    return app


def run_api(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM."""
    app = create_api(settings)
    print(
        f"postpulse api on http://{settings.api_host}:{settings.api_port} "
        f"(Milvus {settings.milvus_uri}, collection {settings.milvus_collection}); "
        "OpenAPI at /openapi.json",
        flush=True,
    )
    web.run_app(app, host=settings.api_host, port=settings.api_port, print=None)
    return 0
