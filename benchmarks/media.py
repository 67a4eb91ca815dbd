"""Media benchmarks: decode paths and the audio/video/OCR/speech models, each against a
baseline measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from encoders.media import AVLimits, decode_audio, decode_video
from encoders.serving import ServedBundle
from streams.sample_media import make_audio, make_video, speak


def _timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best-of-``repeat`` wall time and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_video_decode(seconds: float = 20.0, fps: int = 30) -> dict[str, Any]:
    """Sampling 16 frames from a 640x360 H.264 clip: keyframe-only decode vs full decode."""
    data = make_video("mp4", seconds=seconds, fps=fps, size=(640, 360), gop=fps)
    limits = AVLimits(max_frames=16, sample_fps=1.0)
    key_s, key = _timed(lambda: decode_video(data, limits, with_audio=False))
    full_limits = AVLimits(
        max_frames=16, sample_fps=1.0, keyframe_min_ratio=1e9
    )  # never enough keyframes
    full_s, full = _timed(lambda: decode_video(data, full_limits, with_audio=False))
    assert key.used_keyframes and not full.used_keyframes
    return {
        "video": f"{seconds:.0f}s {fps}fps 640x360 H.264, keyframe every second",
        "keyframe_decode_s": key_s,
        "full_decode_s": full_s,
        "keyframe_frames_decoded_per_s": key.decoded_frames / key_s,
        "full_frames_decoded_per_s": full.decoded_frames / full_s,
        "sampled_frames": len(key.frames),
        "speedup": full_s / key_s,
    }


def bench_audio_decode(seconds: float = 30.0) -> dict[str, Any]:
    """Decode + resample to 16 kHz mono, seconds of audio per second, per format."""
    from streams.sample_media import AUDIO_FORMATS, tone

    out: dict[str, Any] = {}
    for kind in sorted(AUDIO_FORMATS):
        data = make_audio(kind, tone(seconds))
        took, _ = _timed(lambda data=data: decode_audio(data, AVLimits()))
        out[kind] = {"audio_seconds_per_s": seconds / took}
    return out


def bench_temporal_model(
    bundle: ServedBundle, videos: int = 64, frames: int = 16
) -> dict[str, Any]:
    """Attention pooling: batched ONNX over all videos vs PyTorch eager per video."""
    import torch

    from encoders.registry import get_encoder_spec

    assert bundle.video is not None
    rng = np.random.default_rng(0)
    per_video = [rng.normal(size=(frames, 1280)).astype(np.float32) for _ in range(videos)]
    spec = get_encoder_spec("attention-pool-1280")
    assert spec.build_module is not None
    module = spec.build_module()
    mask = torch.ones(1, frames)
    bundle.video.encode(per_video[:2])
    onnx_s, onnx_out = _timed(lambda: bundle.video.encode(per_video))  # type: ignore[union-attr]
    with torch.no_grad():
        torch_s, torch_out = _timed(
            lambda: torch.cat([module(torch.from_numpy(v)[None], mask) for v in per_video])
        )
    return {
        "items": videos,
        "onnx_batched_items_per_s": videos / onnx_s,
        "torch_eager_per_item_items_per_s": videos / torch_s,
        "speedup": torch_s / onnx_s,
        "max_abs_diff": float(np.abs(torch_out.numpy() - onnx_out).max()),
    }


def bench_speech_embedding(
    bundle: ServedBundle, clips: int = 16, seconds: float = 5.0
) -> dict[str, Any]:
    """Speech embedding (ships as ONNX, no PyTorch source): all windows of all clips in
    shared batches vs one clip per call."""
    assert bundle.audio is not None
    audio = bundle.audio
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=int(seconds * 16_000)) * 0.1).astype(np.float32) for _ in range(clips)]
    batched_s, batched = _timed(lambda: audio.encode(data))
    single_s, single = _timed(lambda: np.concatenate([audio.encode([c]) for c in data]))
    return {
        "clips": clips,
        "clip_seconds": seconds,
        "batched_clips_per_s": clips / batched_s,
        "per_clip_clips_per_s": clips / single_s,
        "speedup": single_s / batched_s,
        "max_abs_diff": float(np.abs(batched - single).max()),
    }


def bench_speech_to_text(bundle: ServedBundle, clips: int = 4) -> dict[str, Any]:
    """Whisper tiny.en: one batched generate over all clips vs one clip per call."""
    assert bundle.stt is not None
    stt = bundle.stt
    samples, rate = speak("Our team won the championship game tonight.")
    clip = decode_audio(make_audio("wav", samples, rate=rate), AVLimits()).samples
    data = [clip] * clips
    batched_s, _ = _timed(lambda: stt.transcribe(data), repeat=2)
    single_s, _ = _timed(lambda: [stt.transcribe([c]) for c in data], repeat=2)
    return {
        "clips": clips,
        "batched_clips_per_s": clips / batched_s,
        "per_clip_clips_per_s": clips / single_s,
        "speedup": single_s / batched_s,
    }


def bench_ocr(bundle: ServedBundle, images: int = 8) -> dict[str, Any]:
    """PP-OCRv4 with postpulse's detector sizing vs the package default (upscale the
    shorter side to 736 px), on 480x270 social-size images with a caption."""
    from rapidocr_onnxruntime import RapidOCR

    assert bundle.ocr is not None
    ours = bundle.ocr
    pictures = []
    for i in range(images):
        image = Image.new("RGB", (480, 270), (240, 240, 230))
        ImageDraw.Draw(image).text(
            (20, 110), f"Sale ends Friday {i}", fill="black", font=ImageFont.load_default(size=32)
        )
        pictures.append(image)
    default = RapidOCR(print_verbose=False)
    ours.read(pictures[0])
    default(np.asarray(pictures[0])[:, :, ::-1])
    ours_s, _ = _timed(lambda: [ours.read(p) for p in pictures], repeat=2)
    default_s, _ = _timed(lambda: [default(np.asarray(p)[:, :, ::-1]) for p in pictures], repeat=2)
    return {
        "images": images,
        "postpulse_images_per_s": images / ours_s,
        "package_default_images_per_s": images / default_s,
        "speedup": default_s / ours_s,
    }
