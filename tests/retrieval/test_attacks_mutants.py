"""retrieval.attacks: the shared procedure every attack inherits (on two small attacks of the test's own: each image
keeps its best plan, targets come from the caller's generator), neighbours and self entries, LTM's objective, and the
budgets' refusals and protocol text (each a behaviour a sampled mutant changed without a test noticing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.attacks import Attack, Batch, Plan, attack_config, get_attack
from retrieval.attacks.base import NOT_IN_GALLERY
from retrieval.attacks.profiles import protocol
from retrieval.errors import UserError
from retrieval.robustness.pgd import PGDConfig

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


def test_a_two_item_gallery_still_has_a_neighbour_to_attack_with():
    """CA- draws among the top 1% non-self neighbours: at least one, at most all the others."""
    gallery = _gallery()[:2]
    attack = get_attack("CA-")(gallery, None, CFG)
    attacked = attack(nn.Flatten(), _images()[:1], gallery_index_of_self=torch.tensor([0]))
    assert attacked.targets.tolist() == [1]


def test_an_image_outside_the_gallery_may_target_its_nearest_gallery_item():
    """A /probe upload is not in the gallery (-1): its nearest item is a neighbour, not its own entry."""
    images = _images()[:1]
    others = torch.randn(3, 16, generator=torch.Generator().manual_seed(4))
    gallery = F.normalize(torch.cat([images.flatten(1), others]))
    attack = get_attack("CA-")(gallery, None, CFG)
    assert attack(nn.Flatten(), images, gallery_index_of_self=torch.tensor([NOT_IN_GALLERY])).targets.tolist() == [0]
    assert attack(nn.Flatten(), images, gallery_index_of_self=torch.tensor([0])).targets.tolist() != [0]


def test_ltm_objective_is_farthest_other_class_minus_nearest_same_class():
    """J = max(0, max_{other} d(q, X_j) - min_{same} d(q, X_j)), brute force on a small labelled gallery."""
    gallery, labels = _gallery()[:6], torch.tensor([0, 0, 0, 1, 1, 1])
    queries = F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(5)), dim=1)
    query_labels = torch.tensor([0, 1, 0, 1])
    distances = torch.cdist(queries, gallery)
    batch = Batch(embeddings=queries, distances=distances, self_index=torch.full((4,), NOT_IN_GALLERY),
                  labels=query_labels)
    attack = get_attack("LTM")(gallery, labels, CFG)
    loss, _ = attack.score(queries, batch, attack.select(batch))
    for i in range(4):
        same = labels == query_labels[i]
        expected = max(0.0, float(distances[i][~same].max() - distances[i][same].min()))
        assert float(loss[i]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("negative", [{"steps": -1}, {"restarts": -1}, {"eps": -0.1}])
def test_attack_budgets_refuse_each_negative_setting_as_a_user_error(negative):
    with pytest.raises(UserError) as refused:
        attack_config("rob28", **negative)
    assert str(refused.value) == "steps, restarts and eps must be >= 0"


def test_attack_budgets_name_the_reference_protocol():
    reference = attack_config("rob28", reference_quirks=True)
    assert protocol("rob28", reference, True) == (
        "rob28 eps 77/255, alpha 3/255, 32 steps x 1 start(s), reference protocol "
        "(last iterate, reference GTM target, LTM self entry, ES:D one step early)")


class FlatReport(Attack):
    """Reports the same value for every iterate; J is the first coordinate of the unit embedding."""

    name, reports, attacker_goal = "flat", ("V",), 1

    def score(self, embeddings, batch, plan):
        return embeddings[:, 0], {"V": torch.zeros(len(embeddings))}


def test_best_iterate_breaks_a_tie_in_the_reported_value_by_the_lower_objective():
    images = _images()
    cfg = PGDConfig(eps=0.1, alpha=0.05, steps=3, keep_best=True)
    attacked = FlatReport(_gallery(), None, cfg)(nn.Flatten(), images)
    objective = F.normalize(attacked.x.flatten(1), dim=1)[:, 0]
    clean = F.normalize(images.flatten(1), dim=1)[:, 0]
    assert bool((objective < clean).all())  # the clean start is the worst iterate by J, never the one kept
