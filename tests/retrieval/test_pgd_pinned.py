"""PGD engine details the attack tests do not reach: scalar objectives, best-iterate selection when the objective
is not per image, and where bf16 is considered fast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retrieval.robustness.pgd import PGDConfig, bf16_is_fast, pgd


def test_a_scalar_objective_is_one_item():
    images = torch.full((3, 1, 2, 2), 0.5)
    result = pgd(nn.Flatten(), images, lambda z: z.sum(), PGDConfig(eps=0.1, alpha=0.05, steps=2))
    assert result.objective.shape == (1,)
    assert torch.allclose(result.x, images - 0.1)


def test_keep_best_with_one_value_for_several_images_keeps_the_best_iterate_not_the_first_or_last():
    """Two images, one objective value: (mean - 0.55)^2. Steps of 0.3 from 0.2 visit 0.5 (best) and end at 0.8."""
    images = torch.full((2, 1, 1, 1), 0.2)

    def objective(z: torch.Tensor) -> torch.Tensor:
        return ((z.mean() - 0.55) ** 2).reshape(1)

    result = pgd(nn.Flatten(), images, objective, PGDConfig(eps=1.0, alpha=0.3, steps=2, keep_best=True))
    assert torch.allclose(result.x, torch.full_like(images, 0.5))
    assert float(result.objective) == pytest.approx(0.05**2)


def test_bf16_is_fast_on_the_cpu_exactly_when_onednn_has_bf16_and_never_elsewhere_without_cuda():
    assert bf16_is_fast(torch.device("cpu")) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert bf16_is_fast(torch.device("meta")) is False
