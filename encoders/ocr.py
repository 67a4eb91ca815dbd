"""Text in images and video frames: PP-OCRv4 (ONNX, from ``rapidocr-onnxruntime``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

OCR_FILES = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
}
MAX_SIDE = 1280


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
    """Reads the text in pictures; lines below ``min_score`` are dropped."""

    def __init__(self, folder: Path, use_cuda: bool = False, min_score: float = 0.6) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.min_score = min_score
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
            det_limit_side_len=960,
        )

    def read(self, image: Image.Image) -> str:
        """The text lines found, top to bottom, joined by spaces ('' when none)."""
        if max(image.size) > MAX_SIDE:
            scale = MAX_SIDE / max(image.size)
            # a 1x4000 strip must not become 0 pixels wide
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size)
        result, _ = self._ocr(np.asarray(image.convert("RGB"))[:, :, ::-1])
        if not result:
            return ""
        lines = [(box, text) for box, text, score in result if float(score) >= self.min_score]
        lines.sort(
            key=lambda item: (round(min(p[1] for p in item[0]) / 20), min(p[0] for p in item[0]))
        )
        return " ".join(text.strip() for _, text in lines if text.strip())
