"""How strong, and how costly, each evaluation attacker is: PGD 32x1 (rob28), PGD 100x6 and the strong attacker
(APGD 100 steps x 2 starts), per attack, on the same seeded queries and targets of each trained run.

    python benchmarks/attack_strength.py runs/na runs/act runs/hm --queries 128

For every run: the ten attack values under each attacker (per-query values from `evaluate_robustness` with the same
seed, so targets are identical), forward+backward passes per query and seconds per attack, and, per attack, a paired
bootstrap interval over queries of (strong - PGD 100x6) in the attacker's favour: "at least as strong" holds when the
interval reaches 0 or above. Writes benchmarks/results/attack_strength.{json,md} and attack_strength.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval.atomic import atomic_write_json, atomic_write_text
from retrieval.attacks import ATTACKS, MEASURES
from retrieval.datasets import load_dataset
from retrieval.jsonfiles import read_json
from retrieval.models.loading import load_trained
from retrieval.robustness.ers import ATTACK_KEYS
from retrieval.robustness.evaluation import evaluate_robustness
from retrieval.threads import use_torch_threads

RESULTS = Path(__file__).parent / "results"
ATTACKERS: dict[str, dict[str, Any]] = {
    "PGD 32x1": {"strong": False},
    "PGD 100x6": {"strong": False, "steps": 100, "restarts": 5},
    "APGD 100x2": {"strong": True},
}
REFERENCE, CANDIDATE = "PGD 100x6", "APGD 100x2"


def paired_interval(candidate: list[float], reference: list[float], goal: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of mean(goal * (candidate - reference)) over queries."""
    diff = goal * (np.asarray(candidate) - np.asarray(reference))
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(2000, len(diff)))
    low, high = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def measure(run: Path, queries: int, seed: int) -> dict[str, Any]:
    trained = load_trained(run)
    model = trained.model
    data = load_dataset(trained.config.get("dataset", "fashion-mnist"), "test",
                        image_size=model.input_size, channels=model.channels)
    method = read_json(run / "metrics.json", "run", missing_ok=True).get("method")  # paper notation, as trained
    row: dict[str, Any] = {"run": run.name, "method": method, "attackers": {}}
    for name, options in ATTACKERS.items():
        report = evaluate_robustness(model, data, max_queries=queries, seed=seed, progress=False, **options)
        row["attackers"][name] = {
            "protocol": report["protocol"], "ERS": report["ERS"], "ERS_ci95": report["ERS_ci95"],
            "attacks": report["attacks"], "per_query": report["per_query"],
            "passes_per_query": report["config"]["passes_per_query"], "attack_s": report["timings"]["attack_s"],
        }
        print(f"{run.name:<14} {name:<11} ERS {report['ERS']:5.1f}  {sum(report['timings']['attack_s'].values()):6.0f} s",
              flush=True)
    verdicts = {}
    for key in ATTACK_KEYS:
        goal = -1 if MEASURES[key].higher_is_more_robust else 1  # the attacker's direction for this value
        low, high = paired_interval(row["attackers"][CANDIDATE]["per_query"][key],
                                    row["attackers"][REFERENCE]["per_query"][key], goal)
        verdicts[key] = {"gain_ci95": [low, high], "at_least_as_strong": high >= 0}
    row["strong_vs_100x6"] = verdicts
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        lines += [f"\n### {row['run']} ({row['method']})\n",
                  "| attacker | " + " | ".join(ATTACK_KEYS) + " | ERS | passes/query | seconds |",
                  "|---|" + "---|" * (len(ATTACK_KEYS) + 3)]
        for name, result in row["attackers"].items():
            passes = sum(result["passes_per_query"].values())
            cells = [f"{result['attacks'][k]:.3f}" if k in ("TMA", "ES:D") else f"{result['attacks'][k]:.1f}"
                     for k in ATTACK_KEYS]
            lines.append(f"| {name} | " + " | ".join(cells) +
                         f" | {result['ERS']:.1f} | {passes:.0f} | {sum(result['attack_s'].values()):.0f} |")
        gains = row["strong_vs_100x6"]
        lines.append(f"| {CANDIDATE} - {REFERENCE} (95% CI, attacker's favour) | " +
                     " | ".join(f"{g['gain_ci95'][0]:+.2f}..{g['gain_ci95'][1]:+.2f}" for g in gains.values()) +
                     " | | | |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(rows))
    for i, name in enumerate(ATTACKERS):
        ers = [r["attackers"][name]["ERS"] for r in rows]
        passes = [sum(r["attackers"][name]["passes_per_query"].values()) for r in rows]
        axes[0].bar(x + (i - 1) * 0.27, ers, 0.27, label=name)
        axes[1].bar(x + (i - 1) * 0.27, passes, 0.27, label=name)
    for ax, title in zip(axes, ("ERS (lower = stronger attacker)", "forward+backward passes per query, 10 attacks")):
        ax.set_xticks(x, [r["run"] for r in rows])
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "attack_strength.json")
    args = parser.parse_args()
    use_torch_threads()
    rows = []
    for run in args.runs:  # written after each run, so a long benchmark that is stopped keeps what it measured
        rows.append(measure(run, args.queries, args.seed))
        atomic_write_json(args.out, {"queries": args.queries, "seed": args.seed, "threads": torch.get_num_threads(),
                                     "attacks": list(ATTACKS), "runs": rows})
    table = markdown(rows)
    atomic_write_text(args.out.with_suffix(".md"), table)
    plot(rows, args.out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
