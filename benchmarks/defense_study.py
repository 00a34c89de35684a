"""Defense study: the paper's method comparison on Fashion-MNIST with C2F2, under one budget for every method.

    python benchmarks/defense_study.py                   # profile cpu: about 65 minutes on 2 idle cores
    python benchmarks/defense_study.py --profile smoke   # a couple of minutes; results stay in the runs directory
    python benchmarks/defense_study.py --profile paper   # the paper's protocol, for a machine with a GPU
    python benchmarks/defense_study.py --plan            # print the runs and what is left to do, then exit

Trains N/A[R], EST[R], ACT[R], HM[R,M], HM[S,M], HM[S,gLGA], HM[S,gLGA]&ICS and the min-max HM[R,2] at the
profile's eta, plus ACT[R] and HM[S,gLGA]&ICS at eta 2, 4 and 8, into runs/defense_study/<profile>/<slug>/. Each run
is attacked with `rob28` (eps 77/255, alpha 3/255, 32 steps) on one fixed query sample (a seeded permutation of the
test split; the gallery is the whole test split) and written as robustness.json beside its metrics.json. The results
are one record per run in <stem>.json, the paper-style table in <stem>.md and the plots ERS vs training cost and R@1 vs
ERS (training/report.py). The stem is `defense_study` for the cpu profile, `defense_study_<profile>` otherwise.

The study resumes: a run with metrics.json and robustness.json is skipped, one with only metrics.json is evaluated,
an interrupted one continues from its checkpoint (the trainer's resume gives the same weights as an uninterrupted
run). A run directory written with another configuration is an error, never silently mixed in.

Budget of the cpu profile: the setting where the reference code was measured on this 2-core
machine, so the two can be compared at equal budget: every method gets 300 iterations of 128 SPC-2 pairs (one epoch
over a class-balanced 38,400-anchor subset) at eta 8, and is attacked on 256 queries. Per-iteration cost measured with
benchmarks/train_speed.py (eta 8, trained c2f2, PGD precision `auto`: bf16 for HM/ACT/min-max, fp32 for EST):

    N/A[R] 0.17 s; EST[R] 1.47 s; ACT[R] 0.91 s; HM[., .] 0.8-1.0 s; HM[S,gLGA]&ICS 0.93 s; HM[R,2] ~1.2 s
                                                                                  -> eight main runs ~7.4 s
    sweep: ACT[R] and HM[S,gLGA]&ICS at eta 2 and 4                               -> four more ~2.0 s
    training: ~9.4 s x 300 iterations                                             = ~47 min
    evaluation: all ten attacks at 32 steps run ~3.7 queries/s on the 10k gallery = ~70 s + 10 s loading, x 12 = ~16 min
    validation on 2,000 test images and checkpoints                                = ~2 min

About 65 minutes on 2 idle cores. 256 queries give per-attack values within
roughly +-3 points (one binomial standard error at 50 %).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from retrieval.atomic import atomic_write_json, atomic_write_text
from retrieval.datasets import load_dataset
from retrieval.errors import UserError
from retrieval.threads import default_threads
from retrieval.robustness.evaluation import evaluate_robustness
from training.config import TrainConfig, build_config
from retrieval.models.loading import load_trained
from training.defenses.notation import format_method, parse_method
from training.report import load_run, markdown_table, plot_tradeoffs, protocols_note, robustness_markdown

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("N/A[R]", "EST[R]", "ACT[R]", "HM[R,M]", "HM[S,M]", "HM[S,gLGA]", "HM[S,gLGA]&ICS", "HM[R,2]")
SWEPT = ("ACT[R]", "HM[S,gLGA]&ICS")
SWEEP_ETAS = (2, 4, 8)
DATASET = "fashion-mnist"
SEED = 0
"""Seed of training (every run), of the query sample and of the attacks' target choices."""
ATTACK_PROFILE = "rob28"


@dataclass(frozen=True)
class Profile:
    """One budget, the same for every method: only the eta sweep changes eta."""

    eta: int
    """Training PGD steps of the main comparison."""
    epochs: int
    batch_pairs: int
    train_subset: int | None
    """Class-balanced training anchors (None: all 60,000)."""
    val_subset: int | None
    """Test images validated on during training (the table's benign metrics use the whole gallery)."""
    checkpoint_every: int | None
    queries: int | None
    """Size of the seeded query sample (None: every test image)."""
    gallery: int | None
    """Gallery size: the first images of the seeded permutation, queries included (None: the whole test split)."""
    attack_steps: int | None
    """PGD steps of the evaluation attacks (None: rob28's 32)."""
    device: str
    time_budget: float | None = None
    """Equal wall-clock profiles: training seconds per method (a fine-tuned run's init counts against it)."""
    warmup_fraction: float = 0.5
    """Share of the budget the undefended warm-up run (the --init of fine-tuned runs) may spend."""
    val_every: int | None = None


PROFILES: dict[str, Profile] = {
    "cpu": Profile(eta=8, epochs=1, batch_pairs=128, train_subset=38_400, val_subset=2_000, checkpoint_every=50,
                   queries=256, gallery=None, attack_steps=None, device="cpu"),
    "paper": Profile(eta=32, epochs=8, batch_pairs=128, train_subset=None, val_subset=None, checkpoint_every=None,
                     queries=None, gallery=None, attack_steps=None, device="auto"),
    "smoke": Profile(eta=2, epochs=1, batch_pairs=16, train_subset=32, val_subset=200, checkpoint_every=1,
                     queries=16, gallery=500, attack_steps=2, device="cpu"),
    "budget": Profile(eta=8, epochs=1000, batch_pairs=128, train_subset=None, val_subset=2_000, checkpoint_every=100,
                      queries=256, gallery=None, attack_steps=None, device="cpu", time_budget=1200.0, val_every=1000),
    "budget-smoke": Profile(eta=2, epochs=1000, batch_pairs=16, train_subset=64, val_subset=200, checkpoint_every=None,
                            queries=16, gallery=500, attack_steps=2, device="cpu", time_budget=3.0, val_every=1000),
}
"""cpu: the budget above (about 65 minutes). paper: the paper's protocol (8 epochs of all anchors, eta 32, every test image
attacked). smoke: 2 iterations of 16 pairs per run and a 2-step attack on 16 queries, to prove the pipeline."""


BUDGET_RUNS: tuple[tuple[str, int, bool], ...] = (
    ("N/A[R]", 0, False),
    ("ACT[R]", 8, False),
    ("HM[S,gLGA]&ICS", 8, True),
    ("HM[R,M]&ICS", 8, True),
    ("ACT[R]", 8, True),
    ("HM[S,gLGA]&ICS", 8, False),
    ("ACT[R]", 32, False),
    ("HM[S,gLGA]&ICS", 32, False),
)
"""Equal wall-clock profiles: (method, eta, fine-tuned from the undefended warm-up run)."""
WARMUP = "N/A[R]"


@dataclass
class Run:
    method: str
    """Paper notation, canonical (format_method)."""
    eta: int
    """Training PGD steps; 0 for N/A, so that the paper's training cost is eta + 1."""
    config: TrainConfig
    fine_tuned: bool = False
    """Started from the undefended warm-up run (whose seconds count against the budget)."""

    @property
    def directory(self) -> Path:
        return Path(self.config.out)


def slug(method: str, eta: int) -> str:
    """A directory name: "HM[S,gLGA]&ICS" at eta 8 -> "hm_s_glga_ics-eta8", "N/A[R]" -> "na_r"."""
    name = re.sub(r"[^a-z0-9]+", "_", method.lower().replace("/", "")).strip("_")
    return f"{name}-eta{eta}" if eta else name


def plan(profile: str, runs_dir: Path, *, seed: int = SEED, budget: float | None = None,
         only: tuple[str, ...] = (), dataset: str = DATASET, data_root: str | None = None) -> list[Run]:
    """Every run of the study under `profile`, in training order, with its resolved configuration.

    Equal wall-clock profiles start with the undefended warm-up run that fine-tuned runs start from (`--init`).
    `only` keeps the runs whose slug is listed (and the warm-up, when one of them needs it).
    """
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    p = PROFILES[profile]
    budget = budget if budget is not None else p.time_budget
    options = {"dataset": dataset, "data_root": data_root, "model": "c2f2", "epochs": p.epochs,
               "batch_pairs": p.batch_pairs, "seed": seed,
               "train_subset": p.train_subset, "val_subset": p.val_subset, "checkpoint_every": p.checkpoint_every,
               "device": p.device, "val_every": p.val_every, "time_budget": budget}
    if dataset != DATASET:
        options["num_workers"] = 0  # a small folder dataset: decoding in-process beats starting workers every epoch
    options = {k: v for k, v in options.items() if v is not None}
    where = profile if dataset == DATASET else f"{profile}-{dataset}"
    base = runs_dir / where / (f"seed{seed}" if seed != SEED else "")
    if budget is None:
        wanted = [(m, p.eta, False) for m in METHODS]
        wanted += [(m, eta, False) for m in SWEPT for eta in SWEEP_ETAS if eta != p.eta]
    else:
        wanted = [(m, eta if eta else 0, init) for m, eta, init in BUDGET_RUNS]
    runs = []
    warmup = base / "na_r-warmup"
    for text, eta, init in wanted:
        defense = parse_method(text)
        eta = 0 if defense.defense == "none" else eta
        method = format_method(defense)
        name = slug(method, eta) + ("-init" if init else "")
        extra = {"init": str(warmup)} if init else {}
        cfg = build_config({**options, **extra, "out": str(base / name)}, {"pgd_steps": eta} if eta else {},
                           method=defense)
        runs.append(Run(method, eta, cfg, fine_tuned=init))
    if only:
        runs = [r for r in runs if r.directory.name in only]
    if any(r.fine_tuned for r in runs):
        cfg = build_config({**options, "time_budget": p.warmup_fraction * budget, "out": str(warmup)}, {},
                           method=parse_method(WARMUP))
        runs.insert(0, Run(format_method(cfg.defense), 0, cfg))
    return runs


def next_action(run_dir: Path) -> str:
    """What is left to do in a run directory: skip, evaluate, resume or train."""
    if (run_dir / "metrics.json").is_file():
        return "skip" if (run_dir / "robustness.json").is_file() else "evaluate"
    return "resume" if (run_dir / "checkpoint.pt").is_file() else "train"


def check_config(run: Run) -> None:
    """Refuse to resume or report a run directory written with another configuration."""
    path = run.directory / "config.json"
    if not path.is_file():
        return
    stored = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k != "out"}
    if stored != {k: v for k, v in run.config.to_dict().items() if k != "out"}:
        raise UserError(f"{run.directory} was trained with another configuration; delete it or use another --runs-dir")


@dataclass
class QuerySample:
    """The test split in a seeded order: the first `queries` images are attacked, the first `gallery` searched."""

    images: torch.Tensor
    labels: torch.Tensor
    queries: int

    @classmethod
    def load(cls, p: Profile, dataset: str = DATASET, data_root: str | None = None) -> "QuerySample":
        test = load_dataset(dataset, "test", root=data_root, image_size=28, channels=1)
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(SEED))[: p.gallery]
        queries = min(p.queries or len(order), len(order))
        held = test.tensors()
        images = held[order] if held is not None else torch.stack([test[int(i)][0] for i in order])
        return cls(images, test.labels[order], queries)

    def describe(self) -> dict[str, Any]:
        return {"order": f"torch.randperm(test split, seed {SEED})", "queries": self.queries,
                "gallery": len(self.labels)}


def evaluate_run(run: Run, sample: QuerySample, p: Profile) -> dict[str, Any]:
    """Attack the run's final weights and write robustness.json / robustness.md into its directory."""
    trained = load_trained(run.directory)
    model, run_dir = trained.model, trained.run_dir
    device = torch.device("cuda" if p.device != "cpu" and torch.cuda.is_available() else "cpu")
    report = evaluate_robustness(model.to(device), sample.images, sample.labels, profile=ATTACK_PROFILE,
                                 max_queries=sample.queries, steps=p.attack_steps, seed=SEED)
    report = {"method": run.method, "run": str(run_dir), "dataset": f"{run.config.dataset}:test",
              "sample": sample.describe(),
              **report}
    atomic_write_json(run_dir / "robustness.json", report)
    atomic_write_text(run_dir / "robustness.md", robustness_markdown(report, run_dir.name))
    return report


def strong_check(run: Run, sample: QuerySample, queries: int) -> dict[str, Any]:
    """ERS under rob28 and under `--strong` on the same first `queries` of the sample (same targets): a model whose
    ERS falls far under the stronger attacker was masking gradients. Writes robustness-strong-check.json."""
    model = load_trained(run.directory).model
    reports = {
        name: evaluate_robustness(model, sample.images, sample.labels, profile=ATTACK_PROFILE, max_queries=queries,
                                  seed=SEED, strong=strong, progress=False)
        for name, strong in (("rob28", False), ("strong", True))
    }
    check = {"method": run.method, "run": str(run.directory), "queries": queries,
             **{name: {"protocol": r["protocol"], "ERS": r["ERS"], "ERS_ci95": r["ERS_ci95"], "attacks": r["attacks"],
                       "seconds": r["timings"]["total_s"]} for name, r in reports.items()}}
    check["ERS_drop"] = check["rob28"]["ERS"] - check["strong"]["ERS"]
    atomic_write_json(run.directory / "robustness-strong-check.json", check)
    return check


def record(run: Run, profile: str) -> dict[str, Any]:
    """One result record: the report row plus eta, training and evaluation seconds."""
    row = load_run(run.directory)
    metrics = json.loads((run.directory / "metrics.json").read_text(encoding="utf-8"))
    robustness = json.loads((run.directory / "robustness.json").read_text(encoding="utf-8"))
    label = " from warm-up" if run.fine_tuned else " (the warm-up)" if run.directory.name.endswith("-warmup") else ""
    out = {**row, "method": run.method + label, "eta": run.eta,
           "profile": profile, "steps": metrics["steps"],
           "image_passes": metrics.get("image_passes"), "budget_spent_s": metrics.get("budget_spent_s"),
           "train_seconds": metrics["train_seconds"], "eval_seconds": robustness["timings"]["total_s"],
           "ERS_ci95": robustness.get("ERS_ci95"), "fine_tuned": run.fine_tuned, "seed": run.config.seed}
    check = run.directory / "robustness-strong-check.json"
    if check.is_file():
        strong = json.loads(check.read_text(encoding="utf-8"))
        out["strong_check"] = {k: strong[k]["ERS"] for k in ("rob28", "strong")} | {"queries": strong["queries"]}
    return out


BUDGET_COLUMNS = ("method", "eta", "R@1", "mAP", "ERS", "ERS 95% CI", "ERS rob28 / strong (64 q)", "iterations",
                  "image passes", "budget s", "TMA", "ES:D")


def budget_table(records: list[dict[str, Any]]) -> str:
    """The equal wall-clock table: benign quality, ERS with its interval, the strong check, and what was spent."""
    lines = ["| " + " | ".join(BUDGET_COLUMNS) + " |", "|" + "---|" * len(BUDGET_COLUMNS)]
    for r in records:
        ci = r.get("ERS_ci95") or (float("nan"), float("nan"))
        strong = r.get("strong_check")
        cells = [r["method"], str(r["eta"]), f"{r['R@1']:.1f}", f"{r['mAP']:.1f}", f"{r['ERS']:.1f}",
                 f"{ci[0]:.1f}-{ci[1]:.1f}", f"{strong['rob28']:.1f} / {strong['strong']:.1f}" if strong else "-",
                 str(r["steps"]), f"{r['image_passes'] / 1e6:.2f} M", f"{r['budget_spent_s']:.0f}",
                 f"{r['TMA']:.3f}", f"{r['ES:D']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_paths(profile: str, results_dir: Path, dataset: str = DATASET) -> dict[str, Path]:
    stem = "defense_study" if profile == "cpu" else f"defense_study_{profile}"
    stem += "" if dataset == DATASET else f"_{dataset}"
    return {
        "json": results_dir / f"{stem}.json",
        "md": results_dir / f"{stem}.md",
        "ers_vs_cost": results_dir / f"{stem}_ers_vs_cost.png",
        "r1_vs_ers": results_dir / f"{stem}_r1_vs_ers.png",
    }


def describe(profile: str) -> str:
    p = PROFILES[profile]
    return (f"Fashion-MNIST, c2f2, profile `{profile}`: {p.epochs} epoch(s) of "
            f"{p.train_subset or 'all'} anchors in batches of {p.batch_pairs} SPC-2 pairs, eta {p.eta} "
            f"(sweep {', '.join(map(str, SWEEP_ETAS))} for {' and '.join(SWEPT)}), seed {SEED}; "
            f"{ATTACK_PROFILE} with {p.attack_steps or 32} steps on {p.queries or 'all'} seeded test queries against "
            f"{p.gallery or 'all 10,000'} test images. cost = eta + 1; wall_s = training seconds.")


def write_results(records: list[dict[str, Any]], profile: str, results_dir: Path, *,
                  dataset: str = DATASET, budget: float | None = None) -> list[Path]:
    paths = results_paths(profile, results_dir, dataset)
    atomic_write_json(paths["json"], records)
    budget = budget if budget is not None else PROFILES[profile].time_budget
    if budget is None:
        text, cost = f"{describe(profile)}\n\n{markdown_table(records)}", ("cost", "")
    else:
        text = f"{describe_budget(profile, budget, dataset)}\n\n{budget_table(records)}\n{markdown_table(records)}"
        cost = ("budget_spent_s", "training seconds (warm-up included)")
    atomic_write_text(paths["md"], f"# Defense study\n\n{text}{protocols_note(records)}")
    plot_tradeoffs(records, paths["ers_vs_cost"], paths["r1_vs_ers"], cost=cost)
    return list(paths.values())


def describe_budget(profile: str, budget: float, dataset: str) -> str:
    p = PROFILES[profile]
    return (f"{dataset}, c2f2, profile `{profile}`: every method gets {budget:.0f} s of training (threads: "
            f"{torch.get_num_threads()}; a run fine-tuned from the undefended warm-up, {p.warmup_fraction:.0%} of the "
            f"budget, counts the warm-up's seconds), batches of {p.batch_pairs} SPC-2 pairs, seed of the first run "
            f"{SEED}; rob28 ({p.attack_steps or 32} steps) on {p.queries} seeded test queries against the whole test "
            f"split. Benign metrics on the whole test split.")


def run_study(profile: str, runs_dir: Path, results_dir: Path, *, console: Console, train_only: bool = False,
              strong_queries: int = 0, **selection: Any) -> list[dict[str, Any]]:
    """Train and evaluate what is not done yet, then write the results; returns the records."""
    from training.trainer import train

    runs = plan(profile, runs_dir, **selection)
    for run in runs:
        check_config(run)
    sample: QuerySample | None = None
    for i, run in enumerate(runs, 1):
        action = next_action(run.directory)
        console.rule(f"{i}/{len(runs)} {run.method} eta {run.eta}: {action}")
        if action in ("train", "resume"):
            train(run.config, resume=action == "resume", console=console)
        if train_only:
            continue
        if action != "skip":
            if sample is None:
                sample = QuerySample.load(PROFILES[profile], selection.get("dataset", DATASET),
                                          selection.get("data_root"))
            report = evaluate_run(run, sample, PROFILES[profile])
            console.print(f"ERS {report['ERS']:.1f}  R@1 {report['benign']['R@1']:.1f}  "
                          f"evaluation {report['timings']['total_s']:.0f} s")
    if train_only:
        return []
    if strong_queries:
        sample = sample or QuerySample.load(PROFILES[profile], selection.get("dataset", DATASET),
                                            selection.get("data_root"))
        for run in runs:
            if run.directory.name in selection.get("only", ()):
                check = strong_check(run, sample, strong_queries)
                console.print(f"{run.method}: ERS rob28 {check['rob28']['ERS']:.1f}, strong {check['strong']['ERS']:.1f}")
        return []
    records = [record(run, profile) for run in runs]
    for path in write_results(records, profile, results_dir, dataset=selection.get("dataset", DATASET),
                              budget=selection.get("budget")):
        console.print(f"wrote {path}")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", choices=list(PROFILES))
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "defense_study",
                        help="Run directories go to RUNS_DIR/<profile>/<slug>/.")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="Default: benchmarks/results (smoke: RUNS_DIR/smoke, so committed results stay).")
    parser.add_argument("--plan", action="store_true", help="Print the runs and what is left to do, then exit.")
    parser.add_argument("--seed", type=int, default=SEED, help="Training seed (runs of seed N go to .../seedN/).")
    parser.add_argument("--budget", type=float, default=None,
                        help="Seconds of training per method for the equal wall-clock profiles (default 1200).")
    parser.add_argument("--only", nargs="+", default=(), help="Run directory names to keep, e.g. act_r-eta8.")
    parser.add_argument("--train-only", action="store_true", help="Train what is missing; evaluate nothing.")
    parser.add_argument("--strong-check", type=int, default=0, metavar="QUERIES",
                        help="Only compare rob28 with --strong on this many queries for the --only runs.")
    parser.add_argument("--dataset", default=DATASET, help="Another 28x28 dataset, e.g. folder with --data-root.")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    selection = {"seed": args.seed, "budget": args.budget, "only": tuple(args.only), "dataset": args.dataset,
                 "data_root": args.data_root}
    torch.set_num_threads(default_threads())
    console = Console()
    try:
        if args.plan:
            for run in plan(args.profile, args.runs_dir, **selection):
                print(f"{next_action(run.directory):<9} {run.method:<16} eta {run.eta:<3} {run.directory}")
            return
        smoke = args.profile.endswith("smoke")
        default = args.runs_dir / args.profile if smoke else ROOT / "benchmarks" / "results"
        started = time.perf_counter()
        run_study(args.profile, args.runs_dir, args.results_dir or default, console=console,
                  train_only=args.train_only, strong_queries=args.strong_check, **selection)
        console.print(f"study wall time {time.perf_counter() - started:.0f} s")
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
