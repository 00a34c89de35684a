"""retrieval.robustness.pgd, the one PGD engine: the configuration's rules, the random start and restarts, which
iterate is kept (per image, or for several images that share one objective value), and the APGD schedule
(docs/method.md#apgd): as strong as fixed steps where those stall, inside the budget, on its documented checkpoints,
and at its documented cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retrieval.attacks import ATTACKS, get_attack
from retrieval.datasets import load_dataset
from retrieval.protocol import attack_config
from retrieval.robustness.pgd import PGDConfig, apgd_checkpoints, pgd
from test_attacks import TinyEmbedder

TARGETS = torch.tensor([0.53, 0.61, 0.47, 0.75]).view(4, 1, 1, 1)


def distance_to_targets(z: torch.Tensor) -> torch.Tensor:
    """Per image, the squared distance of its pixels to a target inside the budget but off the fixed step's grid."""
    return ((z.view(-1, 1, 2, 2) - TARGETS) ** 2).flatten(1).mean(1)


def test_apgd_reaches_a_minimum_that_fixed_steps_only_circle():
    """From 0.5 with steps of 0.2 the fixed schedule can only visit 0.3, 0.5, 0.7, 0.8: it stalls 0.03+ away from each
    target. APGD halves its step when progress stalls and gets far closer, for every item."""
    images = torch.full((4, 1, 2, 2), 0.5)
    fixed = pgd(nn.Flatten(), images, distance_to_targets, PGDConfig(0.3, 0.2, 20, keep_best=True))
    apgd = pgd(nn.Flatten(), images, distance_to_targets, PGDConfig(0.3, 0.2, 20, schedule="apgd"))
    assert (apgd.objective <= fixed.objective).all()
    assert (apgd.objective < 1e-4).all() and (fixed.objective > 5e-4).all()
    assert torch.allclose(apgd.objective, distance_to_targets(apgd.x))  # the reported objective is the returned point's


def test_apgd_checkpoints_follow_the_published_schedule():
    assert apgd_checkpoints(100) == [22, 41, 58, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [3, 5, 6, 8, 9]


@pytest.mark.parametrize("restarts", [0, 2])
def test_apgd_stays_in_the_budget_and_in_range(restarts):
    torch.manual_seed(0)
    images = torch.rand(6, 1, 4, 4)
    cfg = PGDConfig(eps=0.1, alpha=0.0, steps=12, restarts=restarts, schedule="apgd")
    result = pgd(nn.Flatten(), images, lambda z: -(z**2).sum(1), cfg, generator=torch.Generator().manual_seed(1))
    assert (result.x - images).abs().max() <= 0.1 + 1e-6
    assert result.x.min() >= 0 and result.x.max() <= 1
    assert result.passes == 12 * (1 + restarts) == cfg.passes


def test_apgd_with_one_loss_for_several_images_shares_one_schedule():
    """A loss per triplet of stacked copies (HM's shape): every row follows the mean; the best point is kept."""
    images = torch.full((3, 1, 1, 1), 0.2)

    def objective(z: torch.Tensor) -> torch.Tensor:
        return ((z.mean() - 0.55) ** 2).reshape(1)

    result = pgd(nn.Flatten(), images, objective, PGDConfig(eps=0.5, alpha=0.0, steps=15, schedule="apgd"))
    assert float(result.objective) < 1e-3
    assert float(result.objective) == pytest.approx(float(objective(result.x)))


def test_apgd_refuses_the_fixed_schedules_early_stop():
    with pytest.raises(ValueError, match="early_stop_tol"):
        PGDConfig(eps=0.1, alpha=0.01, steps=4, schedule="apgd", early_stop_tol=1e-7)
    with pytest.raises(ValueError, match="schedule must be one of fixed, apgd"):
        PGDConfig(eps=0.1, alpha=0.01, steps=4, schedule="adam")


@pytest.mark.parametrize("name", list(ATTACKS))
def test_the_strong_attacker_is_at_least_as_strong_as_the_fixed_steps_it_replaces(name):
    """Each ranking attack, same queries and targets, one start each: APGD's mean value is at least that of the
    published 32 fixed steps at the same number of passes."""
    torch.manual_seed(0)
    test = load_dataset("fashion-mnist", "test")
    images, labels = test.tensors()[:200], test.labels[:200]
    model = TinyEmbedder()
    with torch.no_grad():
        gallery = model(images)
    goal = ATTACKS[name].attacker_goal
    means = {}
    for attacker in ("published", "strong"):
        cfg = attack_config("rob28", attacker=attacker, steps=32, restarts=0)
        attack = get_attack(name)(gallery, labels, cfg, torch.Generator().manual_seed(4))
        means[attacker] = float(attack(model, images[:48], labels[:48]).value.mean())
    assert goal * (means["strong"] - means["published"]) >= -1e-6, means


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


def test_keep_best_replaces_an_item_only_when_it_is_strictly_better():
    """The per-item rule: with every item's objective flat, each item keeps its first iterate."""
    images = _images()
    cfg = PGDConfig(eps=0.3, alpha=0.1, steps=3, keep_best=True)
    result = pgd(nn.Flatten(), images, lambda e: (e - e.detach()).sum(dim=1), cfg)
    assert torch.equal(result.x, images)


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ValueError) as refused:
        PGDConfig(eps=0.1, alpha=0.01, steps=1, precision="fp16")
    assert str(refused.value) == "precision must be 'fp32' or 'bf16', not 'fp16'"


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
