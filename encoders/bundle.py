"""Model bundles: a folder with ``manifest.json``, the ONNX files and their assets.

Training and ``postpulse export`` write one; workers load one by path. Every file is
listed with its SHA-256 and a mismatch on load is an error, never a warning.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

DEFAULT_CATEGORY_PROMPTS: dict[str, str] = {
    "news": "breaking news report about current events, government, politics or elections",
    "sports": "sports match, game score, team, athletes, football, basketball, tennis",
    "entertainment": "movies, television series, celebrities, music concerts and albums",
    "technology": "technology, software, gadgets, smartphones, AI, computers and startups",
    "food": "food, cooking, recipes, restaurants, coffee and dinner",
    "travel": "travel, holidays, beaches, cities, flights, hotels and landscapes",
    "fashion": "fashion, clothes, outfits, style, beauty and makeup",
    "business": "business, markets, stocks, companies, finance, jobs and the economy",
    "health": "health, fitness, workouts, medicine, wellbeing and nutrition",
    "personal": "personal life update, family, friends, feelings, birthdays and pets",
}
SENTIMENT_LABELS = ["negative", "neutral", "positive"]


class BundleError(RuntimeError):
    """A bundle folder is missing, malformed, or unusable."""


class BundleIntegrityError(BundleError):
    """A bundle file's hash does not match its manifest."""


class EncoderEntry(BaseModel):
    """One exported encoder in the bundle."""

    name: str
    modality: str
    version: str
    source: str
    dim: int
    file: str
    inputs: list[str]
    outputs: list[str]
    parity_max_abs_diff: dict[str, float]
    assets: dict[str, Any] = Field(default_factory=dict)
    precision: str = Field(default="fp32", description="fp32, or int8 (encoders/quantize.py)")
    quantization: dict[str, Any] = Field(
        default_factory=dict, description="how an int8 model was made and its gate's figures"
    )


class FusionEntry(BaseModel):
    """How modality embeddings become the post embedding."""

    strategy: str
    modalities: list[str]
    dim: int
    trained: bool
    description: str
    file: str | None = None
    multi_label: bool = False  # category_probs are independent (sigmoid) probabilities


class Manifest(BaseModel):
    """``manifest.json``: what is in a bundle and how to verify it."""

    format_version: int = FORMAT_VERSION
    bundle_version: str
    created_at: str
    postpulse_version: str
    encoders: dict[str, EncoderEntry]
    fusion: FusionEntry
    labels: dict[str, list[str]]
    category_prompts: dict[str, str]
    metrics: dict[str, Any] = Field(default_factory=dict)
    tools: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="non-embedding models: OCR, speech to text"
    )
    files: dict[str, str]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def baseline_fusion_dim(dims: dict[str, int]) -> int:
    """Size of the untrained early-fusion vector: all modality dims plus the mask."""
    return sum(dims.values()) + len(dims)


def write_default_bundle(
    out: Path,
    encoders: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
    include_tools: bool = True,
    precision: str = "fp32",
) -> Manifest:
    """Export the default encoders into a new bundle at ``out`` (replaced atomically).
    ``precision="int8"`` quantizes the encoders that have an int8 recipe (the text
    encoder) and keeps each only if it passes the cosine gate; the others stay fp32."""
    from encoders.export import check_prebuilt, export_encoder
    from encoders.quantize import INT8_MODALITIES, PRECISIONS, quantize_text_encoder
    from encoders.registry import DEFAULT_ENCODERS, get_encoder_spec
    from streams import __version__

    if precision not in PRECISIONS:
        raise BundleError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    chosen = encoders or DEFAULT_ENCODERS
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        entries: dict[str, EncoderEntry] = {}
        for modality, name in chosen.items():
            spec = get_encoder_spec(name)
            if spec.modality != modality:
                raise BundleError(f"encoder {name!r} is a {spec.modality} encoder, not {modality}")
            folder = staging / modality
            folder.mkdir()
            if spec.build_module is None:
                progress(f"copying {modality} encoder {name} (ships as ONNX)")
                assets = spec.write_assets(folder)
                report = check_prebuilt(spec, folder / "model.onnx")
            else:
                progress(f"exporting {modality} encoder {name}")
                report = export_encoder(spec, folder / "model.onnx")
                assets = spec.write_assets(folder)
            quantization: dict[str, Any] = {}
            if precision == "int8" and modality in INT8_MODALITIES:
                progress(f"quantizing {modality} encoder {name} to int8, gated on real posts")
                quantization = quantize_text_encoder(folder, assets, spec).manifest()
            entries[modality] = EncoderEntry(
                name=spec.name,
                modality=modality,
                version=spec.version,
                source=spec.source,
                dim=spec.dim,
                file=f"{modality}/model.onnx",
                inputs=list(spec.export.input_names),
                outputs=list(spec.export.output_names),
                parity_max_abs_diff=report.max_abs_diff,
                assets=assets,
                precision=quantization.get("precision", "fp32"),
                quantization=quantization,
            )
        modalities = list(entries)
        tools: dict[str, dict[str, Any]] = {}
        if include_tools:
            from encoders.audio import write_vad_assets
            from encoders.ocr import write_ocr_assets
            from encoders.speech import write_whisper_assets

            progress(
                "copying OCR (PP-OCRv4), voice activity (silero-vad), speech to text (Whisper)"
            )
            tools["ocr"] = write_ocr_assets(staging / "ocr")
            tools["vad"] = write_vad_assets(staging / "vad")
            tools["stt"] = write_whisper_assets(staging / "stt")
        fusion = FusionEntry(
            strategy="baseline-early-concat",
            modalities=modalities,
            dim=baseline_fusion_dim({m: e.dim for m, e in entries.items()}),
            trained=False,
            description=(
                "Untrained baseline: concatenation of the L2-normalised modality embeddings "
                f"({', '.join(modalities)}) "
                "(zeros for a missing modality) and the modality-presence mask, L2-normalised. "
                "Replaced by the trained fusion model."
            ),
        )
        files = {
            str(p.relative_to(staging)): sha256_file(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        version_key = json.dumps(
            {"files": files, "fusion": fusion.model_dump(), "encoders": chosen, "tools": tools},
            sort_keys=True,
        )
        manifest = Manifest(
            bundle_version=hashlib.sha256(version_key.encode()).hexdigest()[:12],
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            postpulse_version=__version__,
            encoders=entries,
            fusion=fusion,
            labels={"category": list(DEFAULT_CATEGORY_PROMPTS), "sentiment": SENTIMENT_LABELS},
            category_prompts=DEFAULT_CATEGORY_PROMPTS,
            tools=tools,
            files=files,
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.chmod(0o755)
        staging.rename(out)
        return manifest
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def load_manifest(folder: Path, verify: bool = True) -> Manifest:
    """Read and (by default) verify a bundle's manifest and file hashes."""
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"no model bundle at {folder} ({MANIFEST} missing); create one with 'postpulse export'"
        )
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise BundleError(f"{path} is not a valid manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {manifest.format_version} != {FORMAT_VERSION}")
    if verify:
        for rel, expected in manifest.files.items():
            file = folder / rel
            if not file.is_file():
                raise BundleIntegrityError(f"bundle file {rel} listed in the manifest is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise BundleIntegrityError(
                    f"bundle file {rel} has sha256 {actual[:12]}…, manifest says {expected[:12]}…"
                )
    return manifest
