"""curves.png: the training statistics a defense reports, grouped so related curves share axes.

Losses on one panel; the source, destination and adversarial hardness (with LGA's destination) on another, so the
adversary's position between source and destination is visible; then fraction perturbed, PGD steps, speed, and
validation R@1 / mAP. Any other statistic gets a panel of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from retrieval.atomic import atomic_path  # noqa: E402

NOT_PLOTTED = {"kind", "step", "epoch"}
GROUPS: dict[str, tuple[str, ...]] = {
    "losses": ("loss", "adv_loss", "ics_loss"),
    "hardness": ("hardness_source", "hardness_destination", "hardness_adv", "lga_destination", "hardness"),
    "fraction of triplets perturbed": ("perturbed_fraction",),
    "PGD steps taken": ("pgd_steps",),
    "images / s": ("images_per_s",),
}
VAL_KEYS = ("R@1", "mAP")


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> None:
    """Draw the log.jsonl records into a PNG at `path` (atomically)."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    present = {k for r in train for k, v in r.items() if k not in NOT_PLOTTED and isinstance(v, (int, float))}
    grouped = {k for keys in GROUPS.values() for k in keys}
    panels = [(title, [k for k in keys if k in present]) for title, keys in GROUPS.items()]
    panels += [(key, [key]) for key in sorted(present - grouped)]
    panels = [(title, keys) for title, keys in panels if keys]
    count = len(panels) + (1 if val else 0)
    cols = min(3, max(count, 1))
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.1 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, (title, keys) in zip(flat, panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in train if key in r]
            ax.plot(*zip(*points), lw=1.2, label=key, ls="--" if key == "lga_destination" else "-")
        _finish(ax, title, legend=len(keys) > 1)
    if val:
        ax = flat[len(panels)]
        for key in VAL_KEYS:
            points = [(r["step"], r[key]) for r in val if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=key)
        ax.set_ylim(0, 1)
        _finish(ax, "validation", legend=True)
    for ax in flat[count:]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _finish(ax, title: str, *, legend: bool) -> None:
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)
