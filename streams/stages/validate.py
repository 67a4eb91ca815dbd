"""Validate stage: bytes -> ``Post``, or a dead letter that says exactly why not."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from streams.records import (
    MAX_JSON_DEPTH,
    DeadLetter,
    DeadLetterReason,
    Envelope,
    MediaKind,
    Post,
    check_strings,
    json_depth,
)

_KNOWN_KINDS = {k.value for k in MediaKind}


@dataclass(frozen=True)
class ValidatedPost:
    """A post that passed validation, with the message it came from."""

    envelope: Envelope
    post: Post


@dataclass(frozen=True)
class ValidationLimits:
    """Size limits enforced before any decoding."""

    max_text_chars: int = 20_000
    max_media_items: int = 16
    max_future_ms: int = 86_400_000
    """How far past the validator's clock ``created_at`` may lie (clock skew, time zones)."""


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "post"
    return f"{where}: {err['msg']}"


class PostValidator:
    """Parses and checks posts; never raises for bad input."""

    name = "validate"

    def __init__(self, limits: ValidationLimits, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self.clock = clock

    def __call__(self, envelope: Envelope) -> ValidatedPost | DeadLetter:
        """One message -> a valid post or its dead letter."""
        try:
            doc = json.loads(envelope.value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return envelope.dead_letter(DeadLetterReason.INVALID_JSON, "validate", str(exc))
        except RecursionError:
            return envelope.dead_letter(
                DeadLetterReason.INVALID_JSON,
                "validate",
                f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
            )
        if json_depth(doc) > MAX_JSON_DEPTH:
            return envelope.dead_letter(
                DeadLetterReason.INVALID_JSON,
                "validate",
                f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
            )
        post_id = doc.get("post_id") if isinstance(doc, dict) else None
        post_id = post_id if isinstance(post_id, str) and check_strings(post_id) is None else None
        if not isinstance(doc, dict):
            return envelope.dead_letter(
                DeadLetterReason.SCHEMA_VIOLATION,
                "validate",
                f"a post must be a JSON object, got {type(doc).__name__}",
            )
        media = doc.get("media")
        if isinstance(media, list):
            for i, item in enumerate(media):
                kind = item.get("kind") if isinstance(item, dict) else None
                if isinstance(kind, str) and kind not in _KNOWN_KINDS:
                    return envelope.dead_letter(
                        DeadLetterReason.UNKNOWN_MEDIA_KIND,
                        "validate",
                        f"media.{i}.kind {kind!r} is not one of {sorted(_KNOWN_KINDS)}",
                        post_id,
                    )
        bad_string = check_strings(doc)
        if bad_string is not None:
            return envelope.dead_letter(
                DeadLetterReason.SCHEMA_VIOLATION,
                "validate",
                f"{bad_string}: a lone UTF-16 surrogate is not text (no sink can store it)",
                post_id,
            )
        try:
            post = Post.model_validate(doc)
        except ValidationError as exc:
            return envelope.dead_letter(
                DeadLetterReason.SCHEMA_VIOLATION, "validate", _first_error(exc), post_id
            )
        latest = int(self.clock() * 1000) + self.limits.max_future_ms
        if post.created_at_ms > latest:
            return envelope.dead_letter(
                DeadLetterReason.SCHEMA_VIOLATION,
                "validate",
                f"created_at: {post.created_at_ms} (epoch ms) is more than "
                f"{self.limits.max_future_ms // 3_600_000} h in the future",
                post.post_id,
            )
        if len(post.text) > self.limits.max_text_chars:
            return envelope.dead_letter(
                DeadLetterReason.TEXT_TOO_LONG,
                "validate",
                f"text has {len(post.text)} characters, limit {self.limits.max_text_chars}",
                post.post_id,
            )
        if len(post.media) > self.limits.max_media_items:
            return envelope.dead_letter(
                DeadLetterReason.TOO_MANY_MEDIA,
                "validate",
                f"{len(post.media)} media items, limit {self.limits.max_media_items}",
                post.post_id,
            )
        if not post.text.strip() and not post.media:
            return envelope.dead_letter(
                DeadLetterReason.EMPTY_POST, "validate", "no text and no media", post.post_id
            )
        return ValidatedPost(envelope, post)
