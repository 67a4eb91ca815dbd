"""Checked ONNX export (offline): trace, save, then prove ONNX Runtime matches PyTorch.

No ONNX file leaves this module unchecked: a shape or tolerance mismatch raises
:class:`OnnxParityError` and the file is deleted.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from encoders.registry import EncoderSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# onnxruntime 1.31 loads IR <= 13; onnx 1.23 would write 14. 10 is what the torch
# exporter emits for opset 18 and every runtime we target reads it.
MAX_IR_VERSION = 10
PARITY_BATCH_SIZES = (1, 4)


class OnnxExportError(RuntimeError):
    """The model could not be exported to a valid ONNX file."""


class OnnxParityError(OnnxExportError):
    """ONNX Runtime's outputs differ from the source model's beyond the spec's tolerance."""


@dataclass(frozen=True)
class ParityReport:
    """Worst absolute difference seen per output over all parity batches."""

    max_abs_diff: dict[str, float]
    batch_sizes: tuple[int, ...]


def export_encoder(spec: EncoderSpec, out_file: Path) -> ParityReport:
    """Export ``spec``'s source model to ``out_file`` and check it; raises on mismatch."""
    if spec.build_module is None:
        raise OnnxExportError(f"{spec.name} ships as ONNX; there is no source model to export")
    module = spec.build_module()
    export_module(module, spec, out_file)
    try:
        return check_parity(module, spec, out_file)
    except OnnxParityError:
        out_file.unlink(missing_ok=True)
        raise


def export_module(
    module: torch.nn.Module,
    spec: EncoderSpec,
    out_file: Path,
    torchscript: bool = False,
    opset: int | None = None,
) -> None:
    """Trace ``module`` with the spec's sample inputs and write a single-file ONNX model.

    ``torchscript`` uses PyTorch's TorchScript exporter instead of the dynamo one: its
    graphs are the ones ONNX Runtime's transformer fusions recognise (the int8 recipe
    in encoders/quantize.py needs them); the bundle's fp32 files use dynamo. ``opset``
    overrides the spec's."""
    import onnx
    import torch

    sample = spec.sample_inputs(3)
    args = tuple(torch.from_numpy(sample[name]) for name in spec.export.input_names)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                str(out_file),
                input_names=list(spec.export.input_names),
                output_names=list(spec.export.output_names),
                dynamic_axes=spec.export.dynamic_axes,
                opset_version=opset or spec.export.opset,
                dynamo=not torchscript,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:
            raise OnnxExportError(f"torch.onnx.export failed for {spec.name}: {exc}") from exc
    model = onnx.load(str(out_file))
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save(model, str(out_file))
    try:
        onnx.checker.check_model(str(out_file))
    except Exception as exc:
        raise OnnxExportError(f"exported {spec.name} is not a valid ONNX model: {exc}") from exc
    names = [o.name for o in model.graph.output]
    if names != list(spec.export.output_names):
        raise OnnxExportError(f"{spec.name}: outputs {names}, spec says {spec.export.output_names}")


def check_prebuilt(spec: EncoderSpec, onnx_file: Path) -> ParityReport:
    """For an encoder shipped as ONNX: a valid model with the spec's names that runs."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(onnx_file))
    except Exception as exc:
        raise OnnxExportError(
            f"{spec.name}: {onnx_file.name} is not a valid ONNX model: {exc}"
        ) from exc
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if names != list(spec.export.input_names):
        raise OnnxExportError(f"{spec.name}: inputs {names}, spec says {spec.export.input_names}")
    out = session.run(None, spec.sample_inputs(2))[0]
    if out.reshape(2, -1).shape[1] != spec.dim:
        raise OnnxExportError(f"{spec.name}: output size {out.shape}, spec says dim {spec.dim}")
    return ParityReport(max_abs_diff={}, batch_sizes=(2,))


def check_parity(
    module: torch.nn.Module,
    spec: EncoderSpec,
    onnx_file: Path,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
) -> ParityReport:
    """Run ONNX Runtime (CPU) and ``module`` on fresh inputs; raise if they disagree."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    worst = dict.fromkeys(spec.export.output_names, 0.0)
    for batch in batch_sizes:
        sample = spec.sample_inputs(batch)
        with torch.no_grad():
            expected = module(*(torch.from_numpy(sample[n]) for n in spec.export.input_names))
        expected_list = list(expected) if isinstance(expected, tuple | list) else [expected]
        got = session.run(list(spec.export.output_names), sample)
        for name, ref, out in zip(spec.export.output_names, expected_list, got, strict=True):
            ref_np = ref.detach().cpu().numpy()
            if ref_np.shape != out.shape:
                raise OnnxParityError(
                    f"{spec.name}/{name}: ONNX shape {out.shape} != PyTorch shape {ref_np.shape}"
                )
            if name.endswith("embedding") and out.shape[-1] != spec.dim:
                raise OnnxParityError(f"{spec.name}/{name}: dim {out.shape[-1]} != {spec.dim}")
            diff = float(np.max(np.abs(ref_np - out))) if out.size else 0.0
            worst[name] = max(worst[name], diff)
            if not diff <= spec.export.atol:
                raise OnnxParityError(
                    f"{spec.name}/{name}: max abs diff {diff:.3g} > tolerance "
                    f"{spec.export.atol:g} at batch size {batch}"
                )
    log.info("%s parity ok: %s", spec.name, worst)
    return ParityReport(max_abs_diff=worst, batch_sizes=batch_sizes)
