"""The training variants tried against the strong attacker, side by side: what each run trained and what it earned.

    robust-retrieval train --preset quick --method "ACT[R]" --out runs/var-act        # one run per variant
    robust-retrieval evaluate runs/var-act --protocols rob28,strong --max-queries 128  # optional, per run
    python -m benchmarks.training_variants runs/var-*

For every run: its method in paper notation and the options that differ from the method's defaults (step size, eta,
eps, margin, learning rate, init), iterations and training seconds, validation R@1 and the strong-attack proxy
(`robust_QA-`, `robust_TMA`, `robust_proxy`: APGD on 128 seeded validation images), and, where `evaluate` has run,
R@1, mAP and ERS under each protocol with its 95% interval; then, per configuration evaluated under the strong
attacker, the mean and the spread over seeds. Writes benchmarks/results/training_variants.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from retrieval.atomic import atomic_write_json, atomic_write_text
from retrieval.jsonfiles import read_json
from training.config import TrainConfig
from training.defenses.config import DefenseConfig

RESULTS = Path(__file__).parent / "results"
OPTIONS = ("pgd_steps", "alpha", "eps", "margin", "lga_u")
"""Defense options shown when a run set them (the method's notation does not say them)."""
TRAINING_OPTIONS = ("lr", "weight_decay", "batch_pairs")
"""Optimiser and batch options shown when a run changed them from TrainConfig's defaults."""


def changed(values: dict[str, Any], defaults: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """The `keys` of a saved configuration whose values differ from the dataclass `defaults`."""
    return {k: values[k] for k in keys if values.get(k, getattr(defaults, k)) != getattr(defaults, k)}


def row(run: Path) -> dict[str, Any]:
    metrics = read_json(run / "metrics.json", "run")
    config = read_json(run / "config.json", "run")
    options = changed(config["defense"], DefenseConfig(), OPTIONS) | changed(config, TrainConfig(), TRAINING_OPTIONS)
    if config.get("init"):
        options["init"] = Path(config["init"]).name
    result = {
        "run": run.name, "method": metrics["method"], "options": options, "seed": config["seed"], "steps": metrics["steps"],
        "train_seconds": metrics["train_seconds"], "R@1_val": metrics["R@1"],
        **{k: metrics.get(k) for k in ("robust_QA-", "robust_TMA", "robust_proxy")},
    }
    summary = read_json(run / "robustness-summary.json", "evaluation", missing_ok=True)
    if summary:
        result |= {"R@1": summary["recall_at_1"], "mAP": summary["map"], "queries": summary["queries"],
                   "ERS": {name: p["ers"] for name, p in summary["protocols"].items()},
                   "ERS_ci95": {name: p["ers_interval"] for name, p in summary["protocols"].items()}}
    return result


def describe(options: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in options.items())


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | method | options | iterations | val R@1 | proxy (QA-, TMA) | R@1 | ERS rob28 | ERS strong (95% CI) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        options = describe(r["options"])
        proxy = "-" if r["robust_proxy"] is None else \
            f"{r['robust_proxy']:.1f} ({r['robust_QA-']:.1f}, {r['robust_TMA']:.3f})"
        ers = r.get("ERS", {})
        strong = "-"
        if "strong" in ers:
            low, high = r["ERS_ci95"]["strong"]
            strong = f"{ers['strong']:.1f} ({low:.1f}-{high:.1f}), {r['queries']} q"
        rob28 = f"{ers['rob28']:.1f}" if "rob28" in ers else "-"
        test_r1 = f"{r['R@1']:.3f}" if "R@1" in r else "-"
        lines.append(f"| {r['run']} | {r['method']} | {options or '-'} | {r['steps']} | {r['R@1_val']:.3f} | {proxy} | "
                     f"{test_r1} | {rob28} | {strong} |")
    return "\n".join(lines) + "\n"


def by_configuration(rows: list[dict[str, Any]]) -> str:
    """Mean and spread (min-max) over seeds of each method + options + iteration count evaluated under the strong
    attacker, with the training seconds that make "equal wall-clock" checkable."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "strong" in r.get("ERS", {}):
            name = f"{r['method']} {describe(r['options'])}, {r['steps']} it".replace(" ,", ",")
            groups.setdefault(name, []).append(r)

    def stat(values: list[float], digits: int) -> str:
        return f"{statistics.fmean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    lines = ["| configuration | seeds | training s mean | ERS strong mean (min-max) | ERS rob28 mean "
             "| R@1 mean (min-max) | mAP mean |", "|---|---|---|---|---|---|---|"]
    for name, group in groups.items():
        rob28 = [r["ERS"]["rob28"] for r in group if "rob28" in r["ERS"]]
        lines.append(f"| {name} | {len(group)} | {statistics.fmean(r['train_seconds'] for r in group):.0f} | "
                     f"{stat([r['ERS']['strong'] for r in group], 1)} | "
                     f"{f'{statistics.fmean(rob28):.1f} ({len(rob28)} of {len(group)})' if rob28 else '-'} | "
                     f"{stat([r['R@1'] for r in group], 3)} | {statistics.fmean(r['mAP'] for r in group):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "training_variants.json")
    args = parser.parse_args()
    rows = [row(run) for run in args.runs if (run / "metrics.json").exists()]
    atomic_write_json(args.out, {"runs": rows})
    table = markdown(rows) + "\n" + by_configuration(rows)
    atomic_write_text(args.out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
