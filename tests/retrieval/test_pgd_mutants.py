"""retrieval.robustness.pgd: the configuration's rules, the random start and restarts, ties under keep_best, and the noise's
bounds (each a behaviour a sampled mutant of retrieval/robustness/pgd.py changed without a test noticing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retrieval.robustness.pgd import PGDConfig, bf16_is_fast, pgd, uniform_noise


def _images(k: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(k, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("field", ["eps", "alpha", "steps", "restarts"])
def test_each_negative_setting_is_refused_alone(field):
    settings = {"eps": 0.1, "alpha": 0.01, "steps": 2, "restarts": 0} | {field: -1}
    with pytest.raises(ValueError) as refused:
        PGDConfig(**settings)
    assert str(refused.value) == "eps, alpha, steps and restarts must be >= 0"


def test_zero_steps_is_a_valid_no_attack():
    images = _images()
    result = pgd(nn.Flatten(), images, lambda e: e.sum(dim=1), PGDConfig(eps=0.1, alpha=0.01, steps=0))
    assert result.steps == 0 and torch.equal(result.x, images)


def test_a_zero_budget_draws_no_noise():
    """eps 0 leaves the images as they are and the caller's random stream untouched, random start or not."""
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    images = _images()
    cfg = PGDConfig(eps=0.0, alpha=0.01, steps=2, random_start=True)
    result = pgd(nn.Flatten(), images, lambda e: e.sum(dim=1), cfg, generator=generator)
    assert torch.equal(result.x, images)
    assert torch.equal(generator.get_state(), state)


def test_restarts_start_from_random_points_of_the_ball():
    """Even without a random first start, a restart begins at noise; here (no steps) it wins by being away from x0."""
    images = _images()

    def away_from_clean(embeddings: torch.Tensor) -> torch.Tensor:
        return -(embeddings - images.flatten(1)).abs().sum(dim=1)

    cfg = PGDConfig(eps=0.1, alpha=0.01, steps=0, restarts=1)
    result = pgd(nn.Flatten(), images, away_from_clean, cfg, generator=torch.Generator().manual_seed(0))
    moved = (result.x - images).abs().flatten(1).amax(dim=1)
    assert bool((moved > 0).all()) and bool((moved <= 0.1 + 1e-6).all())


def test_keep_best_replaces_an_iterate_only_when_strictly_better():
    """A flat objective (same value everywhere, non-zero gradient) moves x, but the first iterate stays the best."""
    images = _images()
    cfg = PGDConfig(eps=0.3, alpha=0.1, steps=3, keep_best=True)
    result = pgd(nn.Flatten(), images, lambda e: e.sum() - e.sum().detach(), cfg)
    assert torch.equal(result.x, images)
    moved = pgd(nn.Flatten(), images, lambda e: e.sum() - e.sum().detach(), PGDConfig(eps=0.3, alpha=0.1, steps=3))
    assert not torch.equal(moved.x, images)  # the same run without keep_best does move


def test_uniform_noise_stays_in_the_ball_and_in_the_pixel_range():
    generator = torch.Generator().manual_seed(0)
    black = uniform_noise(torch.zeros(2, 1, 16, 16), 0.5, generator)
    assert float(black.min()) == 0.0 and float(black.max()) <= 0.5 and float(black.max()) > 0.45
    grey = uniform_noise(torch.full((2, 1, 16, 16), 0.5), 0.1, generator)
    assert float(grey.min()) >= 0.4 - 1e-6 and float(grey.max()) <= 0.6 + 1e-6
    assert float(grey.min()) < 0.42 and float(grey.max()) > 0.58  # both sides of the ball are reached


def test_keep_best_replaces_an_item_only_when_it_is_strictly_better():
    """The per-item rule: with every item's objective flat, each item keeps its first iterate."""
    images = _images()
    cfg = PGDConfig(eps=0.3, alpha=0.1, steps=3, keep_best=True)
    result = pgd(nn.Flatten(), images, lambda e: (e - e.detach()).sum(dim=1), cfg)
    assert torch.equal(result.x, images)


def test_uniform_noise_never_leaves_the_top_of_the_pixel_range():
    white = uniform_noise(torch.ones(2, 1, 16, 16), 0.5, torch.Generator().manual_seed(0))
    assert float(white.max()) == 1.0 and float(white.min()) >= 0.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_uniform_noise_keeps_the_images_dtype(dtype):
    assert uniform_noise(torch.full((1, 1, 4, 4), 0.5, dtype=dtype), 0.1).dtype == dtype


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ValueError) as refused:
        PGDConfig(eps=0.1, alpha=0.01, steps=1, precision="fp16")
    assert str(refused.value) == "precision must be 'fp32' or 'bf16', not 'fp16'"


def test_on_cuda_bf16_is_fast_exactly_when_the_gpu_supports_it(monkeypatch):
    """Asks the GPU, not the CPU's oneDNN check (the device is only named here: no GPU needed)."""
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert bf16_is_fast(torch.device("cuda")) is supported
