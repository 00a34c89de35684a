"""The `evaluate` command: every ERS attack against a trained run or checkpoint, under one or more protocols.

Each protocol writes its full report (robustness.json for the profile's published attacker, robustness-strong.json
for the strong one) and its headline into robustness-summary.json, which `export` carries into the bundle, so a
served model reports the ERS it was measured at, with the protocol that measured it.

Under torchrun (`torchrun --nproc-per-node K -m serve.cli evaluate ...`, on one machine or several) each process
attacks its part of the query batches and rank 0 writes the same files one process would (retrieval.robustness.evaluation).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Optional

import typer

from retrieval.atomic import atomic_write_json, atomic_write_text
from retrieval.datasets import load_dataset, parse_dataset_spec
from retrieval.distributed import started
from retrieval.jsonfiles import read_json
from retrieval.models.loading import load_trained
from retrieval.protocol import PROFILES, STRONG, parse_protocols, protocol_for
from retrieval.robustness.evaluation import evaluate_robustness
from retrieval.threads import use_torch_threads
from training.report import robustness_markdown


def evaluate(
    run: Path = typer.Argument(..., help="Run directory (with checkpoint.pt) or a checkpoint file."),
    profile: Optional[str] = typer.Option(None, help=f"Attack budget: {', '.join(PROFILES)} "
                                                     "(default: the input-size protocol's)."),
    protocols: Optional[str] = typer.Option(
        None, help=f"Comma-separated protocols to measure in this run: a profile ({', '.join(PROFILES)}: the "
                   f"published 32-step PGD) and/or {STRONG} (APGD, 100 steps x 2 starts, at the profile's budget). "
                   "Default: the profile alone (--strong: strong alone)."),
    max_queries: Optional[int] = typer.Option(
        None, min=1, help="Attack a seeded class-balanced sample of N test images (all by default)."),
    steps: Optional[int] = typer.Option(None, min=0, help="PGD steps (default: the attacker's: 32, strong 100)."),
    restarts: Optional[int] = typer.Option(
        None, min=0, help="Extra random-start runs (default: the attacker's: 0, strong 1); each item keeps its strongest."),
    seed: int = typer.Option(0, help="Seed of target selection (per attack and query) and restart noise."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Queries per batch (128 at 28x28, 112 at 224x224)."),
    reference_quirks: bool = typer.Option(False, "--reference-quirks",
                                          help="Reference GTM target index, LTM self entry, ES:D timing, last iterate."),
    noise_baseline: bool = typer.Option(False, "--noise-baseline",
                                        help="Also measure uniform random noise of the same budget."),
    strong: bool = typer.Option(False, "--strong", help=f"Same as --protocols {STRONG}."),
    dataset: Optional[str] = typer.Option(None, help="Evaluate on NAME:SPLIT instead of the run's test split."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder (default: the run's)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: the run directory)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with ETA."),
) -> None:
    """Attack a trained model with the ten ERS attacks under each protocol; write robustness[-strong].json/.md and
    robustness-summary.json."""
    use_torch_threads()
    trained = load_trained(run)
    model, config, run_dir = trained.model, trained.config, trained.run_dir or trained.weights.parent
    name, split = parse_dataset_spec(dataset) if dataset else (config.get("dataset", "fashion-mnist"), "test")
    data = load_dataset(name, split, root=data_root or config.get("data_root"),
                        image_size=getattr(model, "input_size", None), channels=getattr(model, "channels", None))
    profile = profile or protocol_for(int(model.input_size)).evaluation.name
    chosen = parse_protocols(protocols or (STRONG if strong else profile), profile)
    trained_as = read_json(run_dir / "metrics.json", "run", missing_ok=True).get("method")  # paper notation
    destination = out or run_dir
    with started(device) as processes:
        for protocol_name, budget, attacker in chosen:
            report = evaluate_robustness(
                model.to(processes.device), data,
                profile=budget, max_queries=max_queries, steps=steps, restarts=restarts, seed=seed,
                reference_quirks=reference_quirks, batch_size=batch_size, progress=progress,
                noise_baseline=noise_baseline, strong=attacker == STRONG, processes=processes,
            )
            if report is not None:  # rank 0 writes
                _write(report, trained_as or config.get("method"), run_dir, f"{name}:{split}", protocol_name,
                       attacker, destination)


def _write(report: dict[str, Any], method: str | None, run_dir: Path, dataset: str, protocol_name: str,
           attacker: str, destination: Path) -> None:
    """One protocol's robustness[-strong].json/.md and its line in robustness-summary.json."""
    report = {"method": method, "run": str(run_dir), "dataset": dataset, "protocol_name": protocol_name, **report}
    stem = "robustness-strong" if attacker == STRONG else "robustness"
    atomic_write_json(destination / f"{stem}.json", report)
    atomic_write_text(destination / f"{stem}.md", robustness_markdown(report, run_dir.name))
    record_summary(destination, protocol_name, report)
    typer.echo(robustness_markdown(report, run_dir.name))
    typer.echo(f"wrote {destination / stem}.json and {stem}.md")


SUMMARY_FILE = "robustness-summary.json"


def record_summary(directory: Path, name: str, report: dict[str, Any]) -> dict[str, Any]:
    """Merge one protocol's headline into `directory`/robustness-summary.json (protocols measured earlier stay)."""
    path = directory / SUMMARY_FILE
    summary = read_json(path, "robustness summary", missing_ok=True)
    config = report["config"]
    low, high = report["ERS_ci95"]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = {"ers": round(report["ERS"], 2), "ers_interval": [round(low, 2), round(high, 2)],
             "attacker": report["protocol"], "queries": config["queries"], "seed": config["seed"], "date": date}
    benign = report["benign"]
    summary = {
        "method": report.get("method"),
        "recall_at_1": round(benign["R@1"] / 100, 4), "map": round(benign["mAP"] / 100, 4),
        "queries": config["queries"], "date": date,
        "protocols": {**summary.get("protocols", {}), name: entry},
    }
    atomic_write_json(path, summary)
    return summary
