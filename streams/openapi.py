"""The OpenAPI 3.0 description of ``postpulse api`` (served at ``/openapi.json`` and
committed as docs/openapi.json; a test keeps the two equal and every route described)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streams.records import ID_PATTERN

MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
DURATION_PATTERN = r"^[1-9]\d{0,9}(ms|s|m|min|h|d|w)?$"
LABEL_PATTERN = r"^[^\x00-\x1f\x7f\"\\]+$"  # no control characters, quotes or backslashes
DURATION = {"type": "string", "pattern": DURATION_PATTERN, "maxLength": 16}
EPOCH_MS = {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH_MS}
LABEL = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": LABEL_PATTERN}
SENTIMENT = {"type": "string", "enum": ["negative", "neutral", "positive"]}
ERROR_REF = {"$ref": "#/components/responses/Error"}


def _param(
    name: str,
    schema: dict[str, Any],
    description: str,
    *,
    required: bool = False,
    where: str = "query",
    explode: bool | None = None,
) -> dict[str, Any]:
    param: dict[str, Any] = {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }
    if explode is not None:
        param["style"] = "form"
        param["explode"] = explode
    return param


def _list(items: dict[str, Any], max_items: int) -> dict[str, Any]:
    return {"type": "array", "items": items, "maxItems": max_items}


FILTER_PARAMS = [
    _param("since", EPOCH_MS, "created_at from (epoch ms, inclusive)"),
    _param("until", EPOCH_MS, "created_at before (epoch ms)"),
    _param("platform", _list(LABEL, 32), "platforms", explode=True),
    _param("category", _list(LABEL, 32), "categories", explode=True),
    _param("sentiment", _list(SENTIMENT, 3), "sentiments", explode=True),
    _param(
        "min_popularity", {"type": "number"}, "popularity at least (posts without one excluded)"
    ),
    _param("max_popularity", {"type": "number"}, "popularity at most (posts without one excluded)"),
]
PAGE_PARAMS = [
    _param("top_k", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10}, "hits"),
    _param(
        "offset",
        {"type": "integer", "minimum": 0, "maximum": 10000, "default": 0},
        "hits to skip (paging)",
    ),
]
POST_ID_SCHEMA = {"type": "string", "pattern": ID_PATTERN, "maxLength": 128}
POST_ID = _param("post_id", POST_ID_SCHEMA, "a stored post's id", where="path")


def _ok(schema_ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): ERROR_REF for code in codes}


def _secured(op: dict[str, Any], *codes: int) -> dict[str, Any]:
    op["security"] = [{"bearer": []}]
    op["responses"].update(_errors(401, 422, *codes))
    return op


def openapi_spec() -> dict[str, Any]:
    """The whole description, as a JSON-ready dict."""
    hit = {
        "type": "object",
        "required": ["post_id", "score"],
        "properties": {
            "post_id": {"type": "string"},
            "score": {"type": "number", "description": "cosine similarity"},
            "created_at": {"type": "integer"},
            "platform": {"type": "string"},
            "category": {"type": "string"},
            "sentiment": {"type": "string"},
            "popularity": {"type": "number", "nullable": True},
            "modality_mask": {"type": "integer"},
            "bundle_version": {"type": "string"},
        },
    }
    hits = {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}}
    filters = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "since": EPOCH_MS,
            "until": EPOCH_MS,
            "platform": _list(LABEL, 32),
            "category": _list(LABEL, 32),
            "sentiment": _list(SENTIMENT, 3),
            "min_popularity": {"type": "number", "nullable": True},
            "max_popularity": {"type": "number", "nullable": True},
        },
    }
    media = {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind", "data_b64"],
        "properties": {
            "kind": {"type": "string", "enum": ["image", "audio", "video"]},
            "data_b64": {"type": "string", "format": "byte", "minLength": 1},
            "mime": {"type": "string", "maxLength": 128},
        },
    }
    by_content = {
        "anyOf": [
            {"required": ["text"], "properties": {"text": {"pattern": r"\S"}}},
            {"required": ["media"], "properties": {"media": {"minItems": 1}}},
        ]
    }
    query = {
        "type": "object",
        "additionalProperties": False,
        "description": "a stored post (post_id), or text and/or media — not both",
        "properties": {
            "post_id": POST_ID_SCHEMA,
            "text": {"type": "string", "maxLength": 20000},
            "media": _list({"$ref": "#/components/schemas/Media"}, 16),
        },
        "oneOf": [
            {"required": ["post_id"], "not": by_content},
            {"allOf": [by_content, {"not": {"required": ["post_id"]}}]},
        ],
    }
    group = {
        "type": "object",
        "required": ["group_id", "size", "start_ms", "end_ms", "categories", "post_ids"],
        "properties": {
            "group_id": {"type": "string", "description": "the earliest member's post id"},
            "size": {"type": "integer"},
            "start_ms": {"type": "integer"},
            "end_ms": {"type": "integer"},
            "categories": {"type": "object", "additionalProperties": {"type": "integer"}},
            "post_ids": {"type": "array", "items": {"type": "string"}},
        },
    }
    event_params = [
        _param("since", EPOCH_MS, "from (epoch ms)", required=True),
        _param("until", EPOCH_MS, "before (epoch ms)", required=True),
        _param(
            "threshold",
            {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
            "cosine linking two posts",
        ),
        _param("window", DURATION, "longest time between linked posts, e.g. 6h"),
        _param(
            "min_size",
            {"type": "integer", "minimum": 1, "maximum": 10000, "default": 2},
            "smallest group",
        ),
    ]
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "liveness",
                "operationId": "health",
                "responses": {"200": _ok("Status", "alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "readiness: Milvus reachable, collection present",
                "operationId": "ready",
                "responses": {"200": _ok("Status", "ready"), **_errors(503)},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this description",
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.0",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/v1/search": {
            "post": _secured(
                {
                    "summary": "similar posts for a batch of queries (post ids, texts, media)",
                    "operationId": "search",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SearchRequest"}
                            }
                        },
                    },
                    "responses": {"200": _ok("SearchResponse", "hits per query")},
                },
                404,
                413,
                415,
                503,
            )
        },
        "/v1/search/upload": {
            "post": _secured(
                {
                    "summary": "similar posts for an uploaded image, audio clip or video (raw bytes)",
                    "operationId": "searchUpload",
                    "parameters": [
                        _param(
                            "kind",
                            {"type": "string", "enum": ["image", "audio", "video"]},
                            "what the body is",
                            required=True,
                        ),
                        *FILTER_PARAMS,
                        *PAGE_PARAMS,
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "responses": {"200": _ok("Hits", "hits")},
                },
                413,
                503,
            )
        },
        "/v1/posts/{post_id}": {
            "get": _secured(
                {
                    "summary": "a stored post's analysis",
                    "operationId": "getPost",
                    "parameters": [POST_ID],
                    "responses": {"200": _ok("Post", "the post")},
                },
                404,
                503,
            )
        },
        "/v1/posts/{post_id}/similar": {
            "get": _secured(
                {
                    "summary": "posts most similar to a stored post",
                    "operationId": "similarPosts",
                    "parameters": [POST_ID, *FILTER_PARAMS, *PAGE_PARAMS],
                    "responses": {"200": _ok("Hits", "hits")},
                },
                404,
                503,
            )
        },
        "/v1/posts/{post_id}/duplicates": {
            "get": _secured(
                {
                    "summary": "near-duplicates of a stored post",
                    "operationId": "duplicates",
                    "parameters": [
                        POST_ID,
                        _param(
                            "threshold",
                            {
                                "type": "number",
                                "exclusiveMinimum": True,
                                "minimum": 0,
                                "maximum": 1,
                            },
                            "cosine (default: settings)",
                        ),
                        _param(
                            "top_k",
                            {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                            "candidates examined",
                        ),
                    ],
                    "responses": {"200": _ok("Duplicates", "near-duplicates")},
                },
                404,
                503,
            )
        },
        "/v1/events": {
            "get": _secured(
                {
                    "summary": "groups of posts about the same event in a time range",
                    "operationId": "events",
                    "parameters": event_params,
                    "responses": {"200": _ok("Groups", "groups, largest first")},
                },
                503,
            )
        },
        "/v1/events/{group_id}": {
            "get": _secured(
                {
                    "summary": "one event group (same range parameters as /v1/events)",
                    "operationId": "eventGroup",
                    "parameters": [
                        _param(
                            "group_id",
                            {"type": "string", "minLength": 1, "maxLength": 128},
                            "group id",
                            where="path",
                        ),
                        *event_params,
                    ],
                    "responses": {"200": _ok("Group", "the group")},
                },
                404,
                503,
            )
        },
        "/v1/trends": {
            "get": _secured(
                {
                    "summary": "trending topics (the same JSON as `postpulse trends --json`)",
                    "operationId": "trends",
                    "parameters": [
                        _param("window", DURATION, "window size, e.g. 1h"),
                        _param("step", DURATION, "hopping step, e.g. 5m"),
                        _param("top", {"type": "integer", "minimum": 1, "maximum": 1000}, "topics"),
                        _param(
                            "at",
                            {"type": "integer", "minimum": 0},
                            "a time in the window (epoch ms)",
                        ),
                        _param(
                            "kinds",
                            _list(
                                {
                                    "type": "string",
                                    "enum": ["category", "hashtag", "phrase", "emerging"],
                                },
                                4,
                            ),
                            "topic kinds",
                            explode=False,
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "trends",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                },
                404,
                503,
            )
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "postpulse API",
            "version": "1",
            "description": "Similarity search, near-duplicates, same-event groups, post "
            "analyses and trends over the posts postpulse has analysed.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "an error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["status", "message"],
                            "properties": {
                                "status": {"type": "integer"},
                                "message": {"type": "string"},
                                "details": {"type": "array", "items": {"type": "object"}},
                            },
                        }
                    },
                },
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}, "posts": {"type": "integer"}},
                },
                "Hit": hit,
                "Post": {**hit, "required": ["post_id"]},
                "Hits": {
                    "type": "object",
                    "required": ["hits"],
                    "properties": {
                        "top_k": {"type": "integer"},
                        "offset": {"type": "integer"},
                        "hits": hits,
                    },
                },
                "Duplicates": {
                    "type": "object",
                    "required": ["threshold", "hits"],
                    "properties": {"threshold": {"type": "number"}, "hits": hits},
                },
                "Filters": filters,
                "Media": media,
                "Query": query,
                "SearchRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["queries"],
                    "properties": {
                        "queries": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 64,
                            "items": {"$ref": "#/components/schemas/Query"},
                        },
                        "filters": {"$ref": "#/components/schemas/Filters"},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "offset": {"type": "integer", "minimum": 0, "maximum": 10000},
                    },
                },
                "SearchResponse": {
                    "type": "object",
                    "required": ["results"],
                    "properties": {
                        "top_k": {"type": "integer"},
                        "offset": {"type": "integer"},
                        "results": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Hits"},
                        },
                    },
                },
                "Group": group,
                "Groups": {
                    "type": "object",
                    "required": ["groups"],
                    "properties": {
                        "groups": {"type": "array", "items": {"$ref": "#/components/schemas/Group"}}
                    },
                },
            },
        },
    }


def write_spec(path: Path) -> None:
    """Write the description as committed in docs/openapi.json."""
    path.write_text(json.dumps(openapi_spec(), indent=2, sort_keys=True) + "\n")
