"""Ranking attacks, on a tiny embedding model over real Fashion-MNIST test images and on small attacks of the tests'
own: the values each attack moves and reports, budgets and seeds, the reference protocol's quirks, the shared procedure
every attack inherits (each image keeps its best plan, targets come from the caller's generator), neighbours and self
entries, LTM's objective, and the budgets' refusals and protocol text."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.attacks import ATTACKS, Attack, Plan, get_attack
from retrieval.attacks.base import NOT_IN_GALLERY, Batch, gallery_distances
from retrieval.datasets import load_dataset
from retrieval.distances import normalize
from retrieval.errors import UserError
from retrieval.protocol import attack_config, describe_attack
from retrieval.robustness.pgd import PGDConfig

GALLERY, QUERIES = 240, 64


class TinyEmbedder(nn.Module):
    """A small MLP with the model contract: [0, 1] images in, L2-normalised embeddings out."""

    input_size, channels, embedding_dim, arch = 28, 1, 16, "tiny"

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(self.net(x))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("fashion-mnist", "test")
    return ds.tensors()[:GALLERY], ds.labels[:GALLERY]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyEmbedder()


@pytest.fixture(scope="module")
def gallery(model, data) -> torch.Tensor:
    with torch.no_grad():
        return model(data[0])


def run(name, model, data, gallery, cfg, *, seed=0, quirks=False, labels=True):
    images, labels_all = data
    attack = get_attack(name)(gallery, labels_all, cfg, torch.Generator().manual_seed(seed), quirks)
    return attack(model, images[:QUERIES], labels_all[:QUERIES] if labels else None)


def benign_r1(gallery: torch.Tensor, labels: torch.Tensor) -> float:
    order = gallery_distances(gallery[:QUERIES], gallery).argsort(dim=1)[:, 1]  # drop the query itself
    return 100.0 * (labels[order] == labels[:QUERIES]).float().mean().item()


def test_zero_budget_reports_benign_values(model, data, gallery) -> None:
    cfg = attack_config("rob28", steps=3, eps=0.0)
    values = {}
    for name in ATTACKS:
        result = run(name, model, data, gallery, cfg)
        assert torch.equal(result.x, data[0][:QUERIES])
        values |= {k: v.mean().item() for k, v in result.values.items()}
    r1 = benign_r1(gallery, data[1])
    assert 35 < values["CA+"] < 65 and 35 < values["QA+"] < 65  # a random item ranks in the middle
    assert values["QA-"] <= 100 * 2 / GALLERY  # a top-1% neighbour (2 of 240) stays on top
    assert values["CA-"] < 10  # ... and the candidate is near the top of its neighbour's ranking
    assert values["ES:D"] == 0.0
    assert values["ES:R"] == values["LTM"] == values["GTM"] == pytest.approx(r1)
    assert values["GTT"] == 100.0


def test_tma_reports_cosine_to_its_target(model, data, gallery) -> None:
    result = run("TMA", model, data, gallery, attack_config("rob28", steps=2, eps=0.0))
    expected = (gallery[:QUERIES] * gallery[result.targets]).sum(dim=1)
    assert torch.allclose(result.value, expected, atol=1e-5)


def test_attacks_move_values_the_attackers_way(model, data, gallery) -> None:
    benign = attack_config("rob28", steps=4, eps=0.0)
    attacked = attack_config("rob28", steps=4)
    for name, cls in ATTACKS.items():
        before = run(name, model, data, gallery, benign).value.mean()
        after = run(name, model, data, gallery, attacked).value.mean()
        assert cls.attacker_goal * (after - before) > 0, name


def test_perturbation_stays_in_budget(model, data, gallery) -> None:
    cfg = attack_config("rob28", steps=3, restarts=1)
    x = run("QA-", model, data, gallery, cfg).x
    assert (x - data[0][:QUERIES]).abs().max() <= cfg.eps + 1e-6
    assert x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize("name", list(ATTACKS))
def test_more_steps_and_restarts_never_weaker(name, model, data, gallery) -> None:
    """Per item, by the value each attack is judged on (steps >= 2: one step is FGSM with the full budget)."""
    goal = ATTACKS[name].attacker_goal
    runs = [
        run(name, model, data, gallery, attack_config("rob28", steps=s, restarts=r), seed=7).value
        for s, r in ((2, 0), (5, 0), (5, 2))
    ]
    for weaker, stronger in zip(runs, runs[1:]):
        assert (goal * (stronger - weaker) >= -1e-6).all()


def test_same_seed_same_targets_and_values(model, data, gallery) -> None:
    cfg = attack_config("rob28", steps=2, restarts=1)
    a, b = (run("CA-", model, data, gallery, cfg, seed=3) for _ in range(2))
    assert torch.equal(a.targets, b.targets) and torch.equal(a.value, b.value)


def test_probe_without_labels_or_self_entry(model, data, gallery) -> None:
    images = data[0][:1]
    cfg = attack_config("rob28", steps=2)
    outside = torch.tensor([NOT_IN_GALLERY])
    for name in ("CA+", "CA-", "QA+", "QA-", "TMA", "ES", "GTT"):
        attack = get_attack(name)(gallery[1:], None, cfg, torch.Generator().manual_seed(0))
        result = attack(model, images, gallery_index_of_self=outside)
        assert result.x.shape == images.shape and all(v.shape == (1,) for v in result.values.values())
    assert set(get_attack("ES")(gallery, None, cfg)(model, images).values) == {"ES:D"}
    for name in ("LTM", "GTM"):
        with pytest.raises(UserError, match="labels"):
            get_attack(name)(gallery, None, cfg)(model, images)


def test_gtm_reference_target_is_a_position_in_the_unmatching_list() -> None:
    # gallery labels 0,0,1,0,1 ; the query is item 0, its non-self top-1 is item 1 (label 0)
    gallery = normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.2], [0.6, 0.4]]))
    labels = torch.tensor([0, 0, 1, 0, 1])
    batch = Batch(gallery[:1], gallery_distances(gallery[:1], gallery), torch.tensor([0]), labels[:1])
    cfg = PGDConfig(eps=0.1, alpha=0.01, steps=1)
    intended = get_attack("GTM")(gallery, labels, cfg).select(batch)
    quirk = get_attack("GTM")(gallery, labels, cfg, reference_quirks=True).select(batch)
    assert intended.targets.tolist() == [4]  # nearest item whose label differs from the top-1's
    assert quirk.targets.tolist() == [1]  # item 4 is the 2nd of the unmatching items [2, 4] -> position 1


def test_ltm_reference_keeps_the_self_entry_in_the_same_class_set() -> None:
    gallery = normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    labels = torch.tensor([0, 0, 1])
    batch = Batch(gallery[:1], gallery_distances(gallery[:1], gallery), torch.tensor([0]), labels[:1])
    cfg = PGDConfig(eps=0.1, alpha=0.01, steps=1)
    intended = get_attack("LTM")(gallery, labels, cfg).select(batch).data["same"]
    quirk = get_attack("LTM")(gallery, labels, cfg, reference_quirks=True).select(batch).data["same"]
    assert intended.tolist() == [[False, True, False]]
    assert quirk.tolist() == [[True, True, False]]


def test_es_reference_measures_the_shift_one_step_early(model, data, gallery) -> None:
    quirk = run("ES", model, data, gallery, attack_config("rob28", steps=3, reference_quirks=True), quirks=True)
    early = run("ES", model, data, gallery, PGDConfig(eps=77 / 255, alpha=3 / 255, steps=2))
    final = run("ES", model, data, gallery, PGDConfig(eps=77 / 255, alpha=3 / 255, steps=3))
    assert torch.allclose(quirk.values["ES:D"], early.values["ES:D"], atol=1e-6)
    assert torch.equal(quirk.values["ES:R"], final.values["ES:R"])


def test_unknown_attack_and_profile_are_user_errors() -> None:
    assert get_attack("ES:R") is get_attack("ES")
    with pytest.raises(UserError):
        get_attack("XX")
    with pytest.raises(UserError):
        attack_config("rob999")
    with pytest.raises(UserError):
        attack_config("rob28", restarts=1, reference_quirks=True)


class Plane(nn.Module):
    """Two-pixel images -> the unit vector of (pixels - 0.5): an attack's reach is plain geometry."""

    input_size, channels, embedding_dim, arch = 2, 1, 2, "plane"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x.flatten(1) - 0.5)


def test_gtm_keeps_the_stronger_of_the_intended_and_the_reference_target() -> None:
    # Gallery on the unit circle (degrees, label): X(120,0) D(36,1) B(-30,1) self(0,0) A(10,0) C(-25,0).
    # The query's top-1 is A (label 0); the intended target is B, the nearest label-1 item, but C guards it
    # (the query must pass -27.5 degrees); the reference target is gallery[position of B among label-1 items] =
    # gallery[1] = D, reached at 23 degrees. The budget (eps 0.16) turns the query about 25 degrees.
    angles = torch.deg2rad(torch.tensor([120.0, 36.0, -30.0, 0.0, 10.0, -25.0]))
    gallery = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 1, 1, 0, 0, 0])
    query = torch.tensor([[[[1.0, 0.5]]]])
    own = torch.tensor([3])
    cfg = PGDConfig(eps=0.16, alpha=0.01, steps=30, keep_best=True)
    gtm = get_attack("GTM")

    class IntendedOnly(gtm):
        def plans(self, batch):
            return [self.select(batch)]

    def attack(cls, **kw):
        return cls(gallery, labels, cfg, **kw)(Plane(), query, labels[3:4], gallery_index_of_self=own)

    intended, reference, both = attack(IntendedOnly), attack(gtm, reference_quirks=True), attack(gtm)
    assert intended.targets.tolist() == [2] and intended.values["GTM"].tolist() == [100.0]
    assert reference.targets.tolist() == [1] and reference.values["GTM"].tolist() == [0.0]
    assert both.targets.tolist() == [1] and both.values["GTM"].tolist() == [0.0]
    assert torch.equal(both.x, reference.x)


CFG = PGDConfig(eps=0.01, alpha=0.01, steps=1)


def _gallery() -> torch.Tensor:
    return F.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=1)


def _images() -> torch.Tensor:
    return torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))


class TwoPlans(Attack, register=False):
    """Reports a fixed value per image and plan: plan A is stronger on image 0, plan B on image 1."""

    name, reports, attacker_goal = "two-plans", ("V",), 1

    def plans(self, batch: Batch) -> list[Plan]:
        return [Plan(targets=torch.tensor([0, 0]), data={"V": torch.tensor([90.0, 10.0])}),
                Plan(targets=torch.tensor([1, 1]), data={"V": torch.tensor([20.0, 70.0])})]

    def score(self, embeddings, batch, plan):
        return (embeddings * 0).sum(dim=1), {"V": plan.data["V"]}


class DrawsTargets(Attack, register=False):
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
    assert describe_attack("rob28", reference, True) == (
        "rob28 eps 77/255, alpha 3/255, 32 steps x 1 start(s), reference protocol "
        "(last iterate, reference GTM target, LTM self entry, ES:D one step early)")


class FlatReport(Attack, register=False):
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
