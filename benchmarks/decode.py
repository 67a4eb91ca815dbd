"""A batch's media decoded in parallel (issue 16), against one post after another, on
the same batch in the same run (``POSTPULSE_CPU_THREADS``: 1 decodes serially).

The batch: 32 posts, 24 with a JPEG picture (the real packaged photographs at 1080 px
and generated 1080x720 pictures) and 8 with a 10 s 640x360 H.264+AAC video (generated),
validated as the worker validates them, then decoded by ``PostPipeline``'s decode step
(``_decode_all``) with a thread budget of 1 and of the machine's CPUs, in alternating
rounds. ``python -m benchmarks.decode`` prints the result and writes
``benchmarks/results/decode.json`` (about a minute).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from pathlib import Path
from typing import Any

from encoders.serving import ServedBundle
from streams.pipeline import PostPipeline
from streams.records import Envelope
from streams.sample_media import make_video, packaged_photos
from streams.samples import source_image_jpeg
from streams.settings import Settings, compute_threads
from streams.stages.decode import DecodedPost
from streams.stages.validate import ValidatedPost


def _jpeg(picture: Any) -> bytes:
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=88)
    return out.getvalue()


def media_batch(pictures: int = 24, videos: int = 8) -> list[bytes]:
    photos = list(packaged_photos().values())
    jpegs = []
    for i in range(pictures):
        if i % 2 == 0:
            photo = photos[(i // 2) % len(photos)]
            scale = 1080 / max(photo.size)
            jpegs.append(
                _jpeg(photo.resize((round(photo.width * scale), round(photo.height * scale))))
            )
        else:
            jpegs.append(source_image_jpeg(i, (1080, 720)))
    clips = [
        make_video("mp4", seconds=10.0, fps=25, size=(640, 360), seed=i) for i in range(videos)
    ]
    docs = []
    for i, (kind, data) in enumerate([("image", j) for j in jpegs] + [("video", c) for c in clips]):
        docs.append(
            {
                "post_id": f"decode-{i}",
                "platform": "x",
                "author_id": "bench",
                "created_at": 1_700_000_000_000 + i,
                "text": "",
                "media": [{"kind": kind, "data_b64": base64.b64encode(data).decode()}],
            }
        )
    return [json.dumps(d).encode() for d in docs]


def bench_decode(bundle: Path, rounds: int = 3) -> dict[str, Any]:
    base = Settings(bundle_path=bundle)
    served = ServedBundle(bundle, device="cpu", ocr=False, stt=False)
    cores = compute_threads(base)
    pipelines = {
        "serial": PostPipeline(base.model_copy(update={"cpu_threads": 1}), served),
        "parallel": PostPipeline(base.model_copy(update={"cpu_threads": cores}), served),
    }
    values = media_batch()
    valid = [pipelines["serial"].validator(Envelope(value=v)) for v in values]
    assert all(isinstance(v, ValidatedPost) for v in valid), "the benchmark's posts must be valid"
    seconds = {name: 0.0 for name in pipelines}
    outputs: dict[str, list[Any]] = {}
    for _ in range(rounds):
        for name, pipeline in pipelines.items():
            start = time.perf_counter()
            outputs[name] = pipeline._decode_all(valid, {})  # type: ignore[arg-type]
            seconds[name] += time.perf_counter() - start
    same = all(
        isinstance(a, DecodedPost)
        and isinstance(b, DecodedPost)
        and [i.size for i in a.images] == [i.size for i in b.images]
        and [len(v.frames) for v in a.videos] == [len(v.frames) for v in b.videos]
        for a, b in zip(outputs["serial"], outputs["parallel"], strict=True)
    )
    per_s = {name: len(values) * rounds / s for name, s in seconds.items()}
    return {
        "posts": len(values),
        "rounds": rounds,
        "threads": {"serial": 1, "parallel": cores},
        "posts_per_s": per_s,
        "parallel_vs_serial": per_s["parallel"] / per_s["serial"],
        "same_decoded_media": same,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode.json"))
    args = parser.parse_args(argv)
    result = bench_decode(args.bundle, args.rounds)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
