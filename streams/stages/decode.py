"""Decode stage: get each post's media bytes (inline, local file, or fetched over
http(s) — all of a batch's URLs concurrently), check they are the kind the post says,
and decode them: images with Pillow, video and audio with PyAV.

Media kinds the bundle has no encoder for are skipped (and counted); the post's other
modalities are still analysed. Any failure dead-letters the post with its reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

from encoders.image import ImageDecodeError, ImageTooLargeError, decode_image
from encoders.media import AVLimits, DecodedVideo, MediaDecodeError, decode_audio, decode_video
from streams.records import DeadLetter, DeadLetterReason, Media, MediaKind
from streams.stages.fetch import FetchedMedia, FetchError, MediaFetcher, check_kind
from streams.stages.validate import ValidatedPost


class MediaError(Exception):
    """A media item could not be loaded; carries the dead-letter reason."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeLimits:
    """Limits on media bytes and decoded size."""

    max_media_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    media_root: Path | None = None
    av: AVLimits = field(default_factory=AVLimits)


@dataclass
class DecodedPost:
    """A valid post with its decoded media and the media kinds it had to skip."""

    validated: ValidatedPost
    images: list[Image.Image] = field(default_factory=list)
    videos: list[DecodedVideo] = field(default_factory=list)
    audios: list[np.ndarray] = field(default_factory=list)
    skipped_media: list[str] = field(default_factory=list)

    @property
    def audio_clips(self) -> list[np.ndarray]:
        """Audio files plus the sound tracks of videos (16 kHz mono)."""
        return self.audios + [v.audio for v in self.videos if v.audio is not None and v.audio.size]


def is_remote(media: Media) -> bool:
    """Whether the item is fetched over http(s)."""
    return media.uri is not None and urlparse(media.uri).scheme in ("http", "https")


def load_media_bytes(media: Media, limits: DecodeLimits) -> bytes:
    """The raw bytes of an inline or local media item, within the byte limit and media root."""
    if media.data_b64 is not None:
        if len(media.data_b64) * 3 // 4 > limits.max_media_bytes:
            raise MediaError(
                DeadLetterReason.MEDIA_TOO_LARGE,
                f"inline media is over {limits.max_media_bytes} bytes",
            )
        try:
            return base64.b64decode(media.data_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            reason = (
                DeadLetterReason.IMAGE_UNDECODABLE
                if media.kind is MediaKind.IMAGE
                else DeadLetterReason.MEDIA_UNDECODABLE
            )
            raise MediaError(reason, f"data_b64 is not valid base64: {exc}") from exc
    assert media.uri is not None
    parsed = urlparse(media.uri)
    if parsed.scheme not in ("", "file"):
        raise MediaError(
            DeadLetterReason.UNSUPPORTED_MEDIA, f"unsupported URI scheme {parsed.scheme!r}"
        )
    if limits.media_root is None:
        raise MediaError(
            DeadLetterReason.MEDIA_UNAVAILABLE,
            "local media files are disabled (set POSTPULSE_MEDIA_ROOT)",
        )
    root = limits.media_root.resolve()
    raw_path = Path(unquote(parsed.path if parsed.scheme == "file" else media.uri))
    path = (raw_path if raw_path.is_absolute() else root / raw_path).resolve()
    if not path.is_relative_to(root):
        raise MediaError(
            DeadLetterReason.MEDIA_UNAVAILABLE, f"{media.uri} is outside the media root"
        )
    try:
        size = path.stat().st_size
        if size > limits.max_media_bytes:
            raise MediaError(
                DeadLetterReason.MEDIA_TOO_LARGE,
                f"{media.uri} is {size} bytes, limit {limits.max_media_bytes}",
            )
        with path.open("rb") as handle:
            return handle.read(limits.max_media_bytes + 1)
    except OSError as exc:
        raise MediaError(
            DeadLetterReason.MEDIA_UNAVAILABLE, f"cannot read {media.uri}: {exc}"
        ) from exc


Prefetched = dict[tuple[int, int], FetchedMedia | FetchError]
"""Fetch results by (index of the post in the batch, index of the media item)."""


class MediaDecoder:
    """Loads and decodes the media of validated posts; never raises for bad media."""

    name = "decode"

    def __init__(
        self,
        limits: DecodeLimits,
        fetcher: MediaFetcher | None = None,
        supported: frozenset[str] = frozenset({"image", "audio", "video"}),
    ) -> None:
        self.limits = limits
        self.fetcher = fetcher
        self.supported = supported

    def prefetch(self, items: list[ValidatedPost]) -> Prefetched:
        """Fetch every remote media item of the batch concurrently (own event loop,
        so this runs in the worker thread and never blocks the agent's loop)."""
        wanted = [
            ((i, j), media.uri)
            for i, item in enumerate(items)
            for j, media in enumerate(item.post.media)
            if is_remote(media) and media.kind.value in self.supported and media.uri
        ]
        if not wanted or self.fetcher is None:
            return {}
        results = asyncio.run(self.fetcher.fetch_many([url for _, url in wanted]))
        return {key: result for (key, _), result in zip(wanted, results, strict=True)}

    def __call__(
        self, item: ValidatedPost, fetched: Prefetched | None = None, index: int = 0
    ) -> DecodedPost | DeadLetter:
        """One valid post -> its decoded media, or the dead letter of its first bad item."""
        decoded = DecodedPost(item)
        for j, media in enumerate(item.post.media):
            if media.kind.value not in self.supported:
                decoded.skipped_media.append(media.kind.value)
                continue
            try:
                data = self._bytes(media, (fetched or {}).get((index, j)))
                check_kind(media.kind.value, data, media.mime)
                self._decode_into(decoded, media.kind, data)
            except (MediaError, FetchError) as exc:
                return self._reject(item, exc.reason, f"media.{j}: {exc.detail}")
            except ImageTooLargeError as exc:
                return self._reject(item, DeadLetterReason.IMAGE_TOO_LARGE, f"media.{j}: {exc}")
            except ImageDecodeError as exc:
                return self._reject(item, DeadLetterReason.IMAGE_UNDECODABLE, f"media.{j}: {exc}")
            except MediaDecodeError as exc:
                return self._reject(item, DeadLetterReason(exc.reason), f"media.{j}: {exc}")
        if not item.post.text.strip() and not (decoded.images or decoded.videos or decoded.audios):
            return self._reject(
                item,
                DeadLetterReason.UNSUPPORTED_MEDIA,
                f"nothing this bundle can encode (media: {', '.join(decoded.skipped_media)})",
            )
        return decoded

    def _bytes(self, media: Media, fetched: FetchedMedia | FetchError | None) -> bytes:
        if not is_remote(media):
            return load_media_bytes(media, self.limits)
        if self.fetcher is None:
            raise MediaError(
                DeadLetterReason.UNSUPPORTED_MEDIA, "remote media fetching is disabled"
            )
        if fetched is None:
            raise MediaError(DeadLetterReason.MEDIA_UNAVAILABLE, f"{media.uri} was not fetched")
        if isinstance(fetched, FetchError):
            raise fetched
        return fetched.data

    def _decode_into(self, decoded: DecodedPost, kind: MediaKind, data: bytes) -> None:
        if kind is MediaKind.IMAGE:
            decoded.images.append(decode_image(data, self.limits.max_image_pixels))
        elif kind is MediaKind.VIDEO:
            decoded.videos.append(
                decode_video(data, self.limits.av, with_audio="audio" in self.supported)
            )
        else:
            decoded.audios.append(decode_audio(data, self.limits.av).samples)

    @staticmethod
    def _reject(item: ValidatedPost, reason: DeadLetterReason, detail: str) -> DeadLetter:
        return item.envelope.dead_letter(reason, "decode", detail, item.post.post_id)
