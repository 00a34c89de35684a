"""uniform_noise: PGD's random start and evaluation's random-noise baseline are one draw from the L-inf ball, inside
the pixel range at both ends, in the images' dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retrieval.datasets import load_dataset
from retrieval.robustness.evaluation import evaluate_robustness
from retrieval.robustness.pgd import PGDConfig, pgd, uniform_noise

EPS = 0.1


def test_noise_fills_the_ball_inside_the_image_range_and_repeats_from_its_seed():
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    noisy = uniform_noise(images, EPS, torch.Generator().manual_seed(3))
    delta = noisy - images
    assert noisy.min() >= 0 and noisy.max() <= 1 and delta.abs().max() <= EPS + 1e-6
    interior = (images > EPS) & (images < 1 - EPS)
    assert delta[interior].abs().max() > 0.95 * EPS
    assert abs(float(delta[interior].mean())) < 0.1 * EPS  # one-sided noise would give 0.5 EPS
    assert torch.equal(noisy, uniform_noise(images, EPS, torch.Generator().manual_seed(3)))
    assert not torch.equal(noisy, uniform_noise(images, EPS, torch.Generator().manual_seed(4)))


def test_pgd_random_start_is_the_same_draw():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 4))
    images = torch.rand(3, 1, 28, 28)
    start = pgd(model, images, lambda e: e.sum(1), PGDConfig(EPS, 0.01, 0, random_start=True),
                generator=torch.Generator().manual_seed(7)).x
    assert torch.equal(start, uniform_noise(images, EPS, torch.Generator().manual_seed(7)))


def test_the_noise_baseline_repeats_from_its_seed_and_changes_with_it():
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist", "test")
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 8))

    def noise_values(seed: int) -> dict:
        return evaluate_robustness(model, data.tensors()[:48], data.labels[:48], profile="rob28", max_queries=16,
                                   steps=1, batch_size=16, seed=seed, progress=False,
                                   noise_baseline=True)["noise_baseline"]["attacks"]

    first = noise_values(0)
    assert noise_values(0) == first
    assert noise_values(1)["ES:D"] != first["ES:D"]  # ES:D has no targets: only the noise itself can move it


def test_uniform_noise_stays_in_the_ball_and_in_the_pixel_range():
    generator = torch.Generator().manual_seed(0)
    black = uniform_noise(torch.zeros(2, 1, 16, 16), 0.5, generator)
    assert float(black.min()) == 0.0 and float(black.max()) <= 0.5 and float(black.max()) > 0.45
    grey = uniform_noise(torch.full((2, 1, 16, 16), 0.5), 0.1, generator)
    assert float(grey.min()) >= 0.4 - 1e-6 and float(grey.max()) <= 0.6 + 1e-6
    assert float(grey.min()) < 0.42 and float(grey.max()) > 0.58  # both sides of the ball are reached


def test_uniform_noise_never_leaves_the_top_of_the_pixel_range():
    white = uniform_noise(torch.ones(2, 1, 16, 16), 0.5, torch.Generator().manual_seed(0))
    assert float(white.max()) == 1.0 and float(white.min()) >= 0.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_uniform_noise_keeps_the_images_dtype(dtype):
    assert uniform_noise(torch.full((1, 1, 4, 4), 0.5, dtype=dtype), 0.1).dtype == dtype
