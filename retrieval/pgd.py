"""The one PGD engine: L-inf projected sign-gradient descent on input images.

Every attack (evaluation, `/probe`) and every adversarial defense (HM, ACT, EST, min-max) runs through `pgd`.
An objective maps the model's embeddings of the current images to a per-item loss vector; the engine minimises
its mean. The model runs in eval mode with parameter gradients switched off, so the inner loop only ever
computes input gradients.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

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

    def __post_init__(self) -> None:
        if self.eps < 0 or self.alpha < 0 or self.steps < 0 or self.restarts < 0:
            raise ValueError("eps, alpha, steps and restarts must be >= 0")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {self.precision!r}")


@dataclass
class PGDResult:
    x: torch.Tensor
    """Adversarial images, detached, within eps of the input (L-inf) and in [0, 1]."""
    steps: int
    """Gradient steps actually taken in the first run (fewer than configured when early stop fired)."""
    objective: torch.Tensor
    """Per-item objective of the returned images (detached)."""


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


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here (CPU: oneDNN bf16 instructions; CUDA: bf16-capable GPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


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


def descend(x: torch.Tensor, grad: torch.Tensor, step_size: float, bounds: tuple[torch.Tensor, torch.Tensor]):
    """One projected sign-gradient step downhill: x - step * sign(grad), clipped into `bounds`."""
    lower, upper = bounds
    return torch.minimum(torch.maximum(x - step_size * grad.sign(), lower), upper)


def uniform_noise(images: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform random point of the L-inf ball of radius eps around each image, clipped to [0, 1]: PGD's random
    start and the random-noise baseline of evaluation. Drawn on the CPU, so a seed gives the same noise on any device."""
    noise = torch.rand(images.shape, generator=generator, device="cpu").to(images.device, images.dtype)
    return (images + (noise * 2 - 1) * eps).clamp(0, 1)


def _run(model, x0, objective, cfg: PGDConfig, random_start: bool, generator) -> PGDResult:
    x = uniform_noise(x0, cfg.eps, generator) if random_start and cfg.eps > 0 else x0.clone()
    step_size = cfg.eps if cfg.steps == 1 else cfg.alpha  # one step = FGSM with the full budget
    bounds = ball(x0, cfg.eps)
    best_x, best_j = x.clone(), None
    previous, taken = None, 0
    for _ in range(cfg.steps):
        x.requires_grad_(True)
        losses = _per_item(objective(_forward(model, x, cfg.precision)))
        mean = losses.mean()
        (grad,) = torch.autograd.grad(mean, x)
        with torch.no_grad():
            if cfg.keep_best:
                best_x, best_j = _keep_best(best_x, best_j, x.detach(), losses.detach())
            x = descend(x.detach(), grad, step_size, bounds)
        taken += 1
        value = float(mean.detach())
        if cfg.early_stop_tol is not None and previous is not None and abs(value - previous) < cfg.early_stop_tol:
            break
        previous = value
    with torch.no_grad():
        final = _per_item(objective(_forward(model, x, cfg.precision))).detach()
        if cfg.keep_best:
            x, final = _keep_best(best_x, best_j, x, final)
    return PGDResult(x=x.detach(), steps=taken, objective=final)


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
    with frozen(model) as net:
        result = _run(net, x0, objective, cfg, cfg.random_start, generator)
        for _ in range(cfg.restarts):
            other = _run(net, x0, objective, cfg, True, generator)
            x, j = _keep_best(result.x, result.objective, other.x, other.objective)
            result = PGDResult(x=x, steps=result.steps, objective=j)
    return result
