"""ONNX Runtime sessions: CUDA execution provider when it can load, CPU otherwise."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# onnxruntime-gpu 1.31 is built against CUDA 13 and cuDNN 9.
_CUDA_LIBRARIES = ("libcudart.so.13", "libcublas.so.13", "libcudnn.so.9")


class ProviderUnavailableError(RuntimeError):
    """The requested execution provider cannot run on this machine."""


@cache
def cuda_loadable() -> bool:
    """True when the CUDA provider is compiled in and its shared libraries load.

    Asking onnxruntime for CUDA without the libraries logs an error and silently
    falls back, so we probe the libraries ourselves first.
    """
    if CUDA not in ort.get_available_providers():
        return False
    _preload_cuda_libraries()
    for name in _CUDA_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            return False
    return True


def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN the way onnxruntime-gpu's own ``preload_dlls()`` finds them:
    from the ``nvidia-*`` pip packages first, then the default library path, so a CUDA
    installed by pip (not on ``LD_LIBRARY_PATH``) is found. What it prints about
    libraries it cannot find goes to the debug log: a CPU machine has none."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        try:
            preload(directory="")
        except Exception as exc:  # a broken CUDA install must not stop a CPU worker
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if said.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", said.getvalue().strip())


# CUDA provider options. cuDNN's default algorithm search (EXHAUSTIVE) benchmarks every
# convolution again for each new input shape; a worker's batches vary in size (and text
# runs in width), so each new shape would stall its batch: the heuristic choice instead.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


def provider_entries(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """``providers`` as ONNX Runtime takes them, the CUDA one with :data:`CUDA_OPTIONS`."""
    return [(p, dict(CUDA_OPTIONS)) if p == CUDA else p for p in providers]


def select_providers(device: Literal["auto", "cpu", "cuda"]) -> list[str]:
    """Execution providers for ``device``; ``auto`` takes CUDA only when it loads."""
    if device == "cpu":
        return [CPU]
    if cuda_loadable():
        return [CUDA, CPU]
    if device == "cuda":
        raise ProviderUnavailableError(
            "device=cuda requested but the CUDA execution provider cannot load "
            "(needs onnxruntime-gpu with CUDA 13 and cuDNN 9 libraries)"
        )
    return [CPU]


# Whether ONNX Runtime's intra-op threads spin-wait for work between ops (ORT's default)
# instead of sleeping. Process-wide, as the cores they compete for are: off by default,
# because a worker also decodes media, talks gRPC to Milvus and publishes to Kafka while
# an encoder runs, and spinning threads take those cores (benchmarks/text_path.py).
# Sessions created after set_spin_wait() use the new value.
_SPIN_WAIT = False


def set_spin_wait(on: bool) -> None:
    """Let ONNX Runtime sessions created from now on spin-wait (True) or sleep (False)."""
    global _SPIN_WAIT
    _SPIN_WAIT = on


class OnnxModel:
    """One ONNX Runtime session over a model file, with its input and output names."""

    def __init__(
        self,
        path: Path,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        intra_op_threads: int = 0,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if _SPIN_WAIT else "0"
        )
        providers = select_providers(device)
        self.path = path
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=provider_entries(providers)
        )
        self.providers: list[str] = list(self.session.get_providers())
        if device == "cuda" and self.providers[0] != CUDA:
            raise ProviderUnavailableError(
                f"device=cuda requested but ONNX Runtime runs {path.name} on {self.providers[0]}"
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        log.info("loaded %s on %s", path.name, self.providers[0])

    @property
    def provider(self) -> str:
        """The execution provider that runs this session."""
        return self.providers[0]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session; returns the outputs in declaration order."""
        feed = {name: inputs[name] for name in self.input_names}
        return list(self.session.run(self.output_names, feed))


Device = Literal["auto", "cpu", "cuda"]


class BundleEncoder:
    """An encoder whose ONNX file and metadata (``dim``, ``file``, assets) come from a
    model bundle folder; subclasses add their preprocessing."""

    def __init__(
        self, folder: Path, meta: dict[str, Any], device: Device = "auto", intra_op_threads: int = 0
    ) -> None:
        self.folder = folder
        self.dim = int(meta["dim"])
        self.model = OnnxModel(folder / meta["file"], device, intra_op_threads)
