"""Manual annotation with Label Studio: export a sample of posts as Label Studio tasks
(JSON import format, media by URL, optionally the model's guess as a prediction) with a
matching labelling config, and import a Label Studio JSON export back as labelled posts
for ``postpulse dataset build``.

Task ``data``: ``text`` plus ``image``/``video``/``audio`` (the post's first media URL of
each kind; "" when it has none, so every task fits one config) and ``post`` (the whole
post without its labels, so the import rebuilds it exactly). Annotation results are
``choices`` of the ``category`` and ``sentiment`` controls.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

from encoders.training.data import SENTIMENTS

MEDIA_KINDS = ("image", "video", "audio")
MEDIA_TAGS = {"image": "Image", "video": "Video", "audio": "Audio"}


def stratum(post: dict[str, Any]) -> str:
    """The group a post is sampled in: its category label when it has one, else its
    platform."""
    labels = post.get("labels") or {}
    category = labels.get("category")
    if isinstance(category, list):
        category = "|".join(sorted(map(str, category)))
    return f"category={category}" if category else f"platform={post.get('platform', '?')}"


def select_stratified(
    posts: Sequence[dict[str, Any]],
    n: int,
    seed: int = 0,
    key: Callable[[dict[str, Any]], str] = stratum,
) -> list[int]:
    """Indices of ``n`` posts, every stratum in proportion to its size and each present
    at least once (largest remainders fill the rest)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, post in enumerate(posts):
        groups[key(post)].append(index)
    rng = random.Random(seed)
    n = min(n, len(posts))
    if n <= 0:
        return []
    if len(groups) >= n:  # fewer picks than strata: one from each of the largest
        largest = sorted(groups, key=lambda g: (-len(groups[g]), g))[:n]
        return sorted(rng.choice(groups[g]) for g in largest)
    quotas = {g: len(ix) * n / len(posts) for g, ix in groups.items()}
    take = {g: min(len(groups[g]), max(1, int(q))) for g, q in quotas.items()}
    while sum(take.values()) > n:  # the minimum of one pushed the total over
        biggest = max(take, key=lambda g: (take[g], g))
        take[biggest] -= 1
    by_remainder = sorted(groups, key=lambda g: quotas[g] - int(quotas[g]), reverse=True)
    while sum(take.values()) < n:
        grown = False
        for g in by_remainder:
            if sum(take.values()) < n and take[g] < len(groups[g]):
                take[g] += 1
                grown = True
        if not grown:
            break
    chosen: list[int] = []
    for g in sorted(groups):
        chosen += rng.sample(groups[g], take[g])
    return sorted(chosen)


def margin(probs: dict[str, float]) -> float:
    """Top-1 minus top-2 probability: small when the model hesitates."""
    top = [*sorted(probs.values(), reverse=True), 0.0, 0.0]
    return float(top[0] - top[1])


def select_uncertain(probabilities: Sequence[dict[str, float] | None], n: int) -> list[int]:
    """Indices of the ``n`` posts with the smallest top-2 margin (posts the model could
    not score come last)."""
    scored = [(margin(p), i) for i, p in enumerate(probabilities) if p]
    scored.sort()
    return sorted(i for _, i in scored[:n])


def label_config(categories: Sequence[str], media_kinds: Sequence[str] = MEDIA_KINDS) -> str:
    """A Label Studio labelling config: the text and media, one category (several when
    the data set is multi-label) and one sentiment choice."""
    media = "\n".join(
        f'  <{MEDIA_TAGS[k]} name="{k}" value="${k}"/>' for k in MEDIA_KINDS if k in media_kinds
    )
    category_choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in categories)
    sentiment_choices = "\n".join(f"    <Choice value={quoteattr(s)}/>" for s in SENTIMENTS)
    return (
        "<View>\n"
        '  <Text name="text" value="$text"/>\n'
        f"{media}\n"
        '  <Header value="Category"/>\n'
        '  <Choices name="category" toName="text" choice="multiple" required="true">\n'
        f"{category_choices}\n"
        "  </Choices>\n"
        '  <Header value="Sentiment"/>\n'
        '  <Choices name="sentiment" toName="text" choice="single-radio">\n'
        f"{sentiment_choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def _choice_result(name: str, values: list[str]) -> dict[str, Any]:
    return {
        "from_name": name,
        "to_name": "text",
        "type": "choices",
        "value": {"choices": values},
    }


def media_url(item: dict[str, Any]) -> str:
    """A media item as a URL Label Studio can show: its URI, or inline bytes as a
    ``data:`` URL."""
    if item.get("uri"):
        return str(item["uri"])
    data = str(item.get("data_b64") or "")
    mime = item.get("mime") or _sniff_mime(
        base64.b64decode(data[:64] + "=" * (-len(data[:64]) % 4))
    )
    return f"data:{mime};base64,{data}"


def _sniff_mime(head: bytes) -> str:
    for magic, mime in (
        (b"\x89PNG", "image/png"),
        (b"\xff\xd8", "image/jpeg"),
        (b"GIF8", "image/gif"),
        (b"RIFF", "audio/wav"),
        (b"OggS", "audio/ogg"),
        (b"\x1aE\xdf\xa3", "video/webm"),
    ):
        if head.startswith(magic):
            return mime
    return "video/mp4" if head[4:8] == b"ftyp" else "application/octet-stream"


def to_task(
    post: dict[str, Any],
    prediction: dict[str, float] | None = None,
    model_version: str = "",
) -> dict[str, Any]:
    """One post as a Label Studio task (the labels stay out: annotators label blind)."""
    unlabelled = {k: v for k, v in post.items() if k != "labels"}
    data: dict[str, Any] = {"text": str(post.get("text") or ""), "post": unlabelled}
    for kind in MEDIA_KINDS:
        item = next((m for m in post.get("media") or [] if m.get("kind") == kind), None)
        data[kind] = media_url(item) if item else ""
    task: dict[str, Any] = {"data": data}
    if prediction:
        best = max(prediction, key=lambda c: prediction[c])
        task["predictions"] = [
            {
                "model_version": model_version,
                "score": round(float(prediction[best]), 4),
                "result": [_choice_result("category", [best])],
            }
        ]
    return task


@dataclass
class ImportResult:
    posts: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    disagreements: int = 0


def _choices(annotation: dict[str, Any], name: str) -> list[str]:
    for item in annotation.get("result") or []:
        if item.get("from_name") == name and item.get("type") == "choices":
            return [str(c) for c in item.get("value", {}).get("choices", [])]
    return []


def _vote(values: list[tuple[str, ...]]) -> tuple[tuple[str, ...], bool]:
    """Majority over annotators; a tie goes to the latest annotation. Returns the
    decision and whether annotators disagreed."""
    values = [v for v in values if v]
    if not values:
        return (), False
    counts = Counter(values)
    top = max(counts.values())
    latest_of_top = next(v for v in reversed(values) if counts[v] == top)
    return latest_of_top, len(counts) > 1


def import_annotations(tasks: Any) -> ImportResult:
    """Labelled posts from a Label Studio JSON export (a list of tasks with their
    ``annotations``). Cancelled (skipped) annotations do not count; tasks with no
    category decision are left out and counted by reason, never silently."""
    if not isinstance(tasks, list):
        raise ValueError("a Label Studio JSON export is a list of tasks")
    result = ImportResult()
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        post = data.get("post") if isinstance(data, dict) else None
        if not isinstance(post, dict) or "post_id" not in post:
            result.skipped["not a postpulse task"] += 1
            continue
        annotations = [
            a
            for a in task.get("annotations") or []
            if isinstance(a, dict) and not a.get("was_cancelled")
        ]
        if not annotations:
            result.skipped["not annotated"] += 1
            continue
        annotations.sort(
            key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0))
        )
        category, disagree_c = _vote([tuple(sorted(_choices(a, "category"))) for a in annotations])
        sentiment, disagree_s = _vote([tuple(_choices(a, "sentiment")) for a in annotations])
        if not category:
            result.skipped["no category chosen"] += 1
            continue
        result.disagreements += int(disagree_c or disagree_s)
        labels = dict(post.get("labels") or {})
        labels["category"] = category[0] if len(category) == 1 else list(category)
        if sentiment:
            labels["sentiment"] = sentiment[0]
        labels["annotators"] = len(annotations)
        result.posts.append({**post, "labels": labels})
    return result


def load_export(text: str) -> Any:
    """A Label Studio JSON export (a list), or its JSONL variant (a task per line)."""
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]
