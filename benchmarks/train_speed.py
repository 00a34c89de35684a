"""Seconds per training iteration and effective GFLOPS of the PGD loop, per defense, on Fashion-MNIST with C2F2.

    python benchmarks/train_speed.py --iters 5 --etas 8 32 --precisions fp32 bf16

Each row trains a fresh C2F2 (Adam, lr 1e-3) for --warmup + --iters SPC-2 batches of --pairs pairs and times the
last --iters: defense forward (mining, PGD, training forward) + backward + optimizer step. "PGD GFLOPS" counts the
forward and input-gradient FLOPs of the PGD steps actually taken (torch's FlopCounterMode on one image) over the time
spent inside PGD. The reference column holds the reference implementation's s/iter measured on the project's 2-core
machine; speedup = reference / ours.

The precision check trains a regular model for --check-iters batches, then attacks one batch with each adversarial
defense in fp32 and in bf16 (same triplets) and compares the mean adversarial hardness after --check-eta steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from retrieval.atomic import atomic_write_json
from retrieval.datasets import load_dataset
from retrieval.threads import default_threads
from training.data import SPC2Sampler
from training.defenses import build_defense
from training.defenses.notation import parse_method
from retrieval.models import build_model

METHODS = ("N/A[R]", "EST[R]", "ACT[R]", "HM[S,gLGA]", "HM[S,gLGA]&ICS")
REFERENCE_S_PER_ITER = {  # reference code, 128 pairs, 2-core machine
    32: {"N/A[R]": 0.17, "ACT[R]": 5.5, "EST[R]": 5.8, "HM[S,gLGA]&ICS": 8.0},
    8: {"N/A[R]": 0.17, "ACT[R]": 1.76, "HM[S,gLGA]": 2.46, "HM[S,gLGA]&ICS": 2.56},
}
OUT = Path(__file__).parent / "results" / "train_speed.json"


def batches(pairs: int, count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = load_dataset("fashion-mnist", "train")
    images = data.tensors()
    plan = SPC2Sampler(data.labels, pairs, seed).epoch(0)[:count]
    return [(images[idx], data.labels[idx]) for idx in plan]


def pgd_flops_per_image(model: torch.nn.Module) -> int:
    """Forward + input-gradient FLOPs of one PGD step on one image (no parameter gradients)."""
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, model.channels, model.input_size, model.input_size, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()  # parameters are frozen: input gradient only
    for p in model.parameters():
        p.requires_grad_(True)
    return counter.get_total_flops()


class TimedAttack:
    """Wraps a defense's `attack` to accumulate PGD seconds and image-steps."""

    def __init__(self, attack) -> None:
        self.attack, self.seconds, self.image_steps = attack, 0.0, 0

    def __call__(self, model, x, objective, **kwargs):
        start = time.perf_counter()
        result = self.attack(model, x, objective, **kwargs)
        self.seconds += time.perf_counter() - start
        self.image_steps += result.steps * x.shape[0]
        return result


def time_method(method: str, eta: int, precision: str, data, warmup: int, flops: int, init: dict | None) -> dict:
    torch.manual_seed(0)
    model = build_model("c2f2")
    if init is not None:
        model.load_state_dict(init)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-7)
    cfg = dataclasses.replace(parse_method(method), pgd_steps=eta, precision=precision)
    defense = build_defense(cfg, generator=torch.Generator().manual_seed(0))
    timer = TimedAttack(defense.attack)
    defense.attack = timer
    seen: list[dict] = []
    start = 0.0
    for i, (images, labels) in enumerate(data):
        if i == warmup:
            timer.seconds, timer.image_steps, start = 0.0, 0, time.perf_counter()
        loss, stats = defense(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            seen.append(stats)
    iters = len(seen)
    elapsed = time.perf_counter() - start

    def avg(key: str) -> float | None:
        values = [s[key] for s in seen if key in s]
        return sum(values) / len(values) if values else None

    reference = REFERENCE_S_PER_ITER.get(eta, {}).get(method)
    s_per_iter = elapsed / iters
    return {
        "method": method,
        "eta": 0 if method.startswith("N/A") else eta,
        "precision": precision,
        "s_per_iter": s_per_iter,
        "pgd_s_per_iter": timer.seconds / iters,
        "pgd_gflops": flops * timer.image_steps / timer.seconds / 1e9 if timer.seconds else None,
        "pgd_steps": avg("pgd_steps"),
        "perturbed_fraction": avg("perturbed_fraction"),
        "image_passes": avg("image_passes"),
        "reference_s_per_iter": reference,
        "speedup": reference / s_per_iter if reference else None,
    }


def precision_check(methods: list[str], eta: int, data, train_iters: int) -> list[dict]:
    """Mean adversarial hardness after `eta` steps in fp32 and bf16 on the same batch and triplets."""
    torch.manual_seed(0)
    model = build_model("c2f2")
    regular = build_defense(parse_method("N/A[R]"), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for images, labels in data[:train_iters]:
        loss, _ = regular(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    images, labels = data[train_iters]
    rows = []
    for method in methods:
        hardness = {}
        for precision in ("fp32", "bf16"):
            cfg = dataclasses.replace(parse_method(method), pgd_steps=eta, precision=precision)
            defense = build_defense(cfg, generator=torch.Generator().manual_seed(1))
            hardness[precision] = defense(model, images, labels)[1]["hardness_adv"]
        diff = abs(hardness["fp32"] - hardness["bf16"])
        rows.append({"method": method, "eta": eta, "hardness_adv_fp32": hardness["fp32"],
                     "hardness_adv_bf16": hardness["bf16"], "abs_diff": diff, "within_0.01": diff <= 0.01})
    return rows


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per row")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--init", type=Path, default=None,
        help="start every row from this checkpoint.pt's weights (a trained model: HM then moves as many triplets "
        "as it does mid-run, not the few it moves on a fresh model)",
    )
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--etas", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--check-eta", type=int, default=8)
    parser.add_argument("--check-iters", type=int, default=20, help="regular training batches before the check")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(default_threads())

    data = batches(args.pairs, max(args.warmup + args.iters, args.check_iters + 1))
    init = torch.load(args.init, weights_only=True)["model"] if args.init else None
    flops = pgd_flops_per_image(build_model("c2f2"))
    rows = []
    print(f"{'method':<16}{'eta':>4} {'prec':<5}{'s/iter':>8}{'PGD s':>8}{'GFLOPS':>8}{'steps':>7}"
          f"{'moved':>7}{'passes':>8}{'ref s':>7}{'speedup':>8}")
    for eta in args.etas:
        for method in args.methods:
            for precision in (["fp32"] if method.startswith("N/A") else args.precisions):
                if method.startswith("N/A") and eta != args.etas[0]:
                    continue
                r = time_method(method, eta, precision, data[: args.warmup + args.iters], args.warmup, flops, init)
                rows.append(r)
                print(f"{method:<16}{r['eta']:>4} {precision:<5}{r['s_per_iter']:>8.3f}{r['pgd_s_per_iter']:>8.3f}"
                      f"{fmt(r['pgd_gflops'], '.1f'):>8}{fmt(r['pgd_steps'], '.1f'):>7}"
                      f"{fmt(r['perturbed_fraction'], '.2f'):>7}{fmt(r['image_passes'], '.0f'):>8}"
                      f"{fmt(r['reference_s_per_iter'], '.2f'):>7}{fmt(r['speedup'], '.2f'):>8}")
    adversarial = [m for m in args.methods if not m.startswith("N/A")]
    check = precision_check(adversarial, args.check_eta, data, args.check_iters) if "bf16" in args.precisions else []
    for c in check:
        print(f"hardness after {c['eta']} steps, {c['method']}: fp32 {c['hardness_adv_fp32']:.4f} "
              f"bf16 {c['hardness_adv_bf16']:.4f} |diff| {c['abs_diff']:.4f}")
    atomic_write_json(args.out, {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_average_1min": os.getloadavg()[0]},
        "settings": {"pairs": args.pairs, "iters": args.iters, "warmup": args.warmup, "init": str(args.init) if args.init else None, "model": "c2f2",
                     "dataset": "fashion-mnist", "pgd_flops_per_image_step": flops},
        "rows": rows,
        "precision_check": check,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
