"""OCR where there is text (issue 16): what a picture without text costs, and what the
gate misses. One variable at a time, on the same pictures, in one run:

  A  rapidocr's own ONNX Runtime sessions, every picture read in full (before issue 16)
  B  A with the models in postpulse's sessions (memory arena on, threads that sleep)
  C  B + the gate (POSTPULSE_OCR_GATE_SIDE; 0 turns it off)

Pictures without text: the real photographs that ship in scikit-learn (china, flower)
at their own 640 px, scaled to 1080 px and two crops scaled to 1080/1280 px, and six
generated pictures at 1080x720 (``source_image_jpeg``, no lettering: synthetic, said so).
Pictures with text: captions drawn on the three packaged photographs (the two above and
matplotlib's Grace Hopper) at 1080 px, letters 1.1% to 4% of the longer side, boxed or
straight on the photo, three places each (synthetic captions on real photos). A caption counts as read
when one of its words is found that the photo alone does not give; recall of B and C
is the share of the captions A reads that they read too.

``python -m benchmarks.ocr`` prints the table and writes ``benchmarks/results/ocr.json``
(about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

from PIL import Image

from encoders.ocr import GATE_SIDE, ImageTextReader
from streams.sample_media import captioned, packaged_photos
from streams.samples import source_image_jpeg

CAPTIONS = (
    "Sale ends Friday",
    "Vote early, vote often",
    "BREAKING: rates cut",
    "Tickets on sale now",
    "Free shipping today",
    "Join us at noon",
)
PLACES = 3  # captions per photo, text size and style, each at its own place
TEXT_SHARES = (0.011, 0.013, 0.015, 0.017, 0.02, 0.025, 0.03, 0.04)
CONFIGS = {
    "A_library_sessions": {"sessions": "library", "gate_side": 0},
    "B_postpulse_sessions": {"sessions": "postpulse", "gate_side": 0},
    "C_gated": {"sessions": "postpulse", "gate_side": GATE_SIDE},
}


def _scaled(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)))


def pictures_without_text() -> dict[str, list[Image.Image]]:
    photos = packaged_photos()
    real_native, real_large = [], []
    for name in ("china", "flower"):
        photo = photos[name]
        w, h = photo.size
        real_native.append(photo)
        real_large += [
            _scaled(photo, 1080),
            _scaled(photo.crop((w // 4, h // 3, w, h)), 1080),
            _scaled(photo.crop((0, 0, w * 2 // 3, h * 2 // 3)), 1280),
        ]
    generated = [
        Image.open(io.BytesIO(source_image_jpeg(i, (1080, 720)))).convert("RGB") for i in range(6)
    ]
    return {"real_640px": real_native, "real_1080px": real_large, "generated_1080px": generated}


def pictures_with_text(seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for name, photo in packaged_photos().items():
        base = _scaled(photo, 1080)
        for share in TEXT_SHARES:
            for boxed, _place in itertools.product((True, False), range(PLACES)):
                text = rng.choice(CAPTIONS)
                at = (rng.uniform(0.03, 0.3), rng.uniform(0.05, 0.85))
                out.append(
                    {
                        "photo": name,
                        "share": share,
                        "boxed": boxed,
                        "text": text,
                        "base": base,
                        "picture": captioned(base, text, share, boxed, at),
                    }
                )
    return out


def _ms_per_picture(reader: ImageTextReader, pictures: list[Image.Image], repeat: int) -> float:
    reader.read(pictures[0])  # warm
    start = time.perf_counter()
    for _ in range(repeat):
        for picture in pictures:
            reader.read(picture)
    return (time.perf_counter() - start) / (repeat * len(pictures)) * 1000


def _captions_read(reader: ImageTextReader, cases: list[dict[str, Any]]) -> list[bool]:
    alone: dict[str, set[str]] = {}
    out = []
    for case in cases:
        if case["photo"] not in alone:
            alone[case["photo"]] = set(reader.read(case["base"]).lower().split())
        found = set(reader.read(case["picture"]).lower().split()) - alone[case["photo"]]
        out.append(bool(found & set(case["text"].lower().split())))
    return out


def bench_ocr_gate(bundle: Path, repeat: int = 3) -> dict[str, Any]:
    folder = bundle / "ocr"
    empty = pictures_without_text()
    texted = pictures_with_text()
    readers = {name: ImageTextReader(folder, **kw) for name, kw in CONFIGS.items()}  # type: ignore[arg-type]
    cost: dict[str, dict[str, float]] = {name: {} for name in CONFIGS}
    for _ in range(repeat):  # interleaved, so drift on a noisy machine hits all three
        for kind, pictures in empty.items():
            for name, reader in readers.items():
                cost[name][kind] = cost[name].get(kind, 0.0) + _ms_per_picture(reader, pictures, 1)
    cost = {n: {k: v / repeat for k, v in by.items()} for n, by in cost.items()}
    for name in CONFIGS:
        pictures = [p for ps in empty.values() for p in ps]
        cost[name]["all_without_text"] = sum(
            cost[name][kind] * len(ps) for kind, ps in empty.items()
        ) / len(pictures)
    gated_out = {name: r.gated_out for name, r in readers.items()}
    read = {name: _captions_read(reader, texted) for name, reader in readers.items()}
    base_read = read["A_library_sessions"]
    recall: dict[str, dict[str, float]] = {}
    for name in ("B_postpulse_sessions", "C_gated"):
        recall[name] = {}
        for share in TEXT_SHARES:
            idx = [i for i, c in enumerate(texted) if c["share"] == share and base_read[i]]
            recall[name][f"{share:.3f}"] = sum(read[name][i] for i in idx) / max(1, len(idx))
    texted_ms = {
        name: _ms_per_picture(reader, [c["picture"] for c in texted[::4]], 1)
        for name, reader in readers.items()
    }
    a = cost["A_library_sessions"]
    return {
        "pictures_without_text": {k: len(v) for k, v in empty.items()},
        "pictures_with_text": len(texted),
        "gate_side": GATE_SIDE,
        "ms_per_picture_without_text": cost,
        "share_of_A_without_text": {
            name: {k: v / a[k] for k, v in by.items()} for name, by in cost.items()
        },
        "ms_per_picture_with_text": texted_ms,
        "captions_read_by_A": {
            f"{s:.3f}": sum(base_read[i] for i, c in enumerate(texted) if c["share"] == s)
            for s in TEXT_SHARES
        },
        "captions_per_share": sum(1 for c in texted if c["share"] == TEXT_SHARES[0]),
        "recall_vs_A_by_text_share": recall,
        "pictures_without_text_gated_out": {
            name: n / (repeat * sum(len(v) + 1 for v in empty.values()))
            for name, n in gated_out.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ocr.json"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    result = bench_ocr_gate(args.bundle, args.repeat)
    print(
        f"{'config':22} "
        + " ".join(f"{k:>17}" for k in result["ms_per_picture_without_text"]["A_library_sessions"])
    )
    for name, by in result["ms_per_picture_without_text"].items():
        share = result["share_of_A_without_text"][name]
        print(f"{name:22} " + " ".join(f"{v:7.1f}ms ({share[k]:4.2f})" for k, v in by.items()))
    print(
        "with text, ms/picture:",
        {k: round(v, 1) for k, v in result["ms_per_picture_with_text"].items()},
    )
    print(
        "captions A reads, of",
        result["captions_per_share"],
        "per share:",
        result["captions_read_by_A"],
    )
    for name, by in result["recall_vs_A_by_text_share"].items():
        print(f"recall {name}:", {k: round(v, 2) for k, v in by.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
