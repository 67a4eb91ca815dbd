"""``postpulse dataset synth``: synthetic multimodal posts with known ground truth.

Label evidence is split across modalities on purpose: many posts carry agreeing
evidence in text, image and audio; the others can be classified only from their text,
only from their image, only from their audio, or from two of them. Engagement is a known function of the content plus noise. The data is
synthetic and every report built on it says so.
"""

from __future__ import annotations

import base64
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from streams.sample_media import make_audio, make_video

CLASSES: dict[str, dict[str, object]] = {
    "sports": {
        "words": ["match", "goal", "team", "score", "league", "stadium", "coach", "season"],
        "colour": (30, 140, 60),
        "shape": "stripes",
        "freq": 220.0,
        "base_likes": 4.0,
    },
    "food": {
        "words": ["recipe", "dinner", "pasta", "bakery", "coffee", "flavour", "kitchen", "brunch"],
        "colour": (200, 110, 30),
        "shape": "discs",
        "freq": 330.0,
        "base_likes": 3.2,
    },
    "technology": {
        "words": ["software", "laptop", "startup", "chip", "release", "battery", "code", "cloud"],
        "colour": (40, 70, 200),
        "shape": "grid",
        "freq": 495.0,
        "base_likes": 3.6,
    },
    "travel": {
        "words": [
            "beach",
            "flight",
            "hotel",
            "mountains",
            "island",
            "passport",
            "hiking",
            "sunset",
        ],
        "colour": (220, 190, 90),
        "shape": "triangles",
        "freq": 740.0,
        "base_likes": 3.9,
    },
}
SENTIMENT_WORDS = {
    "positive": ["love", "amazing", "great", "wonderful"],
    "negative": ["hate", "terrible", "awful", "disappointing"],
    "neutral": ["today", "update", "noted", "again"],
}
NEUTRAL_TEXT = ["check this out", "new post", "what do you think", "look at this", "sharing this"]
EVIDENCE = ["text", "image", "audio", "video", "text+image", "image+audio", "text+audio", "all"]
# Most posts carry redundant evidence: in text, image and audio at once (as the picture
# and caption of most real posts agree) or in two of them; few are decidable from one
# modality alone, so fusion has something to add and a model trained on complete posts
# can lean on the strongest modality (the co-adaptation modality dropout counters).
# Video evidence is one frame in six: mean pooling dilutes it, a trained temporal model
# need not.
DEFAULT_EVIDENCE_WEIGHTS = {
    "all": 0.3,
    "text+image": 0.13,
    "image+audio": 0.13,
    "text+audio": 0.1,
    "video": 0.15,
    "text": 0.05,
    "image": 0.05,
    "audio": 0.05,
}
VIDEO_FRAMES = 6
# A modality without evidence is usually there anyway, as noise: training data is mostly
# complete, the setting in which fusion co-adapts and modality dropout earns its keep.
NOISE_IMAGE, NOISE_AUDIO = 0.8, 0.7


@dataclass(frozen=True)
class SynthPost:
    """One generated post and the truth it was generated from."""

    doc: dict[str, object]
    category: str
    evidence: str


def _image(category: str | None, rng: random.Random, size: int = 96) -> bytes:
    """A picture whose colour and texture identify ``category`` (noise when None)."""
    if category is None:
        colour = tuple(rng.randint(60, 200) for _ in range(3))
        shape = rng.choice(["plain", "speckle"])
    else:
        spec = CLASSES[category]
        colour = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in spec["colour"])  # type: ignore[attr-defined]
        shape = str(spec["shape"])
    image = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(image)
    ink = (255, 255, 255)
    if shape == "stripes":
        for x in range(0, size, 12):
            draw.rectangle((x, 0, x + 4, size), fill=ink)
    elif shape == "discs":
        for _ in range(5):
            x, y = rng.randint(0, size - 20), rng.randint(0, size - 20)
            draw.ellipse((x, y, x + 18, y + 18), fill=ink)
    elif shape == "grid":
        for k in range(0, size, 16):
            draw.line((k, 0, k, size), fill=ink, width=2)
            draw.line((0, k, size, k), fill=ink, width=2)
    elif shape == "triangles":
        for _ in range(4):
            x, y = rng.randint(0, size - 24), rng.randint(0, size - 24)
            draw.polygon([(x, y + 24), (x + 12, y), (x + 24, y + 24)], fill=ink)
    elif shape == "speckle":
        for _ in range(60):
            x, y = rng.randint(0, size - 2), rng.randint(0, size - 2)
            draw.point((x, y), fill=ink)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _video(category: str, rng: random.Random, size: int = 96) -> tuple[bytes, int]:
    """A 1 fps MP4 of :data:`VIDEO_FRAMES` pictures: one shows ``category``, the others
    are noise. Returns the video and the evidence frame's index."""
    evidence = rng.randrange(VIDEO_FRAMES)
    frames = []
    for k in range(VIDEO_FRAMES):
        png = _image(category if k == evidence else None, rng, size)
        frames.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
    return make_video("mp4", fps=1, size=(size, size), frames=frames), evidence


def _audio(category: str | None, rng: random.Random, seconds: float = 1.0) -> bytes:
    """A tone at the class's pitch (or random pitch and noise when None), 16 kHz WAV."""
    rate = 16_000
    t = np.arange(int(seconds * rate)) / rate
    freq = float(CLASSES[category]["freq"]) if category else rng.uniform(150, 900)  # type: ignore[arg-type]
    freq *= 1.0 + rng.uniform(-0.02, 0.02)
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(
        rng.randint(0, 10**6)
    ).normal(size=t.shape)
    return make_audio("wav", wave.astype(np.float32), rate=rate)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def generate(
    count: int,
    seed: int = 0,
    imbalance: float | None = None,
    evidence_weights: dict[str, float] | None = None,
) -> list[SynthPost]:
    """``count`` posts. ``imbalance`` (e.g. 100) makes the first class that many times
    more frequent than the last, geometric in between."""
    rng = random.Random(seed)
    classes = list(CLASSES)
    if imbalance:
        weights = [imbalance ** (-(i / (len(classes) - 1))) for i in range(len(classes))]
    else:
        weights = [1.0] * len(classes)
    posts = []
    for i in range(count):
        category = rng.choices(classes, weights)[0]
        mix = evidence_weights or DEFAULT_EVIDENCE_WEIGHTS
        evidence = rng.choices(list(mix), list(mix.values()))[0]
        sentiment = rng.choice(list(SENTIMENT_WORDS))
        has = set(evidence.replace("all", "text+image+audio").split("+"))
        words = CLASSES[category]["words"]
        if "text" in has:
            text = f"{rng.choice(SENTIMENT_WORDS[sentiment])} {' '.join(rng.sample(words, 2))} {rng.choice(NEUTRAL_TEXT)}"  # type: ignore[arg-type]
        else:
            text = f"{rng.choice(SENTIMENT_WORDS[sentiment])} {rng.choice(NEUTRAL_TEXT)}"
        media = []
        if "image" in has or rng.random() < NOISE_IMAGE:
            media.append(
                {
                    "kind": "image",
                    "data_b64": _b64(_image(category if "image" in has else None, rng)),
                }
            )
        if "audio" in has or rng.random() < NOISE_AUDIO:
            media.append(
                {
                    "kind": "audio",
                    "data_b64": _b64(_audio(category if "audio" in has else None, rng)),
                }
            )
        evidence_frame = None
        if "video" in has:
            clip, evidence_frame = _video(category, rng)
            media.append({"kind": "video", "data_b64": _b64(clip)})
        has_image = any(m["kind"] == "image" for m in media)
        log_likes = (
            float(CLASSES[category]["base_likes"])  # type: ignore[arg-type]
            + 0.8 * has_image
            + 0.5 * (sentiment == "positive")
            - 0.4 * (sentiment == "negative")
            + rng.gauss(0.0, 0.35)
        )
        likes = int(math.exp(log_likes))
        doc = {
            "post_id": f"synth-{seed}-{i:06d}",
            "platform": rng.choice(["mastodon", "bluesky", "reddit"]),
            "author_id": f"user-{rng.randint(1, 500)}",
            "created_at": 1_760_000_000_000 + i * 60_000,
            "text": text,
            "lang": "en",
            "media": media,
            "engagement": {
                "likes": likes,
                "comments": int(likes * 0.1),
                "shares": int(likes * 0.05),
                "views": likes * 20,
            },
            "labels": {
                "category": category,
                "sentiment": sentiment,
                "evidence": evidence,
                **({"video_evidence_frame": evidence_frame} if evidence_frame is not None else {}),
                "synthetic": True,
            },
        }
        posts.append(SynthPost(doc, category, evidence))
    return posts


def write_jsonl(posts: list[SynthPost], path: Path) -> Path:
    """One post per line."""
    from encoders.training.data import write_posts

    return write_posts([post.doc for post in posts], path)
