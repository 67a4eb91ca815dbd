"""Video and audio decoding with PyAV, bounded so a hostile file cannot hang the worker.

* video -> frames sampled at ``sample_fps`` up to ``max_frames`` (keyframes only when
  they are frequent enough, full decode otherwise) plus the audio track;
* audio -> 16 kHz mono float32.

Every decode checks, before and while decoding, the declared duration, the frame size
and a wall-clock deadline, and raises a :class:`MediaDecodeError` subclass that names
the reason.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from PIL import Image

SAMPLE_RATE = 16_000


class MediaDecodeError(ValueError):
    """The media could not be decoded within the limits."""

    reason = "media_undecodable"


class NoVideoStreamError(MediaDecodeError):
    """A 'video' with no video stream."""

    reason = "no_video_stream"


class NoAudioStreamError(MediaDecodeError):
    """An 'audio' item with no audio stream."""

    reason = "no_audio_stream"


class MediaTooLongError(MediaDecodeError):
    """Longer than the duration limit."""

    reason = "media_too_long"


class FrameTooLargeError(MediaDecodeError):
    """A frame over the pixel limit."""

    reason = "frame_too_large"


class MediaTruncatedError(MediaDecodeError):
    """Far less media decoded than the container declares."""

    reason = "media_truncated"


class DecodeTimeoutError(MediaDecodeError):
    """Decoding took longer than the wall-clock limit."""

    reason = "decode_timeout"


@dataclass(frozen=True)
class AVLimits:
    """Bounds on decoding one media item."""

    max_duration_s: float = 600.0
    max_frame_pixels: int = 4096 * 4096
    max_decode_s: float = 20.0
    sample_fps: float = 1.0
    max_frames: int = 16
    keyframe_min_ratio: float = 0.75


@dataclass
class DecodedVideo:
    """Sampled frames (RGB), their timestamps, and the audio track if any."""

    frames: list[Image.Image]
    timestamps: list[float]
    duration_s: float
    audio: np.ndarray | None
    used_keyframes: bool
    decoded_frames: int = 0


@dataclass
class DecodedAudio:
    """16 kHz mono float32 samples."""

    samples: np.ndarray
    duration_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.duration_s = len(self.samples) / SAMPLE_RATE


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise DecodeTimeoutError(f"decoding exceeded {self.seconds:.0f}s")


def _open(data: bytes) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(data), mode="r", timeout=5.0)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise MediaDecodeError(f"not a media container PyAV can read: {exc}") from exc


def _duration_s(
    container: av.container.InputContainer, stream: av.stream.Stream | None
) -> float | None:
    if stream is not None and stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _check_duration(duration: float | None, limits: AVLimits) -> None:
    if duration is not None and duration > limits.max_duration_s:
        raise MediaTooLongError(f"duration {duration:.0f}s exceeds {limits.max_duration_s:.0f}s")


def _resample_audio(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    limits: AVLimits,
    deadline: _Deadline,
) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    cap = int(limits.max_duration_s * SAMPLE_RATE)
    for frame in container.decode(stream):
        deadline.check()
        for out in resampler.resample(frame):
            chunk = out.to_ndarray().reshape(-1)
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:
            raise MediaTooLongError(f"audio longer than {limits.max_duration_s:.0f}s")
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def decode_audio(data: bytes, limits: AVLimits) -> DecodedAudio:
    """Any audio (or the audio track of a video) -> 16 kHz mono float32."""
    deadline = _Deadline(limits.max_decode_s)
    container = _open(data)
    try:
        if not container.streams.audio:
            raise NoAudioStreamError("no audio stream")
        stream = container.streams.audio[0]
        declared = _duration_s(container, stream)
        _check_duration(declared, limits)
        try:
            samples = _resample_audio(container, stream, limits, deadline)
        except MediaDecodeError:
            raise
        except (av.FFmpegError, ValueError) as exc:
            raise MediaDecodeError(f"corrupt audio: {exc}") from exc
        if samples.size == 0:
            raise MediaDecodeError("audio stream has no decodable samples")
        decoded = samples.size / SAMPLE_RATE
        if declared is not None and declared > 1.0 and decoded < 0.5 * declared:
            raise MediaTruncatedError(
                f"decoded {decoded:.1f}s of audio, the container declares {declared:.1f}s"
            )
        return DecodedAudio(samples)
    finally:
        container.close()


def _sample_times(duration: float, limits: AVLimits) -> list[float]:
    count = max(1, min(limits.max_frames, int(duration * limits.sample_fps) or 1))
    step = duration / count
    return [step * (i + 0.5) for i in range(count)]


def _pick(
    frames: list[tuple[float, Image.Image]], times: list[float]
) -> list[tuple[float, Image.Image]]:
    """For each wanted time, the nearest decoded frame (no repeats)."""
    chosen: dict[int, tuple[float, Image.Image]] = {}
    stamps = np.asarray([t for t, _ in frames])
    for wanted in times:
        idx = int(np.argmin(np.abs(stamps - wanted)))
        chosen.setdefault(idx, frames[idx])
    return [chosen[i] for i in sorted(chosen)]


def _decode_frames(
    data: bytes,
    limits: AVLimits,
    deadline: _Deadline,
    keyframes_only: bool,
    times: list[float] | None,
) -> tuple[list[tuple[float, Image.Image]], float, int]:
    container = _open(data)
    try:
        if not container.streams.video:
            raise NoVideoStreamError("no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:  # a codec tag this FFmpeg build has no decoder for
            raise MediaDecodeError("no decoder for the video stream's codec")
        if ctx.width and ctx.height and ctx.width * ctx.height > limits.max_frame_pixels:
            raise FrameTooLargeError(
                f"frames are {ctx.width}x{ctx.height}, limit {limits.max_frame_pixels} pixels"
            )
        duration = _duration_s(container, stream)
        _check_duration(duration, limits)
        if keyframes_only:
            ctx.skip_frame = "NONKEY"
        stream.thread_type = "AUTO"
        frames: list[tuple[float, Image.Image]] = []
        decoded = 0
        wanted = list(times or [])
        max_keep = limits.max_frames * 4
        for frame in container.decode(stream):
            deadline.check()
            decoded += 1
            if frame.width * frame.height > limits.max_frame_pixels:
                raise FrameTooLargeError(f"frame is {frame.width}x{frame.height}")
            time_base = stream.time_base or Fraction(1, 1000)
            ts = float(frame.pts * time_base) if frame.pts is not None else decoded / 30.0
            if ts > limits.max_duration_s:
                raise MediaTooLongError(f"video runs past {limits.max_duration_s:.0f}s")
            if keyframes_only:
                # some decoders ignore skip_frame: filter on the flag as well
                if frame.key_frame and len(frames) < max_keep:
                    frames.append((ts, frame.to_image()))
            elif wanted and ts + 1e-6 >= wanted[0]:
                frames.append((ts, frame.to_image()))
                while wanted and ts + 1e-6 >= wanted[0]:
                    wanted.pop(0)
                if not wanted:
                    break
        length = duration if duration is not None else (frames[-1][0] if frames else 0.0)
        return frames, length, decoded
    except MediaDecodeError:
        raise
    except (av.FFmpegError, ValueError, MemoryError) as exc:
        raise MediaDecodeError(f"corrupt video: {exc}") from exc
    finally:
        container.close()


def decode_video(data: bytes, limits: AVLimits, with_audio: bool = True) -> DecodedVideo:
    """Sampled frames plus the 16 kHz mono audio track (``None`` when there is none)."""
    deadline = _Deadline(limits.max_decode_s)
    keyframes, duration, decoded = _decode_frames(data, limits, deadline, True, None)
    times = _sample_times(duration, limits)
    used_keyframes = len(keyframes) >= max(1, int(len(times) * limits.keyframe_min_ratio))
    if used_keyframes:
        picked = _pick(keyframes, times)
    else:
        frames, duration, more = _decode_frames(data, limits, deadline, False, times)
        decoded += more
        if not frames:
            raise MediaDecodeError("video stream has no decodable frames")
        picked = frames
    audio = None
    if with_audio:
        try:
            audio = decode_audio(data, limits).samples
        except NoAudioStreamError:
            audio = None
        except MediaDecodeError:
            audio = None  # a broken audio track does not sink the video
    return DecodedVideo(
        frames=[img.convert("RGB") for _, img in picked],
        timestamps=[t for t, _ in picked],
        duration_s=duration,
        audio=audio,
        used_keyframes=used_keyframes,
        decoded_frames=decoded,
    )
