"""One picture of issue 16's ratios: each lever against its baseline measured in the same
run, read from the results JSON files the benchmarks wrote (a missing file is left out
and named). ``python -m benchmarks.plot`` writes ``benchmarks/results/speed.png``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path("benchmarks/results")


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


Row = tuple[str, str, float]


def _text_path(r: dict[str, Any]) -> list[Row]:
    group = "text-only worker, end to end"
    rows = [(group, step.split("_vs_")[0], ratio) for step, ratio in r["steps"].items()]
    ceiling = r["encoder_ceiling_items_per_s"]
    return [
        *rows,
        (group, "all levers", r["all_vs_before"]),
        *(
            [(group, "int8 vs fp32, median of rounds", r["int8_vs_fp32_end_to_end"])]
            if "int8_vs_fp32_end_to_end_per_round" in r
            else []
        ),
        (
            "text encoder alone",
            "int8 vs fp32",
            ceiling["int8_buckets_on"] / ceiling["fp32_buckets_on"],
        ),
    ]


def _padding(r: dict[str, Any]) -> list[Row]:
    return [
        ("text encoder alone", f"length buckets ({label})", r[key]["32"]["on_vs_off_items_per_s"])
        for key, label in (("tweets_by_take", "tweets"), ("mixed_by_take", "tweets+news"))
    ]


def _precision(r: dict[str, Any]) -> list[Row]:
    return [("text encoder alone", "int8 (precision run)", r["int8_vs_fp32_items_per_s"])]


def _ocr(r: dict[str, Any]) -> list[Row]:
    share = r["share_of_A_without_text"]
    return [
        ("OCR, pictures without text", name, 1 / share[name]["all_without_text"])
        for name in ("B_postpulse_sessions", "C_gated")
    ]


def _decode(r: dict[str, Any]) -> list[Row]:
    return [("media decode, one batch", "decode pool vs serial", r["parallel_vs_serial"])]


def _multimodal(r: dict[str, Any]) -> list[Row]:
    group = "demo multimodal mix, end to end"
    return [(group, name, ratio) for name, ratio in r["vs_A_before"].items() if name != "A_before"]


READERS = {
    "text_path": _text_path,
    "padding": _padding,
    "precision": _precision,
    "ocr": _ocr,
    "decode": _decode,
    "multimodal": _multimodal,
}


def ratios(folder: Path) -> tuple[list[Row], list[str]]:
    """(group, label, ratio) rows, > 1 meaning faster or cheaper than the baseline, and
    the result files that were missing."""
    rows: list[Row] = []
    missing = []
    for name, read in READERS.items():
        result = _load(folder, name)
        if result is None:
            missing.append(f"{name}.json")
        else:
            rows += read(result)
    return rows, missing


def plot(rows: list[Row], out: Path, missing: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{group}: {label}" for group, label, _ in rows]
    values = [ratio for _, _, ratio in rows]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.6))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
    ax.barh(range(len(rows)), values, color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    for k, v in enumerate(values):
        ax.text(v, k, f" ×{v:.2f}", va="center", fontsize=8)
    ax.set_xlabel("speed-up against the baseline measured in the same run (×)")
    title = "postpulse issue 16: each lever against its baseline, same run, 2-core CPU"
    if missing:
        title += f"\n(not run: {', '.join(missing)})"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=RESULTS / "speed.png")
    args = parser.parse_args(argv)
    rows, missing = ratios(args.results)
    if not rows:
        raise SystemExit(f"no results in {args.results}: run `make bench` first")
    plot(rows, args.out, missing)
    print(f"wrote {args.out} ({len(rows)} ratios" + (f"; missing {missing})" if missing else ")"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
