"""The evaluation report: Markdown with PNG plots, written beside a trained bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plot_confusion(matrix: list[list[int]], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4 + 0.4 * len(labels), 3.5 + 0.4 * len(labels)))
    data = np.asarray(matrix)
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(data):
        ax.text(
            j, i, str(v), ha="center", va="center", color="black" if v < data.max() / 2 else "white"
        )
    ax.set_title("category confusion (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _metric_name(comparison: str) -> str:
    if "recall" in comparison:
        return "recall"
    return "accuracy" if "video" in comparison else "macro-F1"


def _plot_bars(values: dict[str, float], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="#4477aa")
    ax.set_xlim(0, 1)
    ax.set_xlabel(_metric_name(title))
    ax.set_title(title)
    for k, n in enumerate(names):
        ax.text(values[n] + 0.01, k, f"{values[n]:.3f}", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    folder: Path,
    main: dict[str, Any],
    labels: list[str],
    comparisons: dict[str, dict[str, float]],
    data_card: dict[str, Any] | None,
    synthetic: bool,
    title: str = "postpulse fusion model — evaluation",
) -> Path:
    """``report.md`` plus ``confusion.png`` and one bar chart per comparison."""
    folder.mkdir(parents=True, exist_ok=True)
    _plot_confusion(main["confusion"], labels, folder / "confusion.png")
    lines = [f"# {title}", ""]
    if synthetic:
        lines += [
            "> **Synthetic data.** These numbers come from `postpulse dataset synth`: generated posts",
            "> whose label evidence is split across modalities by construction. They show the",
            "> pipeline works, not how it does on real posts.",
            "",
        ]
    lines += [
        "## Headline (test split)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| category macro-F1 | {main['macro_f1']:.3f} |",
        f"| category macro-F1 with {100 * main.get('test_missing_rate', 0.7):.0f}% of modalities dropped | {main['macro_f1_missing']:.3f} |",
        f"| sentiment macro-F1 | {main['sentiment_macro_f1']:.3f} |",
    ]
    if "popularity_spearman" in main:
        lines += [
            f"| popularity Spearman | {main['popularity_spearman']:.3f} |",
            f"| popularity MAE (log engagement) | {main['popularity_mae']:.3f} |",
        ]
    lines += ["", "## Per class", "", "| class | F1 | recall |", "|---|---|---|"]
    lines += [
        f"| {c} | {main['per_class_f1'][c]:.3f} | {main['per_class_recall'][c]:.3f} |"
        for c in labels
    ]
    lines += [
        "",
        "![confusion](confusion.png)",
        "",
        "## Accuracy by modality pattern",
        "",
        "| present | n | accuracy |",
        "|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['n']} | {v['accuracy']:.3f} |" for k, v in main["accuracy_by_pattern"].items()
    ]
    for name, values in comparisons.items():
        png = f"{name}.png"
        _plot_bars(values, name.replace("_", " "), folder / png)
        lines += [
            "",
            f"## {name.replace('_', ' ').capitalize()}",
            "",
            f"| run | {_metric_name(name)} |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.3f} |" for k, v in values.items()]
        lines += ["", f"![{name}]({png})"]
    if data_card:
        lines += ["", "## Data card", "", "```json"]
        import json

        lines += [json.dumps(data_card, indent=2), "```"]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
