"""Text, image, video and audio posts — inline and over http(s) — through a real worker,
with every kind of hostile media in the same stream."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

from streams.broker import LocalBroker, free_port
from streams.records import DeadLetterReason
from streams.sample_media import (
    AUDIO_FORMATS,
    audio_only_mp4,
    huge_frame_video,
    make_audio,
    make_video,
    speak,
    ten_hour_video,
    tone,
)
from streams.samples import SamplePost, themed_image_png
from streams.settings import Settings
from tests.http_server import serve
from tests.workers import milvus_ids, produce_all, reader, start_worker

pytestmark = pytest.mark.integration

HOST = "127.0.0.2"
CAP = 2_000_000


def _png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def media_server() -> Iterator[str]:
    port = free_port(HOST)
    loopback_port = free_port("127.0.0.1")
    files = {
        "/img/a.png": (_png("red"), "image/png"),
        "/img/b.png": (themed_image_png("food", 3), "image/png"),
        "/video/clip.webm": (make_video("webm", seconds=2.0), "video/webm"),
        "/audio/clip.mp3": (make_audio("mp3", tone(2.0)), "audio/mpeg"),
        "/zip.jpg": (b"PK\x03\x04" + b"\x00" * 4000, "image/jpeg"),
        "/huge.png": (b"\x89PNG\r\n\x1a\n" + b"\x00" * (CAP + 10), "image/png"),
    }

    async def static(request: web.Request) -> web.Response:
        body, content_type = files[request.path]
        return web.Response(body=body, content_type=content_type)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(8)  # past the worker's 4 s total fetch timeout
        return web.Response(body=b"")

    async def to_loopback(_: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{loopback_port}/img/a.png")

    app = web.Application()
    app.add_routes([web.get(path, static) for path in files])
    app.add_routes([web.get("/slow.png", slow), web.get("/redirect.png", to_loopback)])
    with serve(app, HOST, port) as base:
        yield base


def _post(post_id: str, media: list[dict[str, str]], text: str = "") -> bytes:
    doc = {
        "post_id": post_id,
        "platform": "mastodon",
        "author_id": "u1",
        "created_at": "2026-11-29T12:00:00Z",
        "text": text,
        "media": media,
    }
    return json.dumps(doc).encode()


def _inline(kind: str, data: bytes) -> dict[str, str]:
    return {"kind": kind, "data_b64": base64.b64encode(data).decode()}


def _stream(base: str) -> tuple[list[SamplePost], dict[str, set[str]]]:
    speech, rate = speak("Our team won the championship game tonight.")
    posts: list[SamplePost] = []
    expect_modalities: dict[str, set[str]] = {}

    def valid(
        post_id: str, media: list[dict[str, str]], modalities: set[str], text: str = ""
    ) -> None:
        posts.append(SamplePost(_post(post_id, media, text), post_id, None))
        expect_modalities[post_id] = modalities

    def bad(post_id: str, media: dict[str, str], reason: DeadLetterReason) -> None:
        posts.append(SamplePost(_post(post_id, [media], "bad media"), post_id, None, reason))

    for i in range(6):
        valid(f"text-{i}", [], {"text"}, text=f"Plain text post number {i} about football")
    for i in range(4):
        valid(f"img-{i}", [_inline("image", themed_image_png("travel", i))], {"image"})
    valid("img-url-a", [{"kind": "image", "uri": f"{base}/img/a.png"}], {"image"})
    valid(
        "img-url-b",
        [{"kind": "image", "uri": f"{base}/img/b.png"}],
        {"image", "text"},
        text="lunch",
    )
    valid(
        "vid-mp4-speech",
        [_inline("video", make_video("mp4", 3.0, audio=speech, audio_rate=rate))],
        {"video", "audio", "text"},
    )
    valid("vid-webm", [_inline("video", make_video("webm", 2.0, seed=3))], {"video"})
    valid("vid-url", [{"kind": "video", "uri": f"{base}/video/clip.webm"}], {"video"})
    for kind in sorted(AUDIO_FORMATS):
        valid(f"aud-{kind}", [_inline("audio", make_audio(kind, tone(1.5, freq=330.0)))], {"audio"})
    valid("aud-url", [{"kind": "audio", "uri": f"{base}/audio/clip.mp3"}], {"audio"})
    valid(
        "mixed",
        [
            _inline("image", themed_image_png("news", 9)),
            _inline("audio", make_audio("wav", tone(1.0))),
        ],
        {"text", "image", "audio"},
        text="everything at once",
    )

    mp4 = make_video("mp4", 2.0)
    mp3 = make_audio("mp3", tone(3.0))
    bad(
        "bad-truncated-video",
        _inline("video", mp4[: len(mp4) // 3]),
        DeadLetterReason.MEDIA_UNDECODABLE,
    )
    bad("bad-truncated-audio", _inline("audio", mp3[:700]), DeadLetterReason.MEDIA_TRUNCATED)
    bad("bad-no-video-stream", _inline("video", audio_only_mp4()), DeadLetterReason.NO_VIDEO_STREAM)
    bad("bad-ten-hours", _inline("video", ten_hour_video()), DeadLetterReason.MEDIA_TOO_LONG)
    bad("bad-16k-frame", _inline("video", huge_frame_video()), DeadLetterReason.FRAME_TOO_LARGE)
    bad(
        "bad-unreachable",
        {"kind": "image", "uri": f"http://{HOST}:{free_port(HOST)}/x.png"},
        DeadLetterReason.MEDIA_UNAVAILABLE,
    )
    bad("bad-slow", {"kind": "image", "uri": f"{base}/slow.png"}, DeadLetterReason.MEDIA_TIMEOUT)
    bad(
        "bad-redirect-loopback",
        {"kind": "image", "uri": f"{base}/redirect.png"},
        DeadLetterReason.MEDIA_FORBIDDEN_ADDRESS,
    )
    bad(
        "bad-over-cap",
        {"kind": "image", "uri": f"{base}/huge.png"},
        DeadLetterReason.MEDIA_TOO_LARGE,
    )
    bad(
        "bad-zip-as-jpeg",
        {"kind": "image", "uri": f"{base}/zip.jpg"},
        DeadLetterReason.MEDIA_TYPE_MISMATCH,
    )
    return posts, expect_modalities


def test_mixed_media_stream(
    broker: LocalBroker, settings_for, media_server: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = settings_for(broker, prefix="multi")
    posts, expect_modalities = _stream(media_server)
    reasons = [p.expected_reason for p in posts if p.expected_reason]
    assert len(set(reasons)) == len(reasons), "each hostile input has its own reason"
    worker = start_worker(
        settings,
        tmp_path / "worker.log",
        fetch_allowed_networks=f'["{HOST}/32"]',
        fetch_read_timeout_s="1.5",
        fetch_total_timeout_s="4",
        max_media_bytes=str(CAP),
        max_batch="8",
    ).start()
    out = reader(broker, settings)
    try:
        worker.wait_ready()
        started = time.monotonic()
        produce_all(broker, settings, posts)
        done = out.wait_for(lambda o: o.accounted >= len(posts), timeout_s=240)
        elapsed = time.monotonic() - started
    finally:
        out.close()
        worker.stop()
    log = (tmp_path / "worker.log").read_text()[-4000:]
    assert done, f"only {out.outputs.accounted}/{len(posts)} accounted for\n{log}"
    assert elapsed < 240
    analyses = out.outputs.analyses
    assert set(analyses) == set(expect_modalities)
    for post_id, modalities in expect_modalities.items():
        assert set(analyses[post_id].modalities) == modalities, post_id
    assert "championship" in (analyses["vid-mp4-speech"].transcript or "").lower()
    dead = {d.post_id: d for d in out.outputs.dead_letters.values()}
    for post in posts:
        if post.expected_reason:
            assert dead[post.post_id].reason is post.expected_reason, (
                post.post_id,
                dead[post.post_id].detail,
            )
            assert dead[post.post_id].original == post.value
    count, ids = milvus_ids(settings)
    assert count == len(expect_modalities) and ids == set(expect_modalities)
