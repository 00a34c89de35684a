"""The `train` and `report` commands (`evaluate` and `export` live beside the code they run); serve/cli.py registers
them on the root command."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from retrieval.errors import UserError
from retrieval.threads import use_torch_threads
from training.config import PRESETS, TrainConfig, build_config
from training.defenses import DEFENSES
from training.defenses.notation import parse_method
from training.miners import LETTERS

RESUMABLE = ("epochs", "max_steps", "time_budget", "device", "num_workers", "log_every", "val_every", "val_subset",
             "val_batch", "val_attack_queries", "val_attack_steps", "checkpoint_every")
"""Options a resumed run may change; everything else must stay as stored in the run's config.json."""

_FROM_PRESET = "default: from --preset / the model's paper protocol"


def train(
    out: Path = typer.Option(..., "--out", help="Run directory (config.json, log.jsonl, checkpoint.pt, metrics.json)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    preset: Optional[str] = typer.Option(None, help=f"Option bundle: {', '.join(PRESETS)}. Explicit options win."),
    dataset: Optional[str] = typer.Option(None, help="fashion-mnist, mnist, folder, cub, cars or sop."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder (folder, cub, cars, sop)."),
    model: Optional[str] = typer.Option(None, help="c2f2 (28x28) or resnet18 (224x224)."),
    embedding_dim: Optional[int] = typer.Option(None, help="Embedding size (512)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="ImageNet init (resnet18)."),
    epochs: Optional[int] = typer.Option(None, help=f"Passes over all anchors; {_FROM_PRESET}."),
    batch_pairs: Optional[int] = typer.Option(None, help=f"SPC-2 pairs per batch and process; {_FROM_PRESET}."),
    lr: Optional[float] = typer.Option(None, help=f"Adam learning rate; {_FROM_PRESET}."),
    weight_decay: Optional[float] = typer.Option(None, help=f"Adam (coupled) weight decay; {_FROM_PRESET}."),
    seed: Optional[int] = typer.Option(None, help="Seed of every random stream (0)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many iterations in total."),
    time_budget: Optional[float] = typer.Option(
        None, help="Stop after the iteration that crosses this many seconds of training (the --init run's count too)."
    ),
    init: Optional[str] = typer.Option(None, "--init", help="Start from the weights of this run directory or checkpoint."),
    train_subset: Optional[int] = typer.Option(None, help="Train on a seeded class-balanced subset of N anchors."),
    val_subset: Optional[int] = typer.Option(None, help="Validate on a seeded class-balanced subset of N test images."),
    val_every: Optional[int] = typer.Option(None, help="Validate every N epochs (and at the end)."),
    val_batch: Optional[int] = typer.Option(None, help="Validation batch size."),
    val_attack_queries: Optional[int] = typer.Option(
        None, help="Validation images attacked by APGD (QA-, TMA) as a strong-attack proxy (128; 0 = off)."),
    val_attack_steps: Optional[int] = typer.Option(None, help="APGD steps of the validation proxy (32)."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Also checkpoint every N iterations."),
    log_every: Optional[int] = typer.Option(None, help="Iterations per log.jsonl training record (10)."),
    num_workers: Optional[int] = typer.Option(None, help="DataLoader workers for folder datasets (4)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--nondeterministic",
                                                 help="Deterministic torch kernels where available (on)."),
    method: Optional[str] = typer.Option(None, help='Paper notation, e.g. "HM[S,gLGA]&ICS"; options below win.'),
    defense: Optional[str] = typer.Option(None, help=f"{', '.join(DEFENSES)} (minmax = HM[X,2])."),
    source: Optional[str] = typer.Option(None, "--source", "--miner",
                                         help=f"Miner ({'/'.join(LETTERS)} or random, semihard, ...); HM's source miner."),
    destination: Optional[str] = typer.Option(
        None, help="HM destination: miner, constant in [-2,2], lga, boost:<miner>."
    ),
    ics: Optional[float] = typer.Option(None, help="ICS weight lambda (0 = off)."),
    pgd_steps: Optional[int] = typer.Option(None, help="Training PGD steps eta (32)."),
    eps: Optional[float] = typer.Option(None, help="L-inf budget (77/255 at 28x28, 8/255 at 224x224)."),
    alpha: Optional[float] = typer.Option(None, help="PGD step size (3/255 at 28x28, 1/255 at 224x224)."),
    xi: Optional[float] = typer.Option(None, help="g_B boost weight (0.1)."),
    lga_u: Optional[float] = typer.Option(None, help="LGA clip u (0.2)."),
    margin: Optional[float] = typer.Option(None, help="Triplet margin (0.2)."),
    precision: Optional[str] = typer.Option(None, help="PGD precision inside the defense: auto (bf16 where safe and fast), fp32 or bf16."),
    reference_quirks: Optional[bool] = typer.Option(None, "--reference-quirks/--no-reference-quirks",
                                                    help="Reproduce the reference implementation's quirks."),
) -> None:
    """Train an embedding model with SPC-2 triplets and an optional adversarial defense."""
    from training.trainer import train as run_training  # late: keeps `--help` of other commands fast

    options = _given(
        out=str(out), dataset=dataset, data_root=data_root, model=model, embedding_dim=embedding_dim,
        pretrained=pretrained, epochs=epochs, batch_pairs=batch_pairs, lr=lr, weight_decay=weight_decay, seed=seed,
        max_steps=max_steps, train_subset=train_subset, val_subset=val_subset, val_every=val_every,
        val_batch=val_batch, val_attack_queries=val_attack_queries, val_attack_steps=val_attack_steps,
        time_budget=time_budget, init=init, checkpoint_every=checkpoint_every, log_every=log_every,
        num_workers=num_workers, device=device, deterministic=deterministic,
    )
    defense_options = _given(
        defense=defense, source=source, destination=destination, ics=ics, pgd_steps=pgd_steps, eps=eps, alpha=alpha,
        xi=xi, lga_u=lga_u, margin=margin, precision=precision, reference=reference_quirks,
    )
    if resume:
        cfg = _resumed_config(out, {**options, **defense_options}, preset=preset, method=method)
    else:
        parsed = parse_method(method) if method is not None else None
        cfg = build_config(options, defense_options, preset=preset, method=parsed)
    use_torch_threads()  # torch may default to fewer threads than cores; OMP_NUM_THREADS (torchrun's) wins
    console = Console()
    if int(os.environ.get("RANK", "0")) == 0:
        console.print_json(data=cfg.to_dict())
    metrics = run_training(cfg, resume=resume, console=console)
    if int(os.environ.get("RANK", "0")) == 0:
        shown = ("R@1", "R@2", "mAP", "NMI", "steps", "train_seconds")
        console.print("final: " + "  ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics))
        console.print(f"run directory: {cfg.out}")


def _given(**options: Any) -> dict[str, Any]:
    """The options the user gave (None: not given, so the preset, the method or a default decides)."""
    return {name: value for name, value in options.items() if value is not None}


def _resumed_config(out: Path, explicit: dict[str, Any], *, preset: str | None, method: str | None) -> TrainConfig:
    """The stored configuration of the run in `out`, with the RESUMABLE options the user gave applied."""
    path = out / "config.json"
    try:
        stored = TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"nothing to resume: {path} does not exist") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{path} is not a valid run configuration ({exc})") from None
    values = {**stored.to_dict(), "out": str(out)}  # the directory may have moved since
    explicit = {k: v for k, v in explicit.items() if k != "out"}
    changed = [k for k, v in explicit.items() if k not in RESUMABLE and values.get(k, values["defense"].get(k)) != v]
    if preset is not None or method is not None:  # accepted when they resolve to the stored run (same command again)
        options = {k: v for k, v in explicit.items() if k in TrainConfig.__dataclass_fields__}
        defense = {k: v for k, v in explicit.items() if k not in options}
        again = build_config(options, defense, preset=preset, method=parse_method(method) if method else None)
        fresh, kept = again.to_dict(), stored.to_dict()
        changed += [k for k in fresh if k not in (*RESUMABLE, "out", "preset") and fresh[k] != kept[k]]
    if changed:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in dict.fromkeys(changed))
        raise UserError(f"{names} cannot change on --resume; only {', '.join(RESUMABLE)} can")
    values.update({k: v for k, v in explicit.items() if k in RESUMABLE})
    return TrainConfig.from_dict(values).validate()


def report(
    runs: list[Path] = typer.Argument(..., help="Run directories evaluated with `robust-retrieval evaluate`."),
    out: Path = typer.Option(..., "-o", "--out", help="Directory for report.md/.json and the plots."),
) -> None:
    """One table of several runs (the paper's column order) plus ERS-vs-cost, R@1-vs-ERS and per-run attack plots."""
    from training.report import write_report

    for path in write_report(runs, out):
        typer.echo(f"wrote {path}")

