"""Generated media for the demo, tests and benchmarks: videos, audio, speech, hostile files.

Everything is made locally with PyAV (and Debian's ``espeak-ng`` for speech when it is
installed); nothing is downloaded.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

VIDEO_FORMATS = {
    "mp4": ("mp4", "libx264", "aac"),
    "webm": ("webm", "libvpx-vp9", "libopus"),
}
AUDIO_FORMATS = {
    "wav": ("wav", "pcm_s16le", "s16"),
    "flac": ("flac", "flac", "s16"),
    "mp3": ("mp3", "libmp3lame", "fltp"),
    "m4a": ("ipod", "aac", "fltp"),
    "ogg": ("ogg", "libopus", "flt"),
}


def tone(seconds: float, rate: int = 48_000, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    """A sine tone, float32 mono."""
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _add_audio_stream(container: Any, codec: str, rate: int) -> Any:
    stream = container.add_stream(codec, rate=rate)
    stream.layout = "mono"
    return stream


def _encode_audio(container: Any, stream: Any, samples: np.ndarray, fmt: str) -> None:
    rate = stream.rate
    frame_size = stream.codec_context.frame_size or 1024
    pts = 0
    for start in range(0, len(samples), frame_size):
        chunk = samples[start : start + frame_size]
        if len(chunk) < frame_size and stream.codec_context.name in (
            "libopus",
            "aac",
            "libmp3lame",
        ):
            chunk = np.pad(chunk, (0, frame_size - len(chunk)))
        if fmt == "s16":
            data = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)[None, :]
        else:
            data = chunk.astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        frame.sample_rate = rate
        frame.pts = pts
        pts += len(chunk)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def make_audio(kind: str, samples: np.ndarray, rate: int = 48_000) -> bytes:
    """Encode mono float samples as ``kind`` (wav, flac, mp3, m4a, ogg)."""
    container_fmt, codec, fmt = AUDIO_FORMATS[kind]
    if codec == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
        raise ValueError("opus needs 8/12/16/24/48 kHz")
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_fmt) as container:
        _encode_audio(container, _add_audio_stream(container, codec, rate), samples, fmt)
    return buf.getvalue()


def video_frames(
    seconds: float, fps: int, width: int, height: int, seed: int = 0
) -> list[np.ndarray]:
    """Moving shapes on a coloured background, RGB uint8."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 220, size=3)
    frames = []
    for i in range(int(seconds * fps)):
        img = np.empty((height, width, 3), np.uint8)
        img[:] = base
        x = (i * 7) % max(1, width - 40)
        img[height // 3 : height // 3 + 40, x : x + 40] = (255, 255, 255)
        img[: height // 8, :, 0] = (i * 13) % 255
        frames.append(img)
    return frames


def make_video(
    kind: str = "mp4",
    seconds: float = 3.0,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    audio: np.ndarray | None = None,
    audio_rate: int = 48_000,
    gop: int | None = None,
    seed: int = 0,
    frames: list[np.ndarray] | None = None,
) -> bytes:
    """H.264+AAC MP4 or VP9+Opus WebM; ``audio`` (mono float) becomes the sound track."""
    container_fmt, vcodec, acodec = VIDEO_FORMATS[kind]
    buf = io.BytesIO()
    container: Any
    with av.open(buf, "w", format=container_fmt) as container:
        stream = container.add_stream(vcodec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        if vcodec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        astream = _add_audio_stream(container, acodec, audio_rate) if audio is not None else None
        for img in frames or video_frames(seconds, fps, size[0], size[1], seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            _encode_audio(container, astream, audio, "fltp" if acodec == "aac" else "flt")
    return buf.getvalue()


def espeak_available() -> bool:
    """Whether Debian's espeak-ng is installed."""
    return shutil.which("espeak-ng") is not None


def speak(text: str, words_per_minute: int = 150) -> tuple[np.ndarray, int]:
    """Speech for ``text`` from espeak-ng: (float32 mono samples, sample rate)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", str(words_per_minute), "--stdout", text],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    reader: Any
    with av.open(io.BytesIO(wav)) as reader:
        stream = reader.streams.audio[0]
        rate = stream.rate
        chunks = [f.to_ndarray().astype(np.float32).reshape(-1) for f in reader.decode(stream)]
    samples = np.concatenate(chunks)
    if samples.dtype != np.float32 or np.abs(samples).max() > 1.5:
        samples = samples / 32768.0
    return samples.astype(np.float32), int(rate)


# --- hostile media ---------------------------------------------------------------------------


def huge_frame_video(side: int = 16_000) -> bytes:
    """A tiny file whose video stream declares ``side`` x ``side`` frames (YUV4MPEG2)."""
    return f"YUV4MPEG2 W{side} H{side} F1:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + b"\x00" * 1024


def ten_hour_video() -> bytes:
    """A few-KB MPEG-4 video in Matroska that lasts ten hours (two frames, 36,000 s apart)."""
    buf = io.BytesIO()
    # bitexact: no random segment UID or muxing date, so the bytes are the same every run
    with av.open(buf, "w", format="matroska", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width, stream.height = 64, 64
        stream.pix_fmt = "yuv420p"
        for pts in (0, 36_000):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = pts
            frame.time_base = Fraction(1, 1)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def audio_only_mp4(seconds: float = 2.0) -> bytes:
    """An MP4 with an AAC track and no video stream."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        _encode_audio(container, _add_audio_stream(container, "aac", 48_000), tone(seconds), "fltp")
    return buf.getvalue()


def packaged_photos() -> dict[str, Any]:
    """The real photographs that ship inside installed packages, as RGB PIL images:
    scikit-learn's two sample pictures (``china``, ``flower``: no lettering) and
    matplotlib's portrait of Grace Hopper (``hopper``: a badge with small lettering)."""
    import matplotlib.cbook
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = {}
    for path in load_sample_images().filenames:
        with Image.open(path) as image:
            photos[Path(path).stem] = image.convert("RGB")
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        photos["hopper"] = image.convert("RGB")
    return photos


def captioned(
    picture: Any, text: str, height_share: float, boxed: bool, at: tuple[float, float] = (0.1, 0.4)
) -> Any:
    """``picture`` (PIL) with ``text`` drawn on it, its letters ``height_share`` of the
    picture's longer side tall: dark on a pale box (``boxed``) or white with a dark outline
    straight on the picture, its top-left at ``at`` (shares of width and height)."""
    from PIL import ImageDraw, ImageFont

    out = picture.copy()
    draw = ImageDraw.Draw(out)
    size = max(6, round(height_share * max(out.size)))
    font = ImageFont.load_default(size=size)
    x, y = round(at[0] * out.width), round(at[1] * out.height)
    if boxed:
        width = round(draw.textlength(text, font=font))
        draw.rectangle((x - 8, y - 4, x + width + 8, y + size + 8), fill=(250, 250, 245))
        draw.text((x, y), text, fill=(20, 20, 20), font=font)
    else:
        stroke = max(1, size // 12)
        draw.text(
            (x, y),
            text,
            fill=(255, 255, 255),
            font=font,
            stroke_width=stroke,
            stroke_fill=(0, 0, 0),
        )
    return out
