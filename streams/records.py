"""The wire contracts: ``Post`` (input), ``Analysis`` and ``DeadLetter`` (outputs).

``deploy/post.schema.json`` is the JSON Schema of :class:`Post`; a test proves the two
accept and reject the same documents. Change them together.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

RFC3339_PATTERN = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"


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
        if value < 0:
            raise ValueError("created_at epoch milliseconds must be >= 0")
        return value
    if isinstance(value, str):
        if "\n" in value or not _RFC3339.match(value):
            raise ValueError("created_at is not an RFC 3339 date-time")
        text = value.replace("z", "Z").replace("t", "T")
        text = text[:-1] + "+00:00" if text.endswith("Z") else text
        if ":60" in text[17:20]:  # leap second: clamp like most parsers
            text = text[:17] + "59" + text[19:]
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    raise ValueError("created_at must be an RFC 3339 string or epoch milliseconds")


class Media(BaseModel):
    """One media item: a URI or inline base64 bytes, never both."""

    model_config = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")

    kind: MediaKind
    uri: str | None = Field(default=None, min_length=1, max_length=4096)
    data_b64: str | None = Field(default=None, min_length=1)
    mime: str | None = Field(default=None, max_length=255)

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

    likes: JsonInt = Field(default=0, ge=0)
    comments: JsonInt = Field(default=0, ge=0)
    shares: JsonInt = Field(default=0, ge=0)
    views: JsonInt = Field(default=0, ge=0)


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
    INTERNAL_ERROR = "internal_error"


class DeadLetter(BaseModel):
    """A post that could not be processed, with why, where, and its original bytes."""

    model_config = ConfigDict(frozen=True)

    reason: DeadLetterReason
    stage: Literal["validate", "decode", "encode", "analyse"]
    detail: str
    post_id: str | None = None
    original_b64: str
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    failed_at_ms: int

    @property
    def original(self) -> bytes:
        """The message bytes exactly as they arrived."""
        return base64.b64decode(self.original_b64)


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
        stage: Literal["validate", "decode", "encode", "analyse"],
        detail: str,
        post_id: str | None = None,
        now_ms: int | None = None,
    ) -> DeadLetter:
        """The dead-letter record for this message."""
        import time

        return DeadLetter(
            reason=reason,
            stage=stage,
            detail=detail[:2000],
            post_id=post_id,
            original_b64=base64.b64encode(self.value).decode("ascii"),
            source_topic=self.topic,
            source_partition=self.partition,
            source_offset=self.offset,
            failed_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
        )
