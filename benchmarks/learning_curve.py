"""ERS under the published and the strong attacker, and R@1, against training time: one run per method, trained in
stages with `train --resume` and evaluated at each stage from a copy of its checkpoint.

    python benchmarks/learning_curve.py --method "N/A[R]" --method "ACT[R]" --method "HM[S,gLGA]&ICS" \
        --stages 200,400,750,1500 --queries 128

Every stage is the same command a user runs (`robust-retrieval train --preset standard --method M --max-steps S`,
then `--resume` to the next stage), so the curve of one method is one training run; at 1.2 s per iteration on 2 idle
cores (BENCHMARKS.md) stages 200/400/750/1500/3000 are about 4/8/15/30/60 minutes. Each stage's snapshot is
evaluated with `robust-retrieval evaluate --protocols rob28,strong --max-queries Q` (seeded, class-balanced queries).
Writes benchmarks/results/learning_curve.{json,md,png}; a stopped benchmark keeps what it measured, and a rerun
reuses every stage already trained or evaluated.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from retrieval.atomic import atomic_write_json, atomic_write_text
from retrieval.jsonfiles import read_json

RESULTS = Path(__file__).parent / "results"
CLI = str(Path(sys.executable).with_name("robust-retrieval"))
SECONDS_PER_ITERATION = 1.2
"""The quick preset's calibration on the 2-core machine of BENCHMARKS.md (400 iterations in about 8 minutes)."""
SNAPSHOT_FILES = ("config.json", "checkpoint.pt", "metrics.json", "log.jsonl")


def slug(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", method).strip("-").lower()


def train_to(run: Path, method: str, steps: int, seed: int) -> dict[str, Any]:
    """Train (or resume) `run` up to `steps` iterations in total; its metrics.json after that stage."""
    metrics = read_json(run / "metrics.json", "run", missing_ok=True)
    if metrics.get("steps", 0) < steps:
        command = [CLI, "train", "--preset", "standard", "--method", method, "--seed", str(seed),
                   "--max-steps", str(steps), "--out", str(run)]
        if (run / "checkpoint.pt").exists():
            command.append("--resume")
        subprocess.run(command, check=True)
        metrics = read_json(run / "metrics.json", "run")
    return metrics


def snapshot(run: Path, steps: int) -> Path:
    """A copy of the run as it stands after `steps` iterations, for `evaluate` to read while training goes on."""
    target = run / "stages" / f"{steps:05d}"
    if not (target / "checkpoint.pt").exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in SNAPSHOT_FILES:
            shutil.copy2(run / name, target / name)
    return target


def evaluated(stage: Path, queries: int) -> dict[str, Any]:
    summary = stage / "robustness-summary.json"
    if not summary.exists():
        subprocess.run([CLI, "evaluate", str(stage), "--protocols", "rob28,strong", "--max-queries", str(queries)],
                       check=True)
    return read_json(summary, "evaluation")


def measure(method: str, stages: list[int], queries: int, seed: int, root: Path, rows: list[dict], out: Path) -> None:
    run = root / slug(method)
    for steps in stages:
        metrics = train_to(run, method, steps, seed)
        summary = evaluated(snapshot(run, steps), queries)
        rows.append({
            "method": method, "steps": steps, "minutes_at_calibration": steps * SECONDS_PER_ITERATION / 60,
            "train_seconds_measured": metrics["train_seconds"], "R@1_val": metrics["R@1"],
            "robust_proxy": metrics.get("robust_proxy"),
            "R@1": summary["recall_at_1"], "mAP": summary["map"],
            **{f"ERS_{name}": p["ers"] for name, p in summary["protocols"].items()},
            **{f"ERS_{name}_ci95": p["ers_interval"] for name, p in summary["protocols"].items()},
        })
        atomic_write_json(out, {"queries": queries, "seed": seed, "rows": rows})
        print(f"{method:<18} {steps:>5} it  R@1 {rows[-1]['R@1']:.3f}  ERS rob28 {rows[-1]['ERS_rob28']:5.1f}  "
              f"strong {rows[-1]['ERS_strong']:5.1f}", flush=True)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | iterations | minutes (1.2 s/it) | R@1 | mAP | ERS rob28 | ERS strong (95% CI) | proxy |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["ERS_strong_ci95"]
        proxy = "" if r["robust_proxy"] is None else f"{r['robust_proxy']:.1f}"
        lines.append(f"| {r['method']} | {r['steps']} | {r['minutes_at_calibration']:.0f} | {r['R@1']:.3f} | "
                     f"{r['mAP']:.3f} | {r['ERS_rob28']:.1f} | {r['ERS_strong']:.1f} ({low:.1f}-{high:.1f}) | {proxy} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        minutes = [r["minutes_at_calibration"] for r in mine]
        for ax, key in zip(axes, ("ERS_rob28", "ERS_strong", "R@1")):
            ax.plot(minutes, [r[key] for r in mine], marker="o", label=method)
    titles = ("ERS, published attacker (rob28)", "ERS, strong attacker (APGD 100x2)", "R@1 (test split)")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("training minutes on 2 cores (iterations x 1.2 s)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", action="append", required=True, help="paper notation; repeat for several")
    parser.add_argument("--stages", default="200,400,750,1500", help="iteration counts, comma-separated")
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("runs/curve"))
    parser.add_argument("--out", type=Path, default=RESULTS / "learning_curve.json")
    args = parser.parse_args()
    stages = sorted(int(s) for s in args.stages.split(","))
    previous = read_json(args.out, "results", missing_ok=True)
    rows = [r for r in previous.get("rows", []) if r["method"] not in args.method]  # other methods' rows stay
    for method in args.method:
        measure(method, stages, args.queries, args.seed, args.root, rows, args.out)
    atomic_write_text(args.out.with_suffix(".md"), markdown(rows))
    plot(rows, args.out.with_suffix(".png"))
    print(markdown(rows))


if __name__ == "__main__":
    main()
