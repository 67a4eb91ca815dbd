"""Hostile records for the fuzz suite: documents generated (hypothesis) from the
committed JSON Schema's constraints and then broken, mutated real posts, and broken media. Seeded: a run is
reproducible from its seed."""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from streams.sample_media import (
    audio_only_mp4,
    huge_frame_video,
    make_audio,
    make_video,
    ten_hour_video,
    tone,
)
from streams.samples import decompression_bomb_png, themed_image_png

SCHEMA_PATH = Path(__file__).parents[1] / "deploy" / "post.schema.json"


def _strategy(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for one node of the committed schema: the keywords it uses
    (type, enum, pattern, lengths, bounds, properties, items, oneOf); ``not`` and
    ``format`` are left to break_document and the worker to judge."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "oneOf" in node and "type" not in node:
        return st.one_of([_strategy(branch) for branch in node["oneOf"]])
    kinds = node.get("type", "object")
    if isinstance(kinds, list):
        return st.one_of([_strategy({**node, "type": k}) for k in kinds])
    if kinds == "null":
        return st.none()
    if kinds == "string":
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True)
        return st.text(min_size=node.get("minLength", 0), max_size=node.get("maxLength", 80))
    if kinds == "integer":
        low = node.get("minimum")
        high = node.get("maximum", node.get("exclusiveMaximum", 2**63) - 1)
        return st.integers(min_value=low, max_value=high)
    if kinds == "array":
        return st.lists(_strategy(node.get("items", {"type": "string"})), max_size=3)
    properties = node.get("properties", {})
    if not properties:
        return st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3)
    required = set(node.get("required", []))
    optional = {k: _strategy(v) for k, v in properties.items() if k not in required}
    strategy = st.fixed_dictionaries(
        {k: _strategy(v) for k, v in properties.items() if k in required}, optional=optional
    )
    if "oneOf" in node:  # the media item: exactly one of uri / data_b64
        return strategy.filter(lambda d: ("uri" in d) != ("data_b64" in d))
    return strategy


def schema_documents(count: int, run_seed: int) -> list[Any]:
    """``count`` documents drawn from the committed JSON Schema's own constraints."""
    schema = json.loads(SCHEMA_PATH.read_text())
    docs: list[Any] = []

    @seed(run_seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(_strategy(schema))
    def collect(doc: Any) -> None:
        docs.append(doc)

    collect()
    return docs[:count]


_ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    -(2**63) - 1,
    10**30,
    1e308,
    0.5,
    "",
    " ",
    "\u0000",
    "x" * 70_000,
    "😀" * 40,
    "\u202e\u200b",
    [],
    {},
    [1, [2, [3]]],
    {"kind": "image"},
    "2026-02-30T00:00:00Z",
    "1969-12-31T23:59:59Z",
]

_RAW_BREAKS: list[Callable[[bytes, random.Random], bytes]] = [
    lambda raw, rng: raw[: rng.randrange(len(raw) + 1)],  # truncated
    lambda raw, rng: bytes(b ^ (1 << rng.randrange(8)) if rng.random() < 0.02 else b for b in raw),
    lambda raw, rng: raw.replace(b'"', b"'", 1),
    lambda raw, rng: raw + b"}" * rng.randint(1, 3),
    lambda raw, rng: b"\xef\xbb\xbf" + raw,  # a UTF-8 byte-order mark
    lambda raw, rng: raw.replace(b'"text": "', b'"text": "\\ud83d', 1),  # a lone surrogate
    lambda raw, rng: raw.decode("utf-8", "replace").encode("utf-16"),
    lambda raw, rng: b"",
    lambda raw, rng: b"null",
    lambda raw, rng: b"[" * 200_000,
]


def break_document(doc: Any, rng: random.Random) -> bytes:
    """One document made hostile: a field removed, replaced by an odd value, an extra
    field, or its bytes broken; sometimes left as it is (it must still get an outcome)."""
    choice = rng.random()
    if isinstance(doc, dict) and choice < 0.45:
        doc = dict(doc)
        key = rng.choice([*doc.keys(), "media", "engagement", "labels", "lang", "extra"])
        if rng.random() < 0.25:
            doc.pop(key, None)
        else:
            doc[key] = rng.choice(_ODD_VALUES)
    elif isinstance(doc, dict) and choice < 0.55:
        doc = {**doc, rng.choice(["ünïcode", "post_id ", "__proto__"]): rng.choice(_ODD_VALUES)}
    raw = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    if choice >= 0.85:
        raw = rng.choice(_RAW_BREAKS)(raw, rng)
    return raw


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    if min(size) < 40:  # a strip: too thin for the themed shapes
        out = io.BytesIO()
        Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
        return out.getvalue()
    return themed_image_png("sports", 1, size)


def _image_as(fmt: str) -> bytes:
    out = io.BytesIO()
    image = Image.open(io.BytesIO(_png())).convert("RGB")
    image.save(out, format=fmt)
    return out.getvalue()


def _absurd_rate_video() -> bytes:
    return (
        b"YUV4MPEG2 W64 H64 F1000000000:1 Ip A1:1 C420jpeg\n"
        + (b"FRAME\n" + b"\x80" * (64 * 64 * 3 // 2)) * 3
    )


def media_corpus() -> dict[str, tuple[str, bytes]]:
    """Real small media of each format (kind, bytes), and hostile files."""
    return {
        "png": ("image", _png()),
        "jpeg": ("image", _image_as("JPEG")),
        "gif": ("image", _image_as("GIF")),
        "webp": ("image", _image_as("WEBP")),
        "thin-png": ("image", _png((1, 4000))),
        "mp4": ("video", make_video("mp4", seconds=1.0, fps=5, size=(64, 48), audio=tone(1.0))),
        "wav": ("audio", make_audio("wav", tone(1.0, rate=16_000), rate=16_000)),
        "mp3": ("audio", make_audio("mp3", tone(1.0))),
        "bomb-png": ("image", decompression_bomb_png()),
        "huge-frame": ("video", huge_frame_video()),
        "ten-hours": ("video", ten_hour_video()),
        "absurd-fps": ("video", _absurd_rate_video()),
        "audio-only-mp4": ("video", audio_only_mp4(1.0)),
    }


def break_media(data: bytes, rng: random.Random) -> bytes:
    """Media bytes truncated, bit-flipped, emptied, or as they are."""
    choice = rng.random()
    if choice < 0.3:
        return data[: rng.randrange(1, max(2, len(data)))]
    if choice < 0.6:
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if choice < 0.7:
        return data[:16]  # a header and nothing else
    return data


def media_post(index: int, rng: random.Random, corpus: dict[str, tuple[str, bytes]]) -> bytes:
    """A post with one to three media items, most of them broken; kinds sometimes lie."""
    media = []
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(sorted(corpus))
        kind, data = corpus[name]
        if rng.random() < 0.1:
            kind = rng.choice(["image", "video", "audio"])
        item: dict[str, Any] = {"kind": kind}
        if rng.random() < 0.04:
            item["data_b64"] = "!!not base64!!"
        else:
            item["data_b64"] = base64.b64encode(break_media(data, rng)).decode()
        if rng.random() < 0.3:
            item["mime"] = rng.choice(["image/png", "video/mp4", "audio/mpeg", "text/html"])
        media.append(item)
    doc = {
        "post_id": f"fz-media-{index}",
        "platform": "fuzz",
        "author_id": "fuzzer",
        "created_at": 1_764_000_000_000 + index,
        "text": rng.choice(["", "look at this", "#fuzz"]),
        "media": media,
    }
    return json.dumps(doc).encode()
