"""retrieval.attacks.base: the shared procedure every attack inherits, on two small attacks of the test's own --
each image keeps its best plan, and targets come from the generator the caller passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.attacks import Attack, Batch, Plan
from retrieval.pgd import PGDConfig

CFG = PGDConfig(eps=0.01, alpha=0.01, steps=1)


def _gallery() -> torch.Tensor:
    return F.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=1)


def _images() -> torch.Tensor:
    return torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))


class TwoPlans(Attack):
    """Reports a fixed value per image and plan: plan A is stronger on image 0, plan B on image 1."""

    name, reports, attacker_goal = "two-plans", ("V",), 1

    def plans(self, batch: Batch) -> list[Plan]:
        return [Plan(targets=torch.tensor([0, 0]), data={"V": torch.tensor([90.0, 10.0])}),
                Plan(targets=torch.tensor([1, 1]), data={"V": torch.tensor([20.0, 70.0])})]

    def score(self, embeddings, batch, plan):
        return (embeddings * 0).sum(dim=1), {"V": plan.data["V"]}


class DrawsTargets(Attack):
    name, reports, attacker_goal = "draws", ("V",), 1

    def select(self, batch: Batch) -> Plan:
        return Plan(targets=self._draw(1000, len(batch.embeddings)))

    def score(self, embeddings, batch, plan):
        return (embeddings * 0).sum(dim=1), {"V": plan.targets.float()}


def test_each_image_keeps_the_plan_its_attack_does_best_with():
    attack = TwoPlans(_gallery(), None, CFG)
    images = _images()
    attacked = attack(nn.Flatten(), images)
    assert attacked.values["V"].tolist() == [90.0, 70.0] and attacked.targets.tolist() == [0, 1]
    measured = attack.measure_perturbed(nn.Flatten(), images, images.clone())
    assert measured.values["V"].tolist() == [90.0, 70.0] and measured.targets.tolist() == [0, 1]


def test_targets_are_drawn_from_the_callers_generator_and_seed_0_by_default():
    def expected(seed: int) -> list[int]:
        return torch.randint(1000, (2,), generator=torch.Generator().manual_seed(seed)).tolist()

    given = DrawsTargets(_gallery(), None, CFG, generator=torch.Generator().manual_seed(5))
    assert given(nn.Flatten(), _images()).targets.tolist() == expected(5)
    default = DrawsTargets(_gallery(), None, CFG)
    assert default(nn.Flatten(), _images()).targets.tolist() == expected(0)
    assert expected(5) != expected(0)
