"""PyAV decoding of generated media, hostile files, and the audio/video encoders for real."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.audio import log_mel_spectrogram, mel_filters, mfcc
from encoders.export import check_parity, export_module
from encoders.media import (
    AVLimits,
    DecodeTimeoutError,
    FrameTooLargeError,
    MediaDecodeError,
    MediaTooLongError,
    MediaTruncatedError,
    NoAudioStreamError,
    NoVideoStreamError,
    decode_audio,
    decode_video,
)
from encoders.registry import get_encoder_spec
from encoders.serving import ServedBundle
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

LIMITS = AVLimits()


@pytest.mark.parametrize("kind", sorted(AUDIO_FORMATS))
def test_audio_formats_decode_to_16k_mono(kind: str) -> None:
    decoded = decode_audio(make_audio(kind, tone(2.0, freq=440.0)), LIMITS)
    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert decoded.duration_s == pytest.approx(2.0, abs=0.1)
    # the tone survives resampling: its spectral peak is at 440 Hz
    spectrum = np.abs(np.fft.rfft(decoded.samples[:16000]))
    assert np.argmax(spectrum) == pytest.approx(440, abs=3)


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_video_frames_and_audio_track(kind: str) -> None:
    data = make_video(kind, seconds=4.0, fps=10, audio=tone(4.0, freq=300.0))
    video = decode_video(data, LIMITS)
    assert len(video.frames) == 4 and video.frames[0].size == (320, 240)
    assert video.timestamps == sorted(video.timestamps)
    assert video.duration_s == pytest.approx(4.0, abs=0.2)
    assert video.audio is not None and len(video.audio) == pytest.approx(64_000, rel=0.05)


def test_keyframes_used_when_frequent_full_decode_otherwise() -> None:
    frequent = decode_video(make_video("mp4", seconds=6.0, fps=10, gop=10), LIMITS)
    assert frequent.used_keyframes and len(frequent.frames) == 6
    assert frequent.decoded_frames <= 10  # no full decode was needed
    rare = decode_video(make_video("mp4", seconds=6.0, fps=10, gop=250), LIMITS)
    assert not rare.used_keyframes and len(rare.frames) == 6
    assert rare.decoded_frames > 10
    # frames are sampled across the whole clip, not bunched at the start
    assert rare.timestamps[-1] > 4.5 and frequent.timestamps[-1] > 4.5


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: make_video("mp4")[:3000], MediaDecodeError),
        (lambda: b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20, MediaDecodeError),
        (audio_only_mp4, NoVideoStreamError),
        (ten_hour_video, MediaTooLongError),
        (huge_frame_video, FrameTooLargeError),
        # a flipped bit in the codec tag: PyAV gives the stream no codec context at all
        (lambda: make_video("mp4").replace(b"avc1", b"avc\x00"), MediaDecodeError),
    ],
    ids=["truncated-mp4", "corrupt-mp4", "no-video-stream", "ten-hours", "16k-frame", "no-codec"],
)
def test_hostile_videos(make, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        decode_video(make(), LIMITS)


def test_hostile_audio() -> None:
    flac = make_audio("flac", tone(4.0))
    with pytest.raises(MediaDecodeError):
        decode_audio(flac[: len(flac) // 4], LIMITS)
    mp3 = make_audio("mp3", tone(3.0))
    with pytest.raises(MediaTruncatedError):
        decode_audio(mp3[:700], LIMITS)
    with pytest.raises(NoAudioStreamError):
        decode_audio(make_video("mp4", seconds=1.0), LIMITS)
    with pytest.raises(MediaTooLongError):
        decode_audio(make_audio("wav", tone(3.0)), AVLimits(max_duration_s=1.0))
    with pytest.raises(MediaDecodeError):
        decode_audio(b"RIFF\x00\x00\x00\x00WAVEjunkjunk", LIMITS)


def test_decode_time_is_bounded() -> None:
    data = make_video("mp4", seconds=10.0, fps=25, gop=250)
    with pytest.raises(DecodeTimeoutError):
        decode_video(data, AVLimits(max_decode_s=0.0))


def test_temporal_model_export_parity_with_trained_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = get_encoder_spec("attention-pool-1280")
    assert spec.build_module is not None
    module = spec.build_module()
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.05)  # as a trained model would be: non-uniform attention
    export_module(module, spec, tmp_path / "temporal.onnx")
    report = check_parity(module, spec, tmp_path / "temporal.onnx", batch_sizes=(1, 3))
    assert max(report.max_abs_diff.values()) <= 1e-4


def test_untrained_temporal_model_is_mean_pooling(served_bundle: ServedBundle) -> None:
    assert served_bundle.video is not None
    rng = np.random.default_rng(0)
    a, b = (
        rng.normal(size=(3, 1280)).astype(np.float32),
        rng.normal(size=(5, 1280)).astype(np.float32),
    )
    pooled = served_bundle.video.encode([a, b])
    np.testing.assert_allclose(pooled[0], a.mean(0), atol=1e-5)
    np.testing.assert_allclose(pooled[1], b.mean(0), atol=1e-5)


def test_speech_embeddings_and_vad(served_bundle: ServedBundle) -> None:
    audio = served_bundle.audio
    assert audio is not None
    speech, rate = speak(
        "The quick brown fox jumps over the lazy dog. Postpulse listens to every post."
    )
    assert rate > 0
    speech16 = decode_audio(make_audio("wav", speech, rate=rate), LIMITS).samples
    sine = decode_audio(make_audio("wav", tone(3.0, freq=440.0)), LIMITS).samples
    noise = (np.random.default_rng(1).normal(size=48_000) * 0.05).astype(np.float32)
    vad = served_bundle.vad
    assert vad is not None
    assert vad.speech_ratio(speech16) > 0.4
    assert vad.speech_ratio(sine) < 0.1 and vad.speech_ratio(noise) < 0.1
    emb = audio.encode([speech16, speech16[:32_000], sine])
    assert emb.shape == (3, 96) and np.all(np.isfinite(emb))

    def cos(x: np.ndarray, y: np.ndarray) -> float:
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    # two cuts of the same speech are closer to each other than to a sine tone
    assert cos(emb[0], emb[1]) > cos(emb[0], emb[2])


def test_log_mel_matches_whisper_feature_extractor() -> None:
    from transformers import WhisperFeatureExtractor

    samples = decode_audio(
        make_audio("wav", tone(2.0, freq=700.0) + tone(2.0, freq=2500.0, amp=0.1)), LIMITS
    ).samples
    reference = WhisperFeatureExtractor(feature_size=80)
    expected = reference._np_extract_fbank_features(samples[None, :], "cpu")[0]
    ours = log_mel_spectrogram(samples)
    np.testing.assert_allclose(mel_filters(), reference.mel_filters.T.astype(np.float32), atol=1e-6)
    np.testing.assert_allclose(ours, expected, atol=2e-3)
    coefficients = mfcc(samples)
    assert coefficients.shape == (20, ours.shape[1]) and np.all(np.isfinite(coefficients))


def test_whisper_encoder_conversion_matches_ctranslate2_and_exports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import ctranslate2

    from encoders.whisper import WhisperAudioEncoder, _whisper_dir, whisper_inputs

    spec = get_encoder_spec("whisper-tiny.en-encoder")
    assert spec.build_module is not None
    module = spec.build_module()
    samples, rate = speak("Postpulse turns speech into vectors.")
    clip = decode_audio(make_audio("wav", samples, rate=rate), LIMITS).samples
    feed = whisper_inputs([clip, tone(2.0, rate=16_000)])
    # the converted PyTorch encoder computes what CTranslate2 computes from the same weights
    reference = ctranslate2.models.Whisper(
        str(_whisper_dir()), device="cpu", compute_type="float32"
    )
    expected = np.asarray(
        reference.encode(ctranslate2.StorageView.from_array(feed["input_features"]))
    )
    with torch.no_grad():
        hidden = module.inner(torch.from_numpy(feed["input_features"])).last_hidden_state.numpy()
    assert np.abs(hidden - expected).max() <= 1e-3
    # and the exported ONNX file computes what the PyTorch module computes
    export_module(module, spec, tmp_path / "model.onnx")
    report = check_parity(module, spec, tmp_path / "model.onnx")
    assert report.max_abs_diff["audio_embedding"] <= 1e-4
    runtime = WhisperAudioEncoder(tmp_path, {"dim": 384, "file": "model.onnx"}, device="cpu")
    emb = runtime.encode([clip, clip[: len(clip) // 2], tone(2.0, rate=16_000)])
    assert emb.shape == (3, 384)
    cosine = emb @ emb.T / np.outer(np.linalg.norm(emb, axis=1), np.linalg.norm(emb, axis=1))
    assert cosine[0, 1] > cosine[0, 2]


def test_a_batch_decoded_in_parallel_keeps_every_outcome_in_place(
    served_bundle: ServedBundle,
) -> None:
    """The decode pool (issue 16) on a real mixed batch — images, videos, audio and
    every kind of broken media — gives each message the outcome the serial decode
    gives it, in the same order, and it really ran on the pool's threads."""
    import threading

    from streams.pipeline import PostPipeline
    from streams.records import Envelope
    from streams.samples import mixed_stream
    from streams.settings import Settings
    from streams.stages.decode import DecodedPost

    samples = mixed_stream(24, 16, seed=31, av=6)
    serial = PostPipeline(Settings(cpu_threads=1), served_bundle)
    parallel = PostPipeline(Settings(cpu_threads=2), served_bundle)
    assert serial._decode_pool is None and parallel._decode_pool is not None
    valid = [
        v
        for v in (serial.validator(Envelope(value=s.value)) for s in samples)
        if not hasattr(v, "reason")
    ]
    assert sum(1 for v in valid if v.post.media) >= 10

    def summary(outs: list[object]) -> list[tuple[str, object]]:
        return [
            ("decoded", (len(o.images), len(o.videos), len(o.audios)))
            if isinstance(o, DecodedPost)
            else ("dead", o.reason)  # type: ignore[attr-defined]
            for o in outs
        ]

    one = serial._decode_all(valid, {})
    two = parallel._decode_all(valid, {})
    assert summary(one) == summary(two)
    assert [o.validated.post.post_id for o in two if isinstance(o, DecodedPost)] == [
        o.validated.post.post_id for o in one if isinstance(o, DecodedPost)
    ]
    assert any(t.name.startswith("postpulse-decode") for t in threading.enumerate())
    assert {"dead"} <= {kind for kind, _ in summary(two)}
