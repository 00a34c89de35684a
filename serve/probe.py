"""A live per-query robustness report: attack the uploaded query against the served gallery and compare rankings.

The attack runs on the torch model rebuilt from the bundle (gradients), while rankings before and after come from
the served path (ONNX + FAISS), so the report describes what a client of /search would actually see.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from retrieval.attacks import get_attack, probe_attacks
from retrieval.attacks.base import NOT_IN_GALLERY
from retrieval.protocol import ATTACKERS, attack_config, protocol_for
from serve.engine import Engine
from serve.errors import ServiceError
from serve.schemas import FlipSearch, ProbeResponse

PROBE_ATTACKS = probe_attacks()
"""Attacks a client may ask for (each class says whether /probe offers it); each moves the query, so each can change
its top-1."""
GRID_STEP = 1 / 255
"""The eps grid of the smallest-flip search: one grey level."""


class ProbeTimeout(Exception):
    """The request's time budget ran out inside a forward pass."""


class _Deadline(nn.Module):
    """Wraps the model so any attack, whatever its loop, stops at the deadline (checked before every forward)."""

    def __init__(self, inner: nn.Module, deadline: float) -> None:
        super().__init__()
        self.inner, self.deadline = inner, deadline

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if time.monotonic() > self.deadline:
            raise ProbeTimeout
        return self.inner(x)


@dataclass(frozen=True)
class ProbeRequest:
    attack: str
    eps: float
    steps: int
    schedule: str
    top_k: int
    return_image: bool
    bisection_steps: int
    time_limit_s: float
    deadline: float
    """time.monotonic() at which the whole request (decoding included) must stop."""


def default_eps(engine: Engine) -> float:
    """The budget the model was trained for (the bundle's eps), else its input-size protocol's evaluation budget."""
    eps = engine.bundle.config.get("eps")
    return float(eps) if eps else protocol_for(engine.bundle.input_size).evaluation.eps


def run_probe(engine: Engine, image: torch.Tensor, req: ProbeRequest) -> ProbeResponse:
    """Clean ranking, attacked ranking, their comparison, and the smallest eps on the grid that flips the top-1."""
    start = time.perf_counter()
    model = _Deadline(engine.torch_model, req.deadline)
    clean_emb, _ = engine.embed(image)
    (clean,), _ = engine.search(clean_emb, req.top_k)
    try:
        x_adv, value = _attack(engine, model, image, req, req.eps, req.steps)
    except ProbeTimeout:
        raise probe_time_limit(req) from None
    adv_emb, _ = engine.embed(x_adv)
    (adversarial,), _ = engine.search(adv_emb, req.top_k)
    changed = bool(clean and adversarial and clean[0].id != adversarial[0].id)
    flip = _smallest_flip(engine, model, image, req, clean[0].id) if changed else FlipSearch(
        min_flip_eps=None, grid_step=GRID_STEP, trials=0, steps_per_trial=req.bisection_steps, truncated=False)
    overlap = len({h.id for h in clean} & {h.id for h in adversarial}) / max(1, len(clean))
    return ProbeResponse(
        attack=req.attack, eps=req.eps, steps=req.steps, schedule=req.schedule, top_k=req.top_k,
        clean=clean, adversarial=adversarial, top1_changed=changed, overlap_at_k=overlap,
        clean_top1_rank_after=_rank_of(engine, adv_emb, clean[0].id),
        embedding_shift=float(np.linalg.norm(adv_emb[0] - clean_emb[0])),
        attack_value=value, flip=flip,
        adversarial_image_png=_png_base64(x_adv) if req.return_image else None,
        clean_image_png=_png_base64(image) if req.return_image else None,
        model_id=engine.model_id, index_id=engine.index_id,
        took_ms=(time.perf_counter() - start) * 1000,
    )


def probe_time_limit(req: ProbeRequest) -> ServiceError:
    return ServiceError(503, "probe_time_limit", f"the probe did not finish within {req.time_limit_s} s; "
                        "ask for fewer steps")


def _attack(engine: Engine, model: nn.Module, image: torch.Tensor, req: ProbeRequest, eps: float, steps: int):
    """One attack from the engine's registry by the attacker of the request's schedule, without restarts, best
    iterate kept (fixed steps: the model's profile step size, raised so that few steps can still reach the ball's
    edge)."""
    attacker = next(name for name, known in ATTACKERS.items() if known.schedule == req.schedule)
    profile = protocol_for(engine.bundle.input_size).evaluation.name
    cfg = attack_config(profile, attacker=attacker, steps=steps, restarts=0, eps=eps, reach_edge=True)
    attack = get_attack(req.attack)(engine.gallery, None, cfg, generator=torch.Generator().manual_seed(0))
    result = attack(model, image, gallery_index_of_self=torch.tensor([NOT_IN_GALLERY]))
    return result.x, float(result.value[0])


def _smallest_flip(engine: Engine, model: nn.Module, image: torch.Tensor, req: ProbeRequest, top1: int) -> FlipSearch:
    """Bisection on the grid below eps (which flipped): each trial is a shorter attack, so the answer is an
    upper bound that assumes flipping is monotone in eps. Stops early, marked truncated, at the deadline."""
    lo, hi = 0, max(1, round(req.eps / GRID_STEP))
    trials, truncated = 0, False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            x_adv, _ = _attack(engine, model, image, req, mid * GRID_STEP, req.bisection_steps)
        except ProbeTimeout:
            truncated = True
            break
        (hits,), _ = engine.search(engine.embed(x_adv)[0], 1)
        trials += 1
        if hits and hits[0].id != top1:
            hi = mid
        else:
            lo = mid
    smallest = min(req.eps, hi * GRID_STEP)
    return FlipSearch(min_flip_eps=smallest, grid_step=GRID_STEP, trials=trials,
                      steps_per_trial=req.bisection_steps, truncated=truncated)


def _rank_of(engine: Engine, embedding: np.ndarray, item: int) -> int:
    """1-based rank of a gallery item in the full ranking of `embedding` (ties count in its favour)."""
    distances = torch.cdist(torch.from_numpy(embedding), engine.gallery)[0]
    return int((distances < distances[item]).sum()) + 1


def _png_base64(x: torch.Tensor) -> str:
    pixels = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
