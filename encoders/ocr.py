"""Text in images and video frames: PP-OCRv4 (ONNX, from ``rapidocr-onnxruntime``).

The detector is the cost of a picture without text (the recogniser runs only on the
boxes it finds). Two things make that cost small (``benchmarks/ocr.py``): the three
models run in postpulse's own ONNX Runtime sessions (rapidocr's turn the memory arena
off, so every run of the detector allocates its feature maps afresh, and leave its
threads spin-waiting), and a large picture is first looked at by the same detector at
a lower resolution (the gate): only when that finds something is it read in full.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from encoders.runtime import OnnxModel

OCR_FILES = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
}
MAX_SIDE = 1280
DET_SIDE = 960  # the detector reads a picture with its longer side capped here
# The gate reads a picture at this longer side (about half the detector's pixels, about
# a quarter of a full read's time on 2 cores) and lets it through when at least GATE_MIN_PIXELS of
# its probability map exceed GATE_THRESHOLD (a picture without text scores ~0
# everywhere). Text smaller than about 2% of the picture's longer side can be missed
# (recall by text size in benchmarks/results/ocr.json); pictures whose detector input
# is not much larger than the gate's skip it.
GATE_SIDE = 672
GATE_MIN_PIXELS = 3
GATE_THRESHOLD = 0.05
GATE_WORTH_IT = 1.25  # gate only pictures whose detector side is this much larger


def write_ocr_assets(folder: Path) -> dict[str, Any]:
    """Copy the PP-OCRv4 detection, orientation and recognition models into a bundle."""
    import rapidocr_onnxruntime

    source = Path(rapidocr_onnxruntime.__file__).parent / "models"
    folder.mkdir(parents=True, exist_ok=True)
    for name in OCR_FILES.values():
        shutil.copyfile(source / name, folder / name)
    return {
        "name": "pp-ocrv4",
        "version": "PP-OCRv4@rapidocr-onnxruntime==1.4.4",
        "source": "PaddleOCR PP-OCRv4 det/rec + mobile v2 cls, ONNX (PyPI rapidocr-onnxruntime)",
        "files": {k: f"{folder.name}/{v}" for k, v in OCR_FILES.items()},
    }


class ImageTextReader:
    """Reads the text in pictures; lines below ``min_score`` are dropped. ``gate_side``
    (0: no gate) is the resolution a large picture is first looked at; ``sessions``
    "postpulse" runs the models in postpulse's sessions (``library``: rapidocr's own,
    the way before issue 16, kept as the benchmark's baseline)."""

    def __init__(
        self,
        folder: Path,
        use_cuda: bool = False,
        min_score: float = 0.6,
        gate_side: int = GATE_SIDE,
        intra_op_threads: int = 0,
        sessions: Literal["postpulse", "library"] = "postpulse",
    ) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.min_score = min_score
        self.gate_side = gate_side
        self.pictures = 0  # pictures read, and of those the ones the gate turned away
        self.gated_out = 0
        self._ocr = RapidOCR(
            det_model_path=str(folder / OCR_FILES["det"]),
            cls_model_path=str(folder / OCR_FILES["cls"]),
            rec_model_path=str(folder / OCR_FILES["rec"]),
            det_use_cuda=use_cuda,
            cls_use_cuda=use_cuda,
            rec_use_cuda=use_cuda,
            print_verbose=False,
            # the default scales the *shorter* side up to 736 px: slow and pointless for
            # small social images; cap the longer side instead
            det_limit_type="max",
            det_limit_side_len=DET_SIDE,
        )
        device: Literal["cpu", "cuda"] = "cuda" if use_cuda else "cpu"
        self._det = OnnxModel(folder / OCR_FILES["det"], device, intra_op_threads)
        if sessions == "postpulse":
            # rapidocr 1.4.4 keeps each model's session in these attributes
            self._ocr.text_det.infer.session = self._det.session
            self._ocr.text_cls.infer.session = OnnxModel(
                folder / OCR_FILES["cls"], device, intra_op_threads
            ).session
            self._ocr.text_rec.session.session = OnnxModel(
                folder / OCR_FILES["rec"], device, intra_op_threads
            ).session

    def may_hold_text(self, image: Image.Image) -> bool:
        """Whether the gate lets ``image`` through to a full read (True for pictures
        too small to gate)."""
        long_side = max(image.size)
        if not self.gate_side or min(long_side, DET_SIDE) < self.gate_side * GATE_WORTH_IT:
            return True
        scale = self.gate_side / long_side
        # the detector wants sides in multiples of 32
        width = max(32, round(image.width * scale / 32) * 32)
        height = max(32, round(image.height * scale / 32) * 32)
        small = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        # rapidocr's detector input: BGR, scaled to [-1, 1], NCHW
        pixels = np.asarray(small, dtype=np.float32)[:, :, ::-1] / 127.5 - 1.0
        feed = {self._det.input_names[0]: np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])}
        probability = self._det.run(feed)[0]
        return int((probability > GATE_THRESHOLD).sum()) >= GATE_MIN_PIXELS

    def read(self, image: Image.Image) -> str:
        """The text lines found, top to bottom, joined by spaces ('' when none)."""
        if max(image.size) > MAX_SIDE:
            scale = MAX_SIDE / max(image.size)
            # a 1x4000 strip must not become 0 pixels wide
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size)
        self.pictures += 1
        if not self.may_hold_text(image):
            self.gated_out += 1
            return ""
        result, _ = self._ocr(np.asarray(image.convert("RGB"))[:, :, ::-1])
        if not result:
            return ""
        lines = [(box, text) for box, text, score in result if float(score) >= self.min_score]
        lines.sort(
            key=lambda item: (round(min(p[1] for p in item[0]) / 20), min(p[0] for p in item[0]))
        )
        return " ".join(text.strip() for _, text in lines if text.strip())
