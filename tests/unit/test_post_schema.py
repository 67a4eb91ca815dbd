"""The committed JSON Schema and the pydantic Post model accept and reject the same documents."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from streams.records import Post, parse_created_at

SCHEMA = json.loads((Path(__file__).parents[2] / "deploy" / "post.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)

BASE: dict[str, Any] = {
    "post_id": "p-1",
    "platform": "mastodon",
    "author_id": "u1",
    "created_at": "2026-11-29T10:15:00Z",
    "text": "hello world",
    "lang": "en",
    "media": [{"kind": "image", "uri": "file:///m/a.png", "mime": "image/png"}],
    "engagement": {"likes": 1, "comments": 2, "shares": 3, "views": 4},
    "labels": {"category": "food"},
}


def with_(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    target: Any = doc
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    if value is _DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return doc


_DELETE = object()

CASES: list[tuple[str, Any, bool]] = [
    ("base", BASE, True),
    ("epoch ms", with_("created_at", 1764410100000), True),
    ("epoch ms as integral float", with_("created_at", 1764410100000.0), True),
    ("offset time", with_("created_at", "2026-11-29T10:15:00.123+02:00"), True),
    ("lower-case t and z", with_("created_at", "2026-11-29t10:15:00z"), True),
    ("no timezone", with_("created_at", "2026-11-29T10:15:00"), False),
    ("trailing newline in time", with_("created_at", "2026-11-29T10:15:00Z\n"), False),
    ("date only", with_("created_at", "2026-11-29"), False),
    ("month 13", with_("created_at", "2026-13-01T00:00:00Z"), False),
    ("30 February", with_("created_at", "2026-02-30T00:00:00Z"), False),
    ("negative epoch", with_("created_at", -5), False),
    ("bool created_at", with_("created_at", True), False),
    ("fractional epoch", with_("created_at", 1.5), False),
    ("missing post_id", with_("post_id", _DELETE), False),
    ("missing author", with_("author_id", _DELETE), False),
    ("empty platform", with_("platform", ""), False),
    ("post_id with space", with_("post_id", "a b"), False),
    ("post_id trailing newline", with_("post_id", "abc\n"), False),
    ("post_id too long", with_("post_id", "a" * 129), False),
    ("numeric post_id", with_("post_id", 12), False),
    ("null text", with_("text", None), False),
    ("no text", with_("text", _DELETE), True),
    ("null lang", with_("lang", None), True),
    ("one-letter lang", with_("lang", "e"), False),
    ("unknown top-level field ignored", {**BASE, "extra": {"x": 1}}, True),
    ("media not a list", with_("media", {"kind": "image"}), False),
    ("media kind unknown", with_("media.0.kind", "hologram"), False),
    ("media without source", with_("media.0", {"kind": "image"}), False),
    (
        "media with both sources",
        with_("media.0", {"kind": "image", "uri": "a", "data_b64": "AA=="}),
        False,
    ),
    ("media inline", with_("media.0", {"kind": "video", "data_b64": "AAAA"}), True),
    ("media null uri", with_("media.0", {"kind": "image", "uri": None, "data_b64": "AA=="}), False),
    ("media extra field", with_("media.0", {"kind": "image", "uri": "a", "size": 3}), False),
    ("media empty uri", with_("media.0", {"kind": "image", "uri": ""}), False),
    ("engagement null", with_("engagement", None), True),
    ("engagement partial", with_("engagement", {"likes": 3}), True),
    ("negative likes", with_("engagement.likes", -1), False),
    ("likes as string", with_("engagement.likes", "3"), False),
    ("likes as bool", with_("engagement.likes", True), False),
    ("likes integral float", with_("engagement.likes", 3.0), True),
    ("likes fractional", with_("engagement.likes", 3.5), False),
    ("engagement unknown counter", with_("engagement.saves", 1), False),
    ("labels list", with_("labels", ["food"]), False),
    ("not an object", ["post"], False),
    # ranges the sinks can store and that are plausible (issue 15)
    ("created_at 1e20 epoch ms", with_("created_at", 100000000000000000000), False),
    ("created_at epoch 0", with_("created_at", 0), False),
    ("created_at 1979", with_("created_at", "1979-12-31T12:00:00Z"), False),
    ("created_at 1980 epoch", with_("created_at", 315532800000), True),
    ("created_at Reuters 1987", with_("created_at", "1987-03-01T00:00:00+00:00"), True),
    ("created_at epoch seconds", with_("created_at", 1764410100), False),
    ("created_at 2100", with_("created_at", "2100-01-01T00:00:00Z"), False),
    ("created_at 2100 epoch", with_("created_at", 4102444800000), False),
    ("likes int64 max", with_("engagement.likes", 2**63 - 1), True),
    ("likes past int64", with_("engagement.likes", 2**63), False),
    ("views 1e30", with_("engagement.views", 10**30), False),
    ("NUL in platform", with_("platform", "x\u0000y"), False),
    ("NUL in author", with_("author_id", "\u0000"), False),
    ("NUL in media uri", with_("media.0.uri", "file:///m/a\u0000.png"), False),
    ("NUL in text is text", with_("text", "a\u0000b"), True),
    ("ascii platform of 64", with_("platform", "p" * 64), True),
]


def model_accepts(doc: Any) -> bool:
    try:
        Post.model_validate(doc)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("name", "doc", "valid"), CASES, ids=[c[0] for c in CASES])
def test_schema_and_model_agree(name: str, doc: Any, valid: bool) -> None:
    assert VALIDATOR.is_valid(doc) is valid, f"schema: {name}"
    assert model_accepts(doc) is valid, f"model: {name}"


def _mutate(rng: random.Random, doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    values: list[Any] = [None, "", "x", 0, -1, 7, 2.5, True, [], {}, "2026-11-29T10:15:00Z", "a b"]
    key = rng.choice([*doc.keys(), "media", "engagement"])
    if key == "media" and rng.random() < 0.7:
        item = {"kind": rng.choice(["image", "video", "audio", "gif", 3])}
        for field in ("uri", "data_b64", "mime"):
            if rng.random() < 0.5:
                item[field] = rng.choice(values)
        doc["media"] = [item]
    elif key == "engagement" and rng.random() < 0.7:
        doc["engagement"] = {rng.choice(["likes", "views", "saves"]): rng.choice(values)}
    elif rng.random() < 0.2:
        doc.pop(key, None)
    else:
        doc[key] = rng.choice(values)
    return doc


def test_random_mutations_agree() -> None:
    rng = random.Random(1234)
    accepted = rejected = 0
    for _ in range(3000):
        doc = _mutate(rng, BASE)
        schema_ok = VALIDATOR.is_valid(doc)
        assert model_accepts(doc) is schema_ok, json.dumps(doc)
        accepted += schema_ok
        rejected += not schema_ok
    # the generator must exercise both sides, or this test proves nothing
    assert accepted > 300 and rejected > 300


def test_what_the_schema_cannot_say_is_checked_by_the_model() -> None:
    # bytes, not characters: 30 CJK characters are 90 bytes, over a Milvus VARCHAR(64)
    doc = with_("platform", "小红书" * 10)
    assert VALIDATOR.is_valid(doc) and not model_accepts(doc)
    assert model_accepts(with_("platform", "小红书" * 7))  # 63 bytes
    assert "bytes in UTF-8" in SCHEMA["properties"]["platform"]["description"]


def test_created_at_normalises_to_epoch_ms() -> None:
    assert parse_created_at("1990-01-01T00:00:01Z") == 631152001000
    assert parse_created_at("2026-11-29T12:00:00+01:00") == parse_created_at("2026-11-29T11:00:00Z")
    assert Post.model_validate(with_("created_at", 1764410100000)).created_at_ms == 1764410100000
