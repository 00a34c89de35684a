"""The one PGD engine: L-inf projected sign-gradient descent on input images.

Every attack (evaluation, `/probe`) and every adversarial defense (HM, ACT, EST, min-max) runs through `pgd`.
An objective maps the model's embeddings of the current images to a per-item loss vector; the engine minimises
its mean. The model runs in eval mode with parameter gradients switched off, so the inner loop only ever
computes input gradients.

Two step-size schedules share the projection, the restarts and the per-item bookkeeping: `fixed` (the published
protocol: `steps` sign steps of `alpha`) and `apgd` (Croce & Hein, ICML 2020: momentum, and a step size that starts
at 2 eps and halves, back at the item's best point, whenever progress stalls; docs/method.md#apgd).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from retrieval.errors import UserError

Objective = Callable[[torch.Tensor], torch.Tensor]
"""embeddings of the perturbed images -> per-item losses (shape [k]); PGD minimises their mean."""


@dataclass(frozen=True)
class PGDConfig:
    eps: float
    alpha: float
    steps: int
    random_start: bool = False
    restarts: int = 0
    """Extra runs from a random start after the first; each item keeps its best run (by its objective)."""
    early_stop_tol: float | None = None
    """Stop when the mean objective changes by less than this between two steps (HM's rule; None = never)."""
    keep_best: bool = False
    """Return each item's best iterate seen (by its objective) instead of the last one."""
    precision: str = "fp32"
    """'fp32' or 'bf16' (autocast on the model's forward; the objective stays fp32)."""
    schedule: str = "fixed"
    """'fixed': `steps` sign steps of `alpha`; 'apgd': APGD's adaptive step size and momentum (`alpha` unused; each
    item always gets its best point, as with keep_best)."""

    def __post_init__(self) -> None:
        if self.eps < 0 or self.alpha < 0 or self.steps < 0 or self.restarts < 0:
            raise ValueError("eps, alpha, steps and restarts must be >= 0")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.schedule == "apgd" and self.early_stop_tol is not None:
            raise ValueError("APGD has its own stall rule; early_stop_tol is for the fixed schedule")

    @property
    def passes(self) -> int:
        """Forward+backward passes per item this configuration may spend (fewer when the fixed schedule stops early)."""
        return self.steps * (1 + self.restarts)


SCHEDULES = ("fixed", "apgd")

APGD_MOMENTUM = 0.75
APGD_RHO = 0.75
"""Halve the step size at a checkpoint when fewer than this fraction of the steps since the last one improved J."""


@dataclass
class PGDResult:
    x: torch.Tensor
    """Adversarial images, detached, within eps of the input (L-inf) and in [0, 1]."""
    steps: int
    """Gradient steps actually taken in the first run (fewer than configured when early stop fired)."""
    objective: torch.Tensor
    """Per-item objective of the returned images (detached)."""
    passes: int = 0
    """Forward+backward passes spent over all runs (each a pass over every item)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper: attacks must not trigger gradient all-reduce."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration; the previous state is restored afterwards."""
    model = unwrap(model)
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


AUTO_PRECISION_VARIABLE = "RR_AUTO_PRECISION"
"""Set to fp32 or bf16 to decide precision `auto` regardless of the hardware, so any machine can run (and test) what
`auto` does on either kind of CPU; unset, `auto` asks `bf16_is_fast`."""


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here (CPU: oneDNN bf16 instructions; CUDA: bf16-capable GPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def auto_precision(device: torch.device) -> str:
    """What precision `auto` means on `device`: the RR_AUTO_PRECISION override, else bf16 where it runs natively."""
    forced = os.environ.get(AUTO_PRECISION_VARIABLE, "")
    if forced:
        if forced not in ("fp32", "bf16"):
            raise UserError(f"{AUTO_PRECISION_VARIABLE} must be fp32 or bf16, not {forced[:20]!r}")
        return forced
    return "bf16" if bf16_is_fast(device) else "fp32"


def _forward(model: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    if precision == "bf16":
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return model(x).float()
    return model(x)


def _per_item(losses: torch.Tensor) -> torch.Tensor:
    return losses.reshape(-1) if losses.dim() else losses.reshape(1)


def ball(x0: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel (lower, upper) bounds: the L-inf ball of radius eps around x0, inside [0, 1]."""
    return (x0 - eps).clamp_min(0), (x0 + eps).clamp_max(1)


def project(x: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x clipped into per-pixel `bounds` (see `ball`)."""
    lower, upper = bounds
    return torch.minimum(torch.maximum(x, lower), upper)


def descend(x: torch.Tensor, grad: torch.Tensor, step_size, bounds: tuple[torch.Tensor, torch.Tensor]):
    """One projected sign-gradient step downhill: x - step * sign(grad), clipped into `bounds`."""
    return project(x - step_size * grad.sign(), bounds)


def uniform_noise(images: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform random point of the L-inf ball of radius eps around each image, clipped to [0, 1]: PGD's random
    start and the random-noise baseline of evaluation. Drawn on the CPU, so a seed gives the same noise on any device."""
    noise = torch.rand(images.shape, generator=generator, device="cpu").to(images.device, images.dtype)
    return (images + (noise * 2 - 1) * eps).clamp(0, 1)


def _start(x0: torch.Tensor, cfg: PGDConfig, random_start: bool, generator) -> torch.Tensor:
    return uniform_noise(x0, cfg.eps, generator) if random_start and cfg.eps > 0 else x0.clone()


def _losses_and_grad(model, x: torch.Tensor, objective: Objective, precision: str):
    """(per-item losses, gradient of their mean w.r.t. x): one forward+backward pass."""
    x = x.detach().requires_grad_(True)
    losses = _per_item(objective(_forward(model, x, precision)))
    (grad,) = torch.autograd.grad(losses.mean(), x)
    return losses.detach(), grad


def _run_fixed(model, x0, objective, cfg: PGDConfig, random_start: bool, generator) -> PGDResult:
    x = _start(x0, cfg, random_start, generator)
    step_size = cfg.eps if cfg.steps == 1 else cfg.alpha  # one step = FGSM with the full budget
    bounds = ball(x0, cfg.eps)
    best_x, best_j = x.clone(), None
    previous, taken = None, 0
    for _ in range(cfg.steps):
        losses, grad = _losses_and_grad(model, x, objective, cfg.precision)
        with torch.no_grad():
            if cfg.keep_best:
                best_x, best_j = _keep_best(best_x, best_j, x, losses)
            x = descend(x, grad, step_size, bounds)
        taken += 1
        value = float(losses.mean())
        if cfg.early_stop_tol is not None and previous is not None and abs(value - previous) < cfg.early_stop_tol:
            break
        previous = value
    with torch.no_grad():
        final = _per_item(objective(_forward(model, x, cfg.precision))).detach()
        if cfg.keep_best:
            x, final = _keep_best(best_x, best_j, x, final)
    return PGDResult(x=x.detach(), steps=taken, objective=final, passes=taken)


def apgd_checkpoints(steps: int) -> list[int]:
    """The steps after which APGD may halve its step size: ceil(p_j * steps), p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    return sorted({math.ceil(p * steps) for p in fractions[1:] if 0 < math.ceil(p * steps) < steps})


def _run_apgd(model, x0, objective, cfg: PGDConfig, random_start: bool, generator) -> PGDResult:
    """APGD for L-inf (docs/method.md#apgd): `steps` gradient evaluations, each item's best point returned.

    Items are rows when the objective gives one loss per image; otherwise (e.g. one loss per triplet of stacked image
    copies) all rows share one schedule, judged by the mean loss."""
    bounds = ball(x0, cfg.eps)
    x = _start(x0, cfg, random_start, generator)
    losses, grad = _losses_and_grad(model, x, objective, cfg.precision)
    per_row = losses.numel() == x.shape[0]

    def tracked(values: torch.Tensor) -> torch.Tensor:
        return values if per_row else values.mean().reshape(1)

    def rows(flags: torch.Tensor) -> torch.Tensor:
        return flags.view(-1, *([1] * (x.dim() - 1)))

    value = tracked(losses)
    step_size = torch.full(value.shape, 2 * cfg.eps, dtype=x.dtype, device=x.device)
    best_x, best_value, best_grad, best_losses = x.clone(), value.clone(), grad.clone(), losses.clone()
    previous_x = x.clone()
    checkpoints, since = set(apgd_checkpoints(cfg.steps)), 0
    improving = torch.zeros_like(value)
    best_at_checkpoint, halved = best_value.clone(), torch.zeros_like(value, dtype=torch.bool)
    for step in range(1, cfg.steps):
        with torch.no_grad():
            z = descend(x, grad, rows(step_size), bounds)
            if step > 1:  # momentum from the second step on
                z = project(x + APGD_MOMENTUM * (z - x) + (1 - APGD_MOMENTUM) * (x - previous_x), bounds)
            previous_x, x = x, z
        losses, grad = _losses_and_grad(model, x, objective, cfg.precision)
        with torch.no_grad():
            new = tracked(losses)
            improving += (new < value).to(improving.dtype)
            value = new
            better = new < best_value
            best_value = torch.where(better, new, best_value)
            best_x = torch.where(rows(better), x, best_x)
            best_grad = torch.where(rows(better), grad, best_grad)
            best_losses = torch.where(better, losses, best_losses) if per_row else (losses if better else best_losses)
            if step in checkpoints:
                stalled = improving < APGD_RHO * (step - since)
                no_gain = ~halved & (best_value >= best_at_checkpoint)
                halved = stalled | no_gain
                step_size = torch.where(halved, step_size / 2, step_size)
                x = torch.where(rows(halved), best_x, x)
                grad = torch.where(rows(halved), best_grad, grad)
                previous_x = torch.where(rows(halved), best_x, previous_x)
                value = torch.where(halved, best_value, value)
                improving.zero_()
                best_at_checkpoint, since = best_value.clone(), step
    return PGDResult(x=best_x.detach(), steps=cfg.steps, objective=best_losses, passes=cfg.steps)


_RUNS = {"fixed": _run_fixed, "apgd": _run_apgd}


def _keep_best(best_x, best_j, x, j):
    """Per item, keep whichever of (best, candidate) has the lower objective; items are rows when sizes match."""
    if best_j is None:
        return x.clone(), j.clone()
    if j.numel() == x.shape[0]:
        better = j < best_j
        best_x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x, best_x)
        return best_x, torch.where(better, j, best_j)
    return (x.clone(), j.clone()) if j.mean() < best_j.mean() else (best_x, best_j)


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    objective: Objective,
    cfg: PGDConfig,
    *,
    generator: torch.Generator | None = None,
) -> PGDResult:
    """Minimise `objective(model(x))` over the L-inf ball of radius cfg.eps around `images`, clipped to [0, 1]."""
    x0 = images.detach()
    run = _RUNS[cfg.schedule] if cfg.steps > 0 else _run_fixed  # no step: nothing to schedule
    with frozen(model) as net:
        result = run(net, x0, objective, cfg, cfg.random_start, generator)
        for _ in range(cfg.restarts):
            other = run(net, x0, objective, cfg, True, generator)
            x, j = _keep_best(result.x, result.objective, other.x, other.objective)
            result = PGDResult(x=x, steps=result.steps, objective=j, passes=result.passes + other.passes)
    return result
