"""ERS under the published and the strong attacker, and R@1, against training time: one run per method, trained in
stages with `train --resume` and evaluated at each stage from a copy of its checkpoint.

    python -m benchmarks.learning_curve --method "HM[B,gLGA]&ICS+APGD" --stages 350,700,1300,2600 --queries 128
    python -m benchmarks.learning_curve --method "ACT[R]" --pace "ACT[R]=2.0" --stages 120,240,450,900 --queries 128

Every stage is the same command a user runs (`robust-retrieval train --preset standard --method M --max-steps S`,
then `--resume` to the next stage), so the curve of one method is one training run. The x axis is minutes on 2 idle
cores: iterations times the method's pace (`--pace "ACT[R]=2.0"`, seconds per iteration; the product's method trains
at 0.70 s per iteration, so stages 350/700/1300/2600 are about 4/8/15/30 minutes). Each stage's snapshot is
evaluated with `robust-retrieval evaluate --protocols rob28,strong --max-queries Q` (seeded, class-balanced queries);
the plot adds each run's own per-epoch validation proxy (QA- and TMA under APGD on 128 validation images). Writes
benchmarks/results/learning_curve.{json,md,png}; a stopped benchmark keeps what it measured, and a rerun reuses every
stage already trained or evaluated.
"""

from __future__ import annotations

import argparse
import json
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
PRODUCT_PACE = 0.70
"""Seconds per iteration of the product's method on 2 idle cores (training/config.py, the quick preset)."""
SNAPSHOT_FILES = ("config.json", "checkpoint.pt", "metrics.json", "log.jsonl")


def slug(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", method).strip("-").lower()


def train_to(run: Path, method: str, steps: int, seed: int) -> None:
    """Train (or resume) `run` up to `steps` iterations in total."""
    if read_json(run / "metrics.json", "run", missing_ok=True).get("steps", 0) < steps:
        command = [CLI, "train", "--preset", "standard", "--method", method, "--seed", str(seed),
                   "--max-steps", str(steps), "--out", str(run)]
        if (run / "checkpoint.pt").exists():
            command.append("--resume")
        subprocess.run(command, check=True)


def validations(run: Path, method: str, pace: float) -> list[dict[str, Any]]:
    """The run's own validations (every epoch): R@1 and the strong-attack proxy on the validation subset."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [{"method": method, "steps": r["step"], "minutes": r["step"] * pace / 60, "R@1_val": r["R@1"],
             "robust_proxy": r.get("robust_proxy")} for r in records if r.get("kind") == "val"]


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


def measure(method: str, pace: float, stages: list[int], queries: int, seed: int, root: Path, rows: list[dict],
            curves: list[dict], out: Path) -> None:
    run = root / slug(method)

    def save() -> None:  # after every stage, so a stopped benchmark keeps what it measured
        atomic_write_json(out, {"queries": queries, "seed": seed, "rows": rows, "validations": curves})

    for steps in stages:
        train_to(run, method, steps, seed)
        summary = evaluated(snapshot(run, steps), queries)
        rows.append({
            "method": method, "steps": steps, "minutes": steps * pace / 60,
            "R@1": summary["recall_at_1"], "mAP": summary["map"], "queries": summary["queries"],
            **{f"ERS_{name}": p["ers"] for name, p in summary["protocols"].items()},
            **{f"ERS_{name}_ci95": p["ers_interval"] for name, p in summary["protocols"].items()},
        })
        save()
        print(f"{method:<18} {steps:>5} it  R@1 {rows[-1]['R@1']:.3f}  ERS rob28 {rows[-1]['ERS_rob28']:5.1f}  "
              f"strong {rows[-1]['ERS_strong']:5.1f}", flush=True)
    curves.extend(validations(run, method, pace))
    save()


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | iterations | minutes (2 idle cores) | queries | R@1 | mAP | ERS rob28 | ERS strong (95% CI) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["ERS_strong_ci95"]
        lines.append(f"| {r['method']} | {r['steps']} | {r['minutes']:.1f} | {r['queries']} | {r['R@1']:.3f} | "
                     f"{r['mAP']:.3f} | {r['ERS_rob28']:.1f} | {r['ERS_strong']:.1f} ({low:.1f}-{high:.1f}) |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], curves: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for method in dict.fromkeys(r["method"] for r in rows + curves):
        mine = [r for r in rows if r["method"] == method]
        for ax, key in zip(axes, ("ERS_rob28", "ERS_strong", "R@1")):
            ax.plot([r["minutes"] for r in mine], [r[key] for r in mine], marker="o", label=method)
        seen = [r for r in curves if r["method"] == method and r["robust_proxy"] is not None]
        axes[3].plot([r["minutes"] for r in seen], [r["robust_proxy"] for r in seen], marker=".", label=method)
    titles = ("ERS, published attacker (rob28)", "ERS, strong attacker (APGD 100x2)", "R@1 (test split)",
              "validation proxy (QA-, TMA; every epoch)")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("training minutes on 2 idle cores (iterations x pace)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", action="append", required=True, help="paper notation; repeat for several")
    parser.add_argument("--stages", default="350,700,1300,2600", help="iteration counts, comma-separated")
    parser.add_argument("--pace", action="append", default=[], metavar="METHOD=SECONDS",
                        help="seconds per iteration on 2 idle cores; the product's method's pace when not given")
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("runs/curve"))
    parser.add_argument("--out", type=Path, default=RESULTS / "learning_curve.json")
    args = parser.parse_args()
    stages = sorted(int(s) for s in args.stages.split(","))
    previous = read_json(args.out, "results", missing_ok=True)
    rows = [r for r in previous.get("rows", []) if r["method"] not in args.method]  # other methods' rows stay
    curves = [r for r in previous.get("validations", []) if r["method"] not in args.method]
    pace = {m: float(s) for m, s in (p.rsplit("=", 1) for p in args.pace)}
    for method in args.method:
        measure(method, pace.get(method, PRODUCT_PACE), stages, args.queries, args.seed, args.root, rows,
                curves, args.out)
    atomic_write_text(args.out.with_suffix(".md"), markdown(rows))
    plot(rows, curves, args.out.with_suffix(".png"))
    print(markdown(rows))


if __name__ == "__main__":
    main()
