"""curves.png: one panel per statistic the defense reported (loss, hardness, LGA destination, fraction perturbed,
...) over iterations, plus validation R@1 and mAP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from retrieval.atomic import atomic_path  # noqa: E402

NOT_PLOTTED = {"kind", "step", "epoch"}
VAL_KEYS = ("R@1", "mAP")


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> None:
    """Draw the log.jsonl records into a PNG at `path` (atomically)."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    keys = sorted({k for r in train for k, v in r.items() if k not in NOT_PLOTTED and isinstance(v, (int, float))})
    panels = len(keys) + (1 if val else 0)
    cols = min(3, max(panels, 1))
    rows = max(1, -(-panels // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, key in zip(flat, keys):
        points = [(r["step"], r[key]) for r in train if key in r]
        ax.plot(*zip(*points), lw=1.2)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if val:
        ax = flat[len(keys)]
        for key in VAL_KEYS:
            points = [(r["step"], r[key]) for r in val if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=key)
        ax.set_title("validation")
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1)
        ax.legend()
        ax.grid(alpha=0.3)
    for ax in flat[panels:]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
