"""Decode stage: load each post's media (inline base64, local files) and decode images.

Remote URLs arrive with the media-fetching stage; until then they are refused with a
clear reason. Video and audio items are skipped (and counted) because this bundle has
no encoder for them; the post's other modalities are still analysed.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from encoders.image import ImageDecodeError, ImageTooLargeError, decode_image
from streams.records import DeadLetter, DeadLetterReason, Media, MediaKind
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


@dataclass
class DecodedPost:
    """A valid post with its decoded images and the media kinds it had to skip."""

    validated: ValidatedPost
    images: list[Image.Image] = field(default_factory=list)
    skipped_media: list[str] = field(default_factory=list)


def load_media_bytes(media: Media, limits: DecodeLimits) -> bytes:
    """The raw bytes of one media item, within the byte limit and the media root."""
    if media.data_b64 is not None:
        if len(media.data_b64) * 3 // 4 > limits.max_media_bytes:
            raise MediaError(
                DeadLetterReason.MEDIA_TOO_LARGE,
                f"inline media is over {limits.max_media_bytes} bytes",
            )
        try:
            return base64.b64decode(media.data_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(
                DeadLetterReason.IMAGE_UNDECODABLE, f"data_b64 is not valid base64: {exc}"
            ) from exc
    assert media.uri is not None
    parsed = urlparse(media.uri)
    if parsed.scheme in ("http", "https"):
        raise MediaError(
            DeadLetterReason.UNSUPPORTED_MEDIA,
            "remote media URLs are not fetched by this worker version (inline or file:// only)",
        )
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


class MediaDecoder:
    """Loads and decodes the media of validated posts; never raises for bad media."""

    name = "decode"

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits

    def __call__(self, item: ValidatedPost) -> DecodedPost | DeadLetter:
        """One valid post -> its decoded media, or the dead letter of its first bad item."""
        decoded = DecodedPost(item)
        for i, media in enumerate(item.post.media):
            if media.kind is not MediaKind.IMAGE:
                decoded.skipped_media.append(media.kind.value)
                continue
            try:
                data = load_media_bytes(media, self.limits)
                decoded.images.append(decode_image(data, self.limits.max_image_pixels))
            except MediaError as exc:
                return self._reject(item, exc.reason, f"media.{i}: {exc.detail}")
            except ImageTooLargeError as exc:
                return self._reject(item, DeadLetterReason.IMAGE_TOO_LARGE, f"media.{i}: {exc}")
            except ImageDecodeError as exc:
                return self._reject(item, DeadLetterReason.IMAGE_UNDECODABLE, f"media.{i}: {exc}")
        if not item.post.text.strip() and not decoded.images:
            return self._reject(
                item,
                DeadLetterReason.UNSUPPORTED_MEDIA,
                f"nothing this bundle can encode (media: {', '.join(decoded.skipped_media)})",
            )
        return decoded

    @staticmethod
    def _reject(item: ValidatedPost, reason: DeadLetterReason, detail: str) -> DeadLetter:
        return item.envelope.dead_letter(reason, "decode", detail, item.post.post_id)
