"""Speech to text (Whisper tiny.en) and OCR (PP-OCRv4) measured against what was said/written."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from encoders.media import AVLimits, decode_audio
from encoders.ocr import GATE_SIDE, ImageTextReader
from encoders.serving import ServedBundle
from streams.pipeline import PostPipeline
from streams.records import Envelope
from streams.sample_media import captioned, make_audio, make_video, packaged_photos, speak
from streams.settings import Settings

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Our team won the championship game tonight.",
    "Please call me back after the meeting.",
    "The weather is sunny and warm today.",
    "I love this new coffee shop downtown.",
]
SIGNS = ["Summer sale starts Friday", "Breaking news tonight", "Open 24 hours"]


def edit_distance(ref: list[str] | str, hyp: list[str] | str) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(refs: list[str], hyps: list[str]) -> float:
    errors = sum(edit_distance(words(r), words(h)) for r, h in zip(refs, hyps, strict=True))
    return errors / sum(len(words(r)) for r in refs)


def char_accuracy(ref: str, hyp: str) -> float:
    ref_n, hyp_n = (
        re.sub(r"\s+", " ", ref.lower()).strip(),
        re.sub(r"\s+", " ", hyp.lower()).strip(),
    )
    return 1.0 - edit_distance(ref_n, hyp_n) / len(ref_n)


def sign(text: str, size: tuple[int, int] = (560, 220)) -> Image.Image:
    image = Image.new("RGB", size, (250, 250, 245))
    draw = ImageDraw.Draw(image)
    draw.text(
        (24, size[1] // 2 - 24), text, fill=(20, 20, 20), font=ImageFont.load_default(size=40)
    )
    return image


def test_word_error_rate_on_espeak_sentences(served_bundle: ServedBundle) -> None:
    assert served_bundle.stt is not None
    clips = []
    for sentence in SENTENCES:
        samples, rate = speak(sentence)
        clips.append(decode_audio(make_audio("wav", samples, rate=rate), AVLimits()).samples)
    hyps = served_bundle.stt.transcribe(clips)
    wer = word_error_rate(SENTENCES, hyps)
    assert wer <= 0.35, list(zip(SENTENCES, hyps, strict=True))
    (silence,) = served_bundle.stt.transcribe([np.zeros(16_000, np.float32)])
    assert len(words(silence)) <= 3, silence


def test_ocr_reads_rendered_text(served_bundle: ServedBundle) -> None:
    assert served_bundle.ocr is not None
    scores = [char_accuracy(text, served_bundle.ocr.read(sign(text))) for text in SIGNS]
    assert float(np.mean(scores)) >= 0.9, scores
    assert served_bundle.ocr.read(Image.new("RGB", (300, 200), "white")) == ""


def _scaled(picture: Image.Image, side: int) -> Image.Image:
    scale = side / max(picture.size)
    return picture.resize((round(picture.width * scale), round(picture.height * scale)))


def test_ocr_gate_turns_away_real_photos_without_text_and_reads_captions(
    bundle_path: Path,
) -> None:
    """The gate (issue 16) on the real photographs that ship in scikit-learn and
    matplotlib: without text they are turned away before the full read and lose
    nothing the full read finds; captions of ordinary size drawn on them are read as
    the ungated reader reads them; a picture too small to gate is read in full."""
    gated = ImageTextReader(bundle_path / "ocr")
    full = ImageTextReader(bundle_path / "ocr", gate_side=0)
    assert gated.gate_side == GATE_SIDE > 0
    photos = {name: _scaled(photo, 1080) for name, photo in packaged_photos().items()}
    for name in ("china", "flower"):
        before = gated.gated_out
        assert gated.read(photos[name]) == full.read(photos[name]) == "", name
        assert gated.gated_out == before + 1, name
    for name, photo in photos.items():
        for boxed in (True, False):
            picture = captioned(photo, SIGNS[0], 0.03, boxed)
            before = gated.gated_out
            text = gated.read(picture)
            assert gated.gated_out == before, (name, boxed)
            # most of the caption's words are read (OCR may join two of them)
            assert len(set(words(SIGNS[0])) & set(words(text))) >= 3, (name, boxed, text)
            assert text == full.read(picture), (name, boxed)
    small = packaged_photos()["china"]  # 640 px: the detector's input is small already
    before = gated.gated_out
    assert gated.may_hold_text(small) and gated.read(small) == full.read(small)
    assert gated.gated_out == before and full.gated_out == 0


def test_ocr_gate_side_setting_reaches_the_reader(bundle_path: Path) -> None:
    assert Settings().ocr_gate_side == GATE_SIDE
    ungated = ServedBundle(bundle_path, ocr_gate_side=0, stt=False)
    assert ungated.ocr is not None and ungated.ocr.gate_side == 0
    picture = _scaled(packaged_photos()["flower"], 1080)
    assert ungated.ocr.may_hold_text(picture)


def test_video_only_post_with_speech_is_understood(served_bundle: ServedBundle) -> None:
    said = SENTENCES[1]
    samples, rate = speak(said)
    frames = [np.asarray(sign(SIGNS[0]).resize((320, 240)))] * 40
    video = make_video("mp4", seconds=4.0, fps=10, audio=samples, audio_rate=rate, frames=frames)
    doc = {
        "post_id": "video-speech",
        "platform": "x",
        "author_id": "u",
        "created_at": 1_700_000_000_000,
        "media": [{"kind": "video", "data_b64": base64.b64encode(video).decode()}],
    }
    outcome = PostPipeline(Settings(), served_bundle).process(
        [Envelope(value=json.dumps(doc).encode())]
    )
    (analysed,) = outcome.analysed
    analysis = analysed.analysis
    assert {"video", "audio", "text"} <= set(analysis.modalities)
    assert analysis.speech_ratio is not None and analysis.speech_ratio > 0.3
    assert analysis.transcript is not None
    assert word_error_rate([said], [analysis.transcript]) <= 0.35, analysis.transcript
    assert analysis.ocr_text is not None
    assert char_accuracy(SIGNS[0], analysis.ocr_text) >= 0.9, analysis.ocr_text


def test_silent_and_musical_audio_is_not_transcribed(served_bundle: ServedBundle) -> None:
    from streams.sample_media import tone

    doc = {
        "post_id": "tone",
        "platform": "x",
        "author_id": "u",
        "created_at": 1_700_000_000_000,
        "media": [
            {"kind": "audio", "data_b64": base64.b64encode(make_audio("ogg", tone(3.0))).decode()}
        ],
    }
    outcome = PostPipeline(Settings(), served_bundle).process(
        [Envelope(value=json.dumps(doc).encode())]
    )
    (analysed,) = outcome.analysed
    assert analysed.analysis.modalities == ["audio"]
    assert analysed.analysis.transcript is None and analysed.analysis.speech_ratio == pytest.approx(
        0.0, abs=0.1
    )
