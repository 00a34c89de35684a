"""The `evaluate` command: every ERS attack against a trained run or checkpoint, written as robustness.json/.md."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from retrieval.atomic import atomic_write_json, atomic_write_text
from retrieval.attacks import PROFILES
from retrieval.datasets import load_dataset, parse_dataset_spec
from retrieval.jsonfiles import read_json
from retrieval.robustness import evaluate_robustness
from retrieval.threads import use_torch_threads
from training.checkpoint import load_trained
from training.distributed import resolve_device
from training.report import robustness_markdown


def evaluate(
    run: Path = typer.Argument(..., help="Run directory (with checkpoint.pt) or a checkpoint file."),
    profile: Optional[str] = typer.Option(None, help=f"Attack budget: {', '.join(PROFILES)} "
                                                     "(default: the input-size protocol's)."),
    max_queries: Optional[int] = typer.Option(None, min=1, help="Attack only the first N test images (all by default)."),
    steps: Optional[int] = typer.Option(None, min=0, help="PGD steps (default: the profile's 32)."),
    restarts: int = typer.Option(0, min=0, help="Extra random-start PGD runs; each item keeps its strongest."),
    seed: int = typer.Option(0, help="Seed of target selection and restarts (per attack and batch)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Queries per batch (128 at 28x28, 112 at 224x224)."),
    reference_quirks: bool = typer.Option(False, "--reference-quirks",
                                          help="Reference GTM target index, LTM self entry, ES:D timing, last iterate."),
    noise_baseline: bool = typer.Option(False, "--noise-baseline",
                                        help="Also measure uniform random noise of the same budget."),
    strong: bool = typer.Option(False, "--strong",
                                help="A stronger attacker: at least 100 steps and 5 random restarts (slow)."),
    dataset: Optional[str] = typer.Option(None, help="Evaluate on NAME:SPLIT instead of the run's test split."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder (default: the run's)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: the run directory)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with ETA."),
) -> None:
    """Attack a trained model with the ten ERS attacks and write robustness.json and robustness.md."""
    use_torch_threads()
    trained = load_trained(run)
    model, config, run_dir = trained.model, trained.config, trained.run_dir or trained.checkpoint.parent
    name, split = parse_dataset_spec(dataset) if dataset else (config.get("dataset", "fashion-mnist"), "test")
    data = load_dataset(name, split, root=data_root or config.get("data_root"),
                        image_size=getattr(model, "input_size", None), channels=getattr(model, "channels", None))
    target = resolve_device(device)
    report = evaluate_robustness(
        model.to(target), data,
        profile=profile,
        max_queries=max_queries, steps=steps, restarts=restarts, seed=seed, reference_quirks=reference_quirks,
        batch_size=batch_size, progress=progress, noise_baseline=noise_baseline, strong=strong,
    )
    trained_as = read_json(run_dir / "metrics.json", "run", missing_ok=True).get("method")  # paper notation
    report = {"method": trained_as or config.get("method"), "run": str(run_dir), "dataset": f"{name}:{split}",
              **report}
    destination = out or run_dir
    stem = "robustness-strong" if strong else "robustness"
    atomic_write_json(destination / f"{stem}.json", report)
    atomic_write_text(destination / f"{stem}.md", robustness_markdown(report, run_dir.name))
    typer.echo(robustness_markdown(report, run_dir.name))
    typer.echo(f"wrote {destination / stem}.json and {stem}.md")

