"""Run every ERS attack over a query sample of the test split (docs/method.md#ranking-attacks) and summarise the result.

Gallery = benign embeddings of the whole test split; queries = all of it, or a seeded class-balanced sample of
`max_queries` images (retrieval/sampling.py; never the first N, which on a class-sorted split are one class),
attacked in batches. Each value is the mean of per-batch means, as in the reference.

Randomness is tied to the queries, never to a batch's position or the process that attacks it: each query draws its
targets from its own generator, seeded by (seed, attack, query index), and uniform-noise baseline likewise; PGD's
restart noise, which the engine draws for a whole batch at once, is seeded by (seed, attack, the batch's query
indices). Batches are a fixed cut of the sample, so any process attacking a batch gets the values one process gets.
`noise_baseline` also measures every value under uniform random noise of the same budget with the same targets,
so "far beyond random noise" can be shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from retrieval.attacks import ATTACKS
from retrieval.datasets import ImageDataset
from retrieval.distances import normalize
from retrieval.distributed import Processes
from retrieval.errors import UserError
from retrieval.metrics import benign_metrics, embed
from retrieval.progress import tracked
from retrieval.protocol import PROFILES, STRONG, attack_config, describe_attack, protocol_for
from retrieval.robustness.ers import ATTACK_KEYS, ers, ers_interval, ers_normalize
from retrieval.robustness.pgd import uniform_noise
from retrieval.sampling import balanced_subset
from retrieval.seeding import generator

BENIGN_KEYS = ("R@1", "R@2", "mAP", "mAP@R", "mAP@10", "NMI")
COLLAPSE_KEYS = ("TMA", "ES:D")
"""Near 1 and near 0 respectively signal a collapsed embedding (a high ERS alone does not rule it out)."""


def evaluate_robustness(
    model: nn.Module,
    data: ImageDataset | torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    profile: str | None = None,
    max_queries: int | None = None,
    steps: int | None = None,
    restarts: int | None = None,
    seed: int = 0,
    reference_quirks: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    noise_baseline: bool = False,
    strong: bool = False,
    processes: Processes | None = None,
) -> dict | None:
    """All ten attack values, their normalised scores, ERS (with a bootstrap interval over queries), per-query
    values, benign metrics, the protocol, configuration and timings.

    `profile` defaults to the one of the model's input-size protocol (retrieval.protocol). `strong` searches its
    budget with the strong attacker (APGD with a restart, retrieval/protocol.py) instead of the published one.
    Under torchrun (`processes`) each process attacks its part of the batches; rank 0 gathers them and returns the
    report one process would, the others None."""
    labels = _labels(data, labels)
    profile = protocol_for(_input_size(model, data)).evaluation.name if profile is None else profile
    cfg = attack_config(profile, attacker=STRONG if strong else "published", steps=steps, restarts=restarts,
                        reference_quirks=reference_quirks)
    batch_size = batch_size or PROFILES[profile].batch_size
    if batch_size < 1 or (max_queries is not None and max_queries < 1):
        raise UserError("batch size and --max-queries must be positive")
    queries = _query_sample(labels, max_queries, seed)
    device = next(model.parameters()).device
    processes = processes or Processes(rank=0, world_size=1, device=device)
    started = time.perf_counter()

    gallery = normalize(embed(model, data, batch_size=256)).to(device)
    embed_s = time.perf_counter() - started
    benign = {k: 100.0 * v for k, v in benign_metrics(gallery.cpu(), labels).items()} if processes.is_main else {}
    benign_s = time.perf_counter() - started - embed_s

    gallery_labels = labels.to(device)
    attacks = {
        name: cls(gallery, gallery_labels, cfg, torch.Generator(), reference_quirks) for name, cls in ATTACKS.items()
    }
    n = len(queries)
    starts = range(0, n, batch_size)
    mine = processes.part(len(starts))
    done: list[_BatchValues] = []
    tasks = len(mine) * len(attacks) * (2 if noise_baseline else 1)
    with tracked("attacks", tasks, enabled=progress and processes.is_main) as step:
        for b in mine:
            index = queries[starts[b] : starts[b] + batch_size]
            images = _images(data, index).to(device)
            batch_labels = labels[index].to(device)
            noisy = _per_query_noise(images, index, cfg.eps, seed) if noise_baseline else None
            batch = _BatchValues()
            for name, attack in attacks.items():
                tick = time.perf_counter()
                attack.seed_queries(seed, index)
                result = attack(model, images, batch_labels)
                batch.add(result.values, batch.means, keep=True)
                batch.passes[name] = result.passes
                batch.seconds[name] = time.perf_counter() - tick
                step(description=f"{name} batch {b + 1}/{len(starts)}".ljust(22))
                if noisy is not None:
                    attack.seed_queries(seed, index)  # same targets as the attack
                    batch.add(attack.measure_perturbed(model, images, noisy, batch_labels).values, batch.noise_means)
                    step(description=f"{name} noise {b + 1}/{len(starts)}".ljust(22))
            done.append(batch)
    batches = [batch for part in processes.gather(done) for batch in part]  # rank order is batch order
    if not processes.is_main:
        return None
    sums, noise_sums = _sum_means(batches, "means"), _sum_means(batches, "noise_means")
    per_query = {k: [v for batch in batches for v in batch.per_query[k]] for k in ATTACK_KEYS}
    seconds = {name: sum(batch.seconds[name] for batch in batches) for name in attacks}
    passes = {name: sum(batch.passes[name] for batch in batches) for name in attacks}

    values = {k: v / len(starts) for k, v in sums.items()}
    low, high = ers_interval(per_query, seed=seed) if n > 1 else (float("nan"), float("nan"))
    report = {
        "profile": profile,
        "protocol": describe_attack(profile, cfg, reference_quirks),
        "strong": strong,
        "config": {
            "eps": cfg.eps, "alpha": cfg.alpha, "steps": cfg.steps, "restarts": cfg.restarts, "schedule": cfg.schedule,
            "passes_per_query": {name: passes[name] / len(starts) for name in attacks},
            "best_iterate": cfg.keep_best, "reference_quirks": reference_quirks, "batch_size": batch_size,
            "max_queries": max_queries, "queries": n, "gallery_size": len(labels), "seed": seed,
            "query_sample": "all, in split order" if max_queries is None or n == len(labels)
            else f"seeded class-balanced sample (seed {seed})",
            "query_indices": queries.tolist(),
            "torch_threads": torch.get_num_threads(),
            "processes": processes.world_size,
        },
        "benign": {k: benign[k] for k in BENIGN_KEYS if k in benign},
        "attacks": values,
        "normalized": ers_normalize(values),
        "ERS": ers(values),
        "ERS_ci95": [low, high],
        "collapse": {k: values[k] for k in COLLAPSE_KEYS},
        "per_query": {k: [round(v, 4) for v in vs] for k, vs in per_query.items()},
        "timings": {
            "embed_s": embed_s,
            "benign_s": benign_s,
            "attack_s": seconds,
            "queries_per_second": {k: n / s if s > 0 else None for k, s in seconds.items()},
            "total_s": time.perf_counter() - started,
        },
    }
    if noise_baseline:
        noise = {k: v / len(starts) for k, v in noise_sums.items()}
        report["noise_baseline"] = {"attacks": noise, "normalized": ers_normalize(noise), "ERS": ers(noise)}
    return report


def _per_query_noise(images: torch.Tensor, queries: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """The uniform-noise baseline's perturbation, each query's from its own seed."""
    return torch.cat([uniform_noise(images[i : i + 1], eps, generator(seed, "noise", int(q)))
                      for i, q in enumerate(queries)])


def _query_sample(labels: torch.Tensor, max_queries: int | None, seed: int) -> torch.Tensor:
    """Indices of the queries to attack: all, else a seeded class-balanced sample (sorted, so batches stay in order)."""
    if max_queries is None or max_queries >= len(labels):
        return torch.arange(len(labels))
    return balanced_subset(labels, max_queries, seed, purpose="queries")


def _labels(data: ImageDataset | torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        labels = getattr(data, "labels", None)
    if labels is None:
        raise UserError("robustness evaluation needs labels (LTM, GTM and ES:R are recall-based)")
    if len(labels) != len(data) or len(labels) < 2:
        raise UserError(f"need at least 2 images and one label per image, got {len(data)} images, {len(labels)} labels")
    return labels.detach().long().cpu()


def _input_size(model: nn.Module, data: ImageDataset | torch.Tensor) -> int:
    """The model's declared input side, else the side of the images it is given."""
    size = getattr(model, "input_size", None)
    if size is not None:
        return int(size)
    return int(data.shape[-1]) if isinstance(data, torch.Tensor) else data.image_size


def _images(data: ImageDataset | torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data[index]
    held = data.tensors()
    if held is not None:
        return held[index]
    return torch.stack([data[int(i)][0] for i in index])


@dataclass
class _BatchValues:
    """One batch's outcome, on whichever process attacked it: what rank 0 needs to sum as one process would."""

    means: dict[str, float] = field(default_factory=dict)
    noise_means: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, list[float]] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, values: dict[str, torch.Tensor], means: dict[str, float], keep: bool = False) -> None:
        """Record each value's batch mean in `means` (and, with `keep`, its per-query values)."""
        for key, per_item in values.items():
            means[key] = float(per_item.float().mean())
            if keep:
                self.per_query[key] = per_item.float().cpu().tolist()


def _sum_means(batches: list[_BatchValues], which: str) -> dict[str, float]:
    """Per value, the sum of its batch means in batch order (the order one process adds them in)."""
    sums = dict.fromkeys(ATTACK_KEYS, 0.0)
    for batch in batches:
        for key, mean in getattr(batch, which).items():
            sums[key] += mean
    return sums


__all__ = ["evaluate_robustness"]
