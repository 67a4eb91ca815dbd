"""Encoders register themselves by name with the spec their ONNX export must meet.

This module is torch-free: the worker imports it on the hot path. Builders that need
PyTorch import it inside the function, and only the offline export calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ExportSpec:
    """What an exported ONNX file must look like and how closely it must match."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    atol: float = 1e-4
    opset: int = 18


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: identity, output size, export spec and offline builders.

    ``build_module`` returns the source PyTorch module in eval mode, or is ``None`` for
    an encoder that ships as ONNX in a package (``write_assets`` then copies
    ``model.onnx`` into the bundle and the load is smoke-tested); ``sample_inputs``
    returns named numpy inputs used both to trace the export and to check parity
    (they must exercise the dynamic axes, e.g. padding); ``write_assets`` copies
    what the runtime needs besides the ONNX file (tokenizer, preprocessing config)
    into the bundle folder and returns metadata for the manifest.
    """

    name: str
    modality: str
    dim: int
    version: str
    source: str
    export: ExportSpec
    build_module: Callable[[], torch.nn.Module] | None
    sample_inputs: Callable[[int], dict[str, np.ndarray]]
    write_assets: Callable[[Path], dict[str, Any]] = field(default=lambda _folder: {})


class UnknownEncoderError(KeyError):
    """No encoder is registered under that name."""


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add ``spec`` to the registry; names are unique."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_encoder_spec(name: str) -> EncoderSpec:
    """The spec registered as ``name``."""
    _load_builtin_encoders()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownEncoderError(f"unknown encoder {name!r} (registered: {known})") from None


def registered_encoders() -> dict[str, EncoderSpec]:
    """All registered encoder specs by name."""
    _load_builtin_encoders()
    return dict(_REGISTRY)


DEFAULT_ENCODERS: dict[str, str] = {
    "text": "minilm-l6-v2",
    "image": "efficientnet-lite0",
    "audio": "speech-embedding",
    "video": "attention-pool-1280",
}
"""The encoder each modality uses in the default bundle."""


def _load_builtin_encoders() -> None:
    # Importing the modules runs their register_encoder() calls.
    from encoders import audio, image, text, video, whisper  # noqa: F401
