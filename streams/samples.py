"""Generated sample posts for the demo, tests and benchmarks (no data set downloads).

Valid posts mix text-only, image-only and text+image; the broken ones cover every
dead-letter reason the validate and decode stages produce.
"""

from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from streams.records import DeadLetterReason
from streams.sample_media import (
    VIDEO_FORMATS,
    audio_only_mp4,
    huge_frame_video,
    make_audio,
    make_video,
    ten_hour_video,
    tone,
)

_TOPICS: dict[str, tuple[list[str], tuple[int, int, int]]] = {
    "sports": (
        [
            "What a goal in the final minute, the stadium went wild! #football",
            "Our team won the championship game 3-1 tonight",
            "Marathon training: 30km done this morning, legs are gone",
            "Tennis final goes to a fifth set, incredible match",
        ],
        (40, 150, 60),
    ),
    "food": (
        [
            "Homemade pasta with fresh basil and tomatoes tonight 🍝",
            "This new ramen place downtown is absolutely delicious",
            "Sunday brunch: pancakes, berries and way too much coffee",
            "Tried a new recipe for sourdough bread, crust came out perfect",
        ],
        (200, 120, 40),
    ),
    "technology": (
        [
            "The new phone's battery easily lasts two days, impressive",
            "Shipping our AI model to production today, wish us luck #startup",
            "Finally upgraded my laptop, compile times cut in half",
            "Open-source release of our database driver is live on GitHub",
        ],
        (40, 60, 200),
    ),
    "travel": (
        [
            "Sunset over the beach in Lisbon, the light here is unreal #travel",
            "Hiking in the Alps this week, views are breathtaking",
            "Flight delayed four hours again, terrible airline experience",
            "Exploring the old town of Kyoto, temples everywhere",
        ],
        (230, 200, 120),
    ),
    "news": (
        [
            "Breaking: parliament votes on the new budget tonight",
            "Election results are coming in, turnout at a record high",
            "The city council approved the new transit plan this morning",
            "Officials confirm the bridge will stay closed for repairs",
        ],
        (120, 120, 120),
    ),
}
_PLATFORMS = ["mastodon", "bluesky", "reddit", "x", "instagram"]


def themed_image_png(topic: str, seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """A small PNG whose colours and shapes depend on the topic (so images cluster)."""
    rng = random.Random(seed)
    base = _TOPICS[topic][1]
    jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in base)
    image = Image.new("RGB", size, jitter)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randint(0, size[0] - 20), rng.randint(0, size[1] - 20)
        x1, y1 = x0 + rng.randint(10, 60), y0 + rng.randint(10, 60)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def decompression_bomb_png(side: int = 10_000) -> bytes:
    """A few-KB PNG that declares ``side``² pixels."""
    buf = io.BytesIO()
    Image.new("1", (side, side), 0).save(buf, "PNG", optimize=True)
    return buf.getvalue()


@dataclass(frozen=True)
class SamplePost:
    """One generated message: its bytes, and what the pipeline should make of it."""

    value: bytes
    post_id: str | None
    topic: str | None
    expected_reason: DeadLetterReason | None = None


def valid_posts(count: int, seed: int = 7, start_ms: int = 1_764_000_000_000) -> list[SamplePost]:
    """``count`` valid posts: ~50% text only, ~20% image only, ~30% both."""
    rng = random.Random(seed)
    topics = list(_TOPICS)
    out = []
    for i in range(count):
        topic = topics[i % len(topics)]
        texts = _TOPICS[topic][0]
        roll = rng.random()
        doc: dict[str, object] = {
            "post_id": f"post-{seed}-{i:06d}",
            "platform": rng.choice(_PLATFORMS),
            "author_id": f"user-{rng.randint(1, 200)}",
            "created_at": start_ms + i * 60_000 + rng.randint(0, 59_999),
            "lang": "en",
            "engagement": {
                "likes": rng.randint(0, 5000),
                "comments": rng.randint(0, 300),
                "shares": rng.randint(0, 200),
                "views": rng.randint(0, 100_000),
            },
        }
        if roll >= 0.2:
            doc["text"] = f"{rng.choice(texts)} ({i})"
        if roll < 0.5:
            png = themed_image_png(topic, seed * 100_000 + i)
            doc["media"] = [
                {"kind": "image", "data_b64": base64.b64encode(png).decode(), "mime": "image/png"}
            ]
        out.append(SamplePost(json.dumps(doc).encode(), str(doc["post_id"]), topic))
    return out


def broken_posts(count: int, seed: int = 11, max_text_chars: int = 20_000) -> list[SamplePost]:
    """``count`` posts that must each become a dead letter, cycling through the reasons."""
    bomb = base64.b64encode(decompression_bomb_png()).decode()
    junk = base64.b64encode(random.Random(seed).randbytes(512)).decode()
    long_video, huge_video, soundtrack = ten_hour_video(), huge_frame_video(), audio_only_mp4()

    def base(i: int) -> dict[str, object]:
        return {
            "post_id": f"broken-{seed}-{i:04d}",
            "platform": "x",
            "author_id": "user-1",
            "created_at": "2026-11-29T10:00:00Z",
            "text": "hello",
        }

    makers = [
        (DeadLetterReason.INVALID_JSON, lambda i: b'{"post_id": "broken-%d", "text": ' % i),
        (
            DeadLetterReason.SCHEMA_VIOLATION,
            lambda i: json.dumps({k: v for k, v in base(i).items() if k != "author_id"}).encode(),
        ),
        (
            DeadLetterReason.IMAGE_UNDECODABLE,
            lambda i: json.dumps(
                {**base(i), "media": [{"kind": "image", "data_b64": junk}]}
            ).encode(),
        ),
        (
            DeadLetterReason.IMAGE_TOO_LARGE,
            lambda i: json.dumps(
                {**base(i), "media": [{"kind": "image", "data_b64": bomb}]}
            ).encode(),
        ),
        (
            DeadLetterReason.UNKNOWN_MEDIA_KIND,
            lambda i: json.dumps(
                {**base(i), "media": [{"kind": "hologram", "uri": "file:///tmp/x"}]}
            ).encode(),
        ),
        (
            DeadLetterReason.TEXT_TOO_LONG,
            lambda i: json.dumps(
                {**base(i), "text": "spam " * (max_text_chars // 5 + 10)}
            ).encode(),
        ),
        (
            DeadLetterReason.MEDIA_TOO_LONG,
            lambda i: json.dumps({**base(i), "media": [_inline("video", long_video)]}).encode(),
        ),
        (
            DeadLetterReason.FRAME_TOO_LARGE,
            lambda i: json.dumps({**base(i), "media": [_inline("video", huge_video)]}).encode(),
        ),
        (
            DeadLetterReason.NO_VIDEO_STREAM,
            lambda i: json.dumps({**base(i), "media": [_inline("video", soundtrack)]}).encode(),
        ),
    ]
    out = []
    for i in range(count):
        reason, make = makers[i % len(makers)]
        value = make(i)
        post_id = None if reason is DeadLetterReason.INVALID_JSON else f"broken-{seed}-{i:04d}"
        out.append(SamplePost(value, post_id, None, reason))
    return out


def _inline(kind: str, data: bytes) -> dict[str, str]:
    return {"kind": kind, "data_b64": base64.b64encode(data).decode()}


def av_posts(count: int, seed: int = 13, start_ms: int = 1_764_000_000_000) -> list[SamplePost]:
    """``count`` valid posts with short videos (some with a sound track) or audio clips."""
    rng = random.Random(seed)
    kinds = ["mp4", "webm", "wav", "mp3", "ogg", "flac", "m4a"]
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        seconds = 1.0 + rng.random()
        if kind in VIDEO_FORMATS:
            sound = tone(seconds, freq=rng.choice([220.0, 440.0])) if i % 2 == 0 else None
            media = _inline(
                "video", make_video(kind, seconds, fps=8, size=(160, 120), audio=sound, seed=i)
            )
        else:
            media = _inline(
                "audio", make_audio(kind, tone(seconds, freq=rng.choice([330.0, 660.0])))
            )
        doc = {
            "post_id": f"av-{seed}-{i:05d}",
            "platform": rng.choice(_PLATFORMS),
            "author_id": f"user-{rng.randint(1, 200)}",
            "created_at": start_ms + i * 90_000,
            "text": "" if i % 3 else f"listen to this ({i})",
            "media": [media],
        }
        out.append(SamplePost(json.dumps(doc).encode(), str(doc["post_id"]), None))
    return out


def mixed_stream(valid: int, broken: int, seed: int = 7, av: int = 0) -> list[SamplePost]:
    """Valid (``av`` of them with video/audio) and broken posts, shuffled deterministically."""
    posts = valid_posts(valid - av, seed) + av_posts(av, seed + 2) + broken_posts(broken, seed + 1)
    random.Random(seed).shuffle(posts)
    return posts


_STEADY_HASHTAGS = {
    "sports": "#matchday",
    "food": "#foodie",
    "technology": "#gadgets",
    "travel": "#wanderlust",
    "news": "#citynews",
}
_BURST_TEXTS = [
    "The total solar eclipse right now is unbelievable #eclipse",
    "Everyone on the street stopped to watch the #Eclipse, goosebumps",
    "Clouds moved just in time for the eclipse #eclipse #sky",
    "Never seen the sky go dark at noon before #eclipse",
]
_EMERGING_TEXTS = [
    "The volcano erupted again overnight, lava flows reached the coast road",
    "Volcano update: ash cloud drifting east, lava still flowing from the crater",
    "Ash from the volcano covers every car on our street, lava glowing on the ridge",
    "Lava fountains from the volcano crater lit up the night, ash falling in town",
]


@dataclass(frozen=True)
class TrendStream:
    """A generated stream for trend tests and the demo: what happened when."""

    posts: list[SamplePost]
    start_ms: int
    burst_topic: str
    burst_start_ms: int
    burst_end_ms: int
    emerging_start_ms: int


def trend_stream(
    days: int = 3,
    every_min: float = 6.0,
    burst_posts: int = 40,
    emerging_posts: int = 30,
    jitter_min: float = 5.0,
    seed: int = 17,
    start_ms: int = 1_767_571_200_000,  # 2026-01-05T00:00Z
) -> TrendStream:
    """Text posts over ``days`` simulated days: steady topics with their hashtags, a
    ``#eclipse`` burst of ``burst_posts`` in one hour of day 2 (14:00-15:00), and a
    subject no category or hashtag names (a volcano) from day 3 02:00 on. Posts are in
    production order, shuffled by up to ``jitter_min`` of event time (out of order)."""
    rng = random.Random(seed)
    hour = 3_600_000
    burst_start = start_ms + 24 * hour + 14 * hour
    emerging_start = start_ms + 2 * 24 * hour + 2 * hour
    docs: list[tuple[float, dict[str, object], str]] = []

    def add(ts: int, text: str, topic: str) -> None:
        i = len(docs)
        doc = {
            "post_id": f"trend-{seed}-{i:06d}",
            "platform": rng.choice(_PLATFORMS),
            "author_id": f"user-{rng.randint(1, 300)}",
            "created_at": ts,
            "lang": "en",
            "text": text,
        }
        order = ts + rng.uniform(0, jitter_min * 60_000)
        docs.append((order, doc, topic))

    topics = list(_TOPICS)
    n = int(days * 24 * 60 / every_min)
    for i in range(n):
        topic = topics[i % len(topics)]
        ts = start_ms + int(i * every_min * 60_000) + rng.randint(0, 30_000)
        add(ts, f"{rng.choice(_TOPICS[topic][0])} {_STEADY_HASHTAGS[topic]}", topic)
    for i in range(burst_posts):
        add(burst_start + int(i * hour / burst_posts), rng.choice(_BURST_TEXTS), "eclipse")
    for i in range(emerging_posts):
        add(
            emerging_start + int(i * 2 * hour / emerging_posts),
            rng.choice(_EMERGING_TEXTS),
            "volcano",
        )
    docs.sort(key=lambda d: d[0])
    return TrendStream(
        posts=[SamplePost(json.dumps(d).encode(), str(d["post_id"]), t) for _, d, t in docs],
        start_ms=start_ms,
        burst_topic="#eclipse",
        burst_start_ms=burst_start,
        burst_end_ms=burst_start + hour,
        emerging_start_ms=emerging_start,
    )


@dataclass
class NearDuplicateSet:
    """Originals and their re-posted variants (``variant_of``: variant id -> original id)."""

    posts: list[SamplePost]
    variant_of: dict[str, str]


_SUBJECTS = [
    "fire crews",
    "the mayor",
    "a local bakery",
    "our school choir",
    "the river ferry",
    "city hall",
    "the night market",
    "a stray dog",
    "the football club",
    "a jazz trio",
    "the old lighthouse",
    "two climbers",
    "the tram line",
    "a street artist",
    "the museum",
]
_EVENTS = [
    "closed the north bridge after a crash",
    "won the regional cup in extra time",
    "opened a free clinic for kids",
    "painted a mural on the station wall",
    "rescued a family from the flooded basement",
    "cancelled the parade because of storms",
    "found a rare fossil near the quarry",
    "raised money for the animal shelter",
    "started a night shift at the harbour",
    "played a surprise gig at the park",
]
_PLACES = ["Riverside", "Oak Hill", "the harbour", "Old Town", "Northgate", "Elm Park"]


def source_image_jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A source picture drawn from ``seed``: one of several backgrounds (gradient, stripes,
    checks, rings, smooth noise) in its own palette, under a dozen shapes and lines
    (no lettering: OCR text would join the post's text) — varied enough that different seeds do not look alike to an image model."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    palette = rng.integers(0, 256, (4, 3)).astype(np.float32)
    kind = seed % 5
    if kind == 0:  # gradient at an angle
        t = np.cos(rng.random() * np.pi) * xx / w + np.sin(rng.random() * np.pi) * yy / h
    elif kind == 1:  # stripes
        angle, period = rng.random() * np.pi, rng.uniform(8, 40)
        t = 0.5 + 0.5 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period)
    elif kind == 2:  # checks
        cell = int(rng.integers(10, 48))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    elif kind == 3:  # rings
        cx, cy, period = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 50)
        t = 0.5 + 0.5 * np.sin(np.hypot(xx - cx, yy - cy) * 2 * np.pi / period)
    else:  # smooth noise
        coarse = rng.random((int(rng.integers(3, 9)), int(rng.integers(3, 9))))
        t = (
            np.asarray(
                Image.fromarray((coarse * 255).astype(np.uint8)).resize(
                    (w, h), Image.Resampling.BICUBIC
                ),
                dtype=np.float32,
            )
            / 255.0
        )
    t = np.clip(t, 0, 1)[..., None]
    pixels = palette[0] * (1 - t) + palette[1] * t + rng.normal(0, 4, (h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 16))):
        x0, y0 = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
        x1, y1 = x0 + int(rng.integers(15, 140)), y0 + int(rng.integers(15, 110))
        colour = tuple(int(c) for c in palette[int(rng.integers(2, 4))] * rng.uniform(0.5, 1.2))
        shape = int(rng.integers(0, 4))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
        elif shape == 2:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 10)))
        else:
            points = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(5)]
            draw.polygon(points, fill=colour)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)  # as a camera or the platform would store it
    return buf.getvalue()


def repost_image(png: bytes, seed: int) -> bytes:
    """The same picture posted again: cropped (85-95% of each side, off-centre),
    resized (60-90%) and re-encoded as JPEG (quality 40-75)."""
    rng = random.Random(seed)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.85, 0.95)), int(h * rng.uniform(0.85, 0.95))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((x, y, x + cw, y + ch))
    scale = rng.uniform(0.6, 0.9)
    image = image.resize(
        (max(8, int(cw * scale)), max(8, int(ch * scale))), Image.Resampling.BILINEAR
    )
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=rng.randint(40, 75))
    return buf.getvalue()


def repost_text(text: str, seed: int) -> str:
    """The same text posted again with small edits: a typo, a dropped or repeated word,
    changed case, a prefix or a trailing hashtag (two of these)."""
    rng = random.Random(seed)
    words = text.split()

    def typo(ws: list[str]) -> list[str]:
        i = rng.randrange(len(ws))
        w = ws[i]
        if len(w) > 3:
            j = rng.randrange(len(w) - 1)
            ws[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        return ws

    edits = [
        typo,
        lambda ws: ws[:-1] if len(ws) > 6 else ws,
        lambda ws: [ws[0].upper(), *ws[1:]],
        lambda ws: ["RT:", *ws],
        lambda ws: [*ws, "#repost"],
        lambda ws: [*ws, "!!"],
    ]
    for edit in rng.sample(edits, 2):
        words = edit(list(words))
    return " ".join(words)


def near_duplicate_set(
    images: int = 50, texts: int = 50, seed: int = 23, start_ms: int = 1_767_571_200_000
) -> NearDuplicateSet:
    """``images`` image posts and ``texts`` text posts, each posted again later as a
    variant (image: cropped, resized, re-encoded; text: small edits)."""
    rng = random.Random(seed)
    posts: list[SamplePost] = []
    variant_of: dict[str, str] = {}

    def add(post_id: str, minute: int, text: str = "", image: bytes | None = None) -> None:
        doc: dict[str, object] = {
            "post_id": post_id,
            "platform": _PLATFORMS[len(posts) % len(_PLATFORMS)],
            "author_id": f"user-{rng.randint(1, 500)}",
            "created_at": start_ms + minute * 60_000,
            "text": text,
        }
        if image is not None:
            doc["media"] = [_inline("image", image)]
        posts.append(SamplePost(json.dumps(doc).encode(), post_id, None))

    for i in range(images):
        png = source_image_jpeg(seed * 1000 + i)
        add(f"img-{i:03d}", i, image=png)
        add(f"img-{i:03d}-repost", 200 + i, image=repost_image(png, seed + i))
        variant_of[f"img-{i:03d}-repost"] = f"img-{i:03d}"
    combos = [(s, e, p) for s in _SUBJECTS for e in _EVENTS for p in _PLACES]
    for i, (subject, event, place) in enumerate(rng.sample(combos, texts)):
        text = f"{subject.capitalize()} {event} in {place} this morning"
        add(f"txt-{i:03d}", 400 + i, text=text)
        add(f"txt-{i:03d}-repost", 600 + i, text=repost_text(text, seed + i))
        variant_of[f"txt-{i:03d}-repost"] = f"txt-{i:03d}"
    return NearDuplicateSet(posts, variant_of)
