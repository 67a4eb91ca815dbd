"""The wire contracts: ``Post`` (input), ``Analysis`` and ``DeadLetter`` (outputs).

``deploy/post.schema.json`` is the JSON Schema of :class:`Post`; a test proves the two
accept and reject the same documents. Change them together.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

RFC3339_PATTERN = (
    r"^(19[89]\d|20\d\d)-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"

INT64_MAX = 2**63 - 1
# 1980-01-01T00:00:00Z: newswire and Usenet archives are real posts (the packaged Reuters
# corpus is from 1987); epoch 0 and epoch *seconds* sent as milliseconds (January 1970)
# stay refused
MIN_CREATED_AT_MS = 315_532_800_000
MAX_CREATED_AT_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z: the static bound the schema states
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a post may have (deeper is ``invalid_json``)."""
PLATFORM_MAX_BYTES = 64
"""The Milvus ``platform`` field is VARCHAR(64), and a Milvus server counts bytes."""
STAGES = ("validate", "decode", "encode", "analyse", "output")
Stage = Literal["validate", "decode", "encode", "analyse", "output"]


def _json_integer(value: object) -> object:
    """JSON Schema's ``integer``: ints and integral floats, never bools or strings."""
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class MediaKind(StrEnum):
    """Kinds of media a post can carry."""

    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"


def parse_created_at(value: object) -> int:
    """RFC 3339 string or epoch milliseconds -> epoch milliseconds (UTC)."""
    if isinstance(value, bool):
        raise ValueError("created_at must be an RFC 3339 string or epoch milliseconds")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        if "\n" in value or not _RFC3339.match(value):
            raise ValueError("created_at is not an RFC 3339 date-time")
        text = value.replace("z", "Z").replace("t", "T")
        text = text[:-1] + "+00:00" if text.endswith("Z") else text
        if ":60" in text[17:20]:  # leap second: clamp like most parsers
            text = text[:17] + "59" + text[19:]
        ms = int(datetime.fromisoformat(text).timestamp() * 1000)
    else:
        raise ValueError("created_at must be an RFC 3339 string or epoch milliseconds")
    if not MIN_CREATED_AT_MS <= ms < MAX_CREATED_AT_MS:
        raise ValueError(
            f"created_at {value!r} is outside 1980-01-01 .. 2100-01-01 (epoch ms "
            f"{MIN_CREATED_AT_MS} .. {MAX_CREATED_AT_MS})"
        )
    return ms


def check_strings(value: object) -> str | None:
    """The path (``text``, ``labels.a.0``...) of the first string, key or value at any
    depth, that holds a lone UTF-16 surrogate, which no UTF-8 sink or JSON encoder can
    write; None when every string is clean."""
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path or "post"
        elif isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and _SURROGATE.search(key):
                    return where
                stack.append((child, where))
        elif isinstance(item, list):
            stack.extend((child, f"{path}.{i}") for i, child in enumerate(item))
    return None


def json_depth(value: object) -> int:
    """How deeply arrays and objects nest in a parsed JSON document (a scalar is 0)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend(
                (child, depth) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class Media(BaseModel):
    """One media item: a URI or inline base64 bytes, never both."""

    model_config = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")

    kind: MediaKind
    uri: str | None = Field(default=None, min_length=1, max_length=4096)
    data_b64: str | None = Field(default=None, min_length=1)
    mime: str | None = Field(default=None, max_length=255)

    @field_validator("uri", "mime")
    @classmethod
    def _no_nul_chars(cls, value: str | None) -> str | None:
        return _no_nul(value)

    @model_validator(mode="before")
    @classmethod
    def _no_null_sources(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("uri", "data_b64"):
                if key in data and data[key] is None:
                    raise ValueError(f"media '{key}' must be a string when present")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> Media:
        if (self.uri is None) == (self.data_b64 is None):
            raise ValueError("media needs exactly one of 'uri' or 'data_b64'")
        return self


class Engagement(BaseModel):
    """Counts observed for a post; all optional, all non-negative."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    likes: JsonInt = Field(default=0, ge=0, le=INT64_MAX)
    comments: JsonInt = Field(default=0, ge=0, le=INT64_MAX)
    shares: JsonInt = Field(default=0, ge=0, le=INT64_MAX)
    views: JsonInt = Field(default=0, ge=0, le=INT64_MAX)


class Post(BaseModel):
    """An incoming social-media post (topic ``posts``, key = ``post_id``)."""

    model_config = ConfigDict(extra="ignore", frozen=True, regex_engine="python-re")

    post_id: str = Field(pattern=ID_PATTERN)
    platform: str = Field(min_length=1, max_length=64)
    author_id: str = Field(min_length=1, max_length=128)
    created_at: int | str
    text: str = ""
    lang: str | None = Field(default=None, min_length=2, max_length=35)
    media: list[Media] = Field(default_factory=list)
    engagement: Engagement | None = None
    labels: dict[str, Any] | None = None

    @field_validator("post_id")
    @classmethod
    def _single_line_id(cls, value: str) -> str:
        if "\n" in value:
            raise ValueError("post_id must not contain a newline")
        return value

    @field_validator("platform")
    @classmethod
    def _platform_fits(cls, value: str) -> str:
        _no_nul(value)
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > PLATFORM_MAX_BYTES:
            raise ValueError(
                f"is {size} bytes in UTF-8; the sink stores at most {PLATFORM_MAX_BYTES}"
            )
        return value

    @field_validator("author_id", "lang")
    @classmethod
    def _identifier_no_nul(cls, value: str | None) -> str | None:
        return _no_nul(value)

    @field_validator("created_at", mode="before")
    @classmethod
    def _created_at(cls, value: object) -> int:
        return parse_created_at(value)

    @property
    def created_at_ms(self) -> int:
        """Event time in epoch milliseconds."""
        assert isinstance(self.created_at, int)
        return self.created_at


class DeadLetterReason(StrEnum):
    """Machine-readable reasons a post could not be processed."""

    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    UNKNOWN_MEDIA_KIND = "unknown_media_kind"
    TEXT_TOO_LONG = "text_too_long"
    TOO_MANY_MEDIA = "too_many_media"
    EMPTY_POST = "empty_post"
    UNSUPPORTED_MEDIA = "unsupported_media"
    MEDIA_UNAVAILABLE = "media_unavailable"
    MEDIA_TOO_LARGE = "media_too_large"
    MEDIA_TIMEOUT = "media_timeout"
    MEDIA_FORBIDDEN_ADDRESS = "media_forbidden_address"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    MEDIA_TYPE_MISMATCH = "media_type_mismatch"
    IMAGE_UNDECODABLE = "image_undecodable"
    MEDIA_UNDECODABLE = "media_undecodable"
    MEDIA_TRUNCATED = "media_truncated"
    NO_VIDEO_STREAM = "no_video_stream"
    NO_AUDIO_STREAM = "no_audio_stream"
    MEDIA_TOO_LONG = "media_too_long"
    FRAME_TOO_LARGE = "frame_too_large"
    DECODE_TIMEOUT = "decode_timeout"
    IMAGE_TOO_LARGE = "image_too_large"
    ENCODER_FAILED = "encoder_failed"
    SINK_REJECTED = "sink_rejected"
    INTERNAL_ERROR = "internal_error"


class DeadLetter(BaseModel):
    """A post that could not be processed, with why, where, and its original bytes
    (all of them, or the first ``max_original_bytes`` with ``truncated`` set; size and
    SHA-256 always describe the whole message)."""

    model_config = ConfigDict(frozen=True)

    reason: DeadLetterReason
    stage: Stage
    detail: str
    post_id: str | None = None
    original_b64: str
    original_size: int = 0
    original_sha256: str = ""
    truncated: bool = False
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    failed_at_ms: int

    @property
    def original(self) -> bytes:
        """The message bytes as they arrived (only the first ones when ``truncated``)."""
        return base64.b64decode(self.original_b64)

    def capped(self, max_original_bytes: int) -> DeadLetter:
        """This dead letter with at most ``max_original_bytes`` of the original kept."""
        original = self.original
        if len(original) <= max_original_bytes:
            return self
        head = base64.b64encode(original[:max_original_bytes]).decode("ascii")
        return self.model_copy(update={"original_b64": head, "truncated": True})


class Analysis(BaseModel):
    """What postpulse understood about one post (topic ``post-analyses``)."""

    model_config = ConfigDict(frozen=True)

    post_id: str
    platform: str
    author_id: str
    created_at_ms: int
    modalities: list[str]
    skipped_media: list[str] = Field(default_factory=list)
    speech_ratio: float | None = None
    transcript: str | None = None
    ocr_text: str | None = None
    failed_tools: list[str] = Field(default_factory=list)
    """Tools (ocr, speech_to_text, voice_activity) that failed on one of the post's
    items: the analysis is made without their output."""
    category: str | None
    category_probs: dict[str, float]
    sentiment: Literal["negative", "neutral", "positive"]
    sentiment_score: float
    popularity: float | None
    topic: str | None
    bundle_version: str
    fusion: str
    latency_ms: float
    processed_at_ms: int


class Envelope(BaseModel):
    """A message as it came off the topic: raw bytes plus where it came from."""

    model_config = ConfigDict(frozen=True)

    value: bytes
    key: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp_ms: int | None = None

    def dead_letter(
        self,
        reason: DeadLetterReason,
        stage: Stage,
        detail: str,
        post_id: str | None = None,
        now_ms: int | None = None,
    ) -> DeadLetter:
        """The dead-letter record for this message."""
        import time

        return DeadLetter(
            reason=reason,
            stage=stage,
            # a detail may quote the input: lone surrogates become escapes, so the dead
            # letter itself can always be encoded
            detail=detail[:2000].encode("utf-8", "backslashreplace").decode("utf-8"),
            post_id=post_id if post_id is None or check_strings(post_id) is None else None,
            original_b64=base64.b64encode(self.value).decode("ascii"),
            original_size=len(self.value),
            original_sha256=hashlib.sha256(self.value).hexdigest(),
            source_topic=self.topic,
            source_partition=self.partition,
            source_offset=self.offset,
            failed_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
        )
