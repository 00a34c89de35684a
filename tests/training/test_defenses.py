"""Behaviour of the training defenses (docs/method.md) on a tiny embedding network and a tiny SPC-2 batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from retrieval.distances import normalize
from retrieval.errors import UserError
from retrieval.robustness.pgd import AUTO_PRECISION_VARIABLE, auto_precision, bf16_is_fast
from training.defenses import build_defense
from training.defenses.act import AntiCollapse
from training.defenses.base import clean_embeddings
from training.defenses.config import DefenseConfig
from training.defenses.lga import LGADestination
from training.defenses.hm import MinMax
from training.losses import hardness, ics_loss
from training.defenses.notation import parse_method
from training.miners import get_miner

N = 8  # pairs per batch
SEED = 3


class Tiny(nn.Module):
    """A small 28x28 embedding net with the model contract's attributes."""

    arch, input_size, channels, embedding_dim = "tiny", 28, 1, 16

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=3, stride=2)
        self.fc = nn.Linear(4 * 13 * 13, self.embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(self.fc(torch.relu(self.conv(x)).flatten(1)))


class Recorder(nn.Module):
    """Stands in for a DDP wrapper: PGD unwraps it via `.module`, so it sees only the training forwards."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.module(x)


@pytest.fixture
def batch() -> tuple[Recorder, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.rand(2 * N, 1, 28, 28) * 0.8 + 0.1
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3]).repeat_interleave(2)
    return Recorder(Tiny()), images, labels


def run(method: str, model, images, labels, **overrides):
    cfg = dataclasses.replace(parse_method(method), **{"pgd_steps": 4, "precision": "fp32", **overrides})
    defense = build_defense(cfg, generator=torch.Generator().manual_seed(SEED))
    model.inputs.clear()
    loss, stats = defense(model, images, labels)
    return defense, loss, stats


def replay(letter: str, model, images, labels):
    """The source triplets the defense mined (same seed, same clean embeddings)."""
    miner = get_miner(letter, generator=torch.Generator().manual_seed(SEED))
    return miner(clean_embeddings(model, images), labels)


def copies(images, a, p, n) -> torch.Tensor:
    return torch.cat([images[a], images[p], images[n]])


def test_hm_with_source_destination_is_regular_training(batch):
    model, images, labels = batch
    _, regular_loss, _ = run("N/A[S]", model, images, labels)
    defense, hm_loss, stats = run("HM[S,S]", model, images, labels)
    assert torch.equal(regular_loss, hm_loss)
    assert stats["perturbed_fraction"] == 0.0 and stats["pgd_steps"] == 0.0
    assert torch.equal(model.inputs[0], images)
    assert defense.paper_cost() == 1


def test_min_max_perturbs_every_triplet(batch):
    model, images, labels = batch
    defense, loss, stats = run("HM[R,2]", model, images, labels)
    assert isinstance(defense, MinMax) and defense.name == "HM[R,2]"
    assert stats["perturbed_fraction"] == 1.0
    assert stats["hardness_adv"] > stats["hardness_source"]
    assert "hardness_destination" not in stats
    _, hm_loss, hm_stats = run("HM[R,2]", model, images, labels, defense="hm", destination="2")
    assert torch.equal(loss, hm_loss) and stats == hm_stats  # the hm key with destination 2 is the same min-max


def test_min_max_never_stops_early_where_hm_does(batch):
    """With eps = 0 nothing moves, so the objective stalls at once: HM's early stop ends PGD after two steps, the
    direct min-max runs all eta steps (docs/method.md#min-max-hmx2)."""
    model, images, labels = batch
    assert run("HM[R,1.5]", model, images, labels, pgd_steps=8, eps=0.0)[2]["pgd_steps"] == 2
    assert run("HM[R,2]", model, images, labels, pgd_steps=8, eps=0.0)[2]["pgd_steps"] == 8


def destination_between(h: torch.Tensor) -> float:
    """A constant destination in the widest gap between the clean hardness values around their median, printed the way
    the notation prints it: no triplet lies within rounding (of the notation, the BLAS or bf16) of the boundary."""
    ordered = h.sort().values.tolist()
    low, high = max(zip(ordered[1:-2], ordered[2:-1]), key=lambda pair: pair[1] - pair[0])
    target = float(f"{(low + high) / 2:.3g}")
    assert low + 1e-3 < target < high - 1e-3
    return target


def test_triplets_at_or_above_destination_never_move(batch):
    model, images, labels = batch
    a, p, n = replay("R", model, images, labels)
    clean = clean_embeddings(model, images)
    h = hardness(clean[a], clean[p], clean[n])
    target = destination_between(h)
    _, _, stats = run(f"HM[R,{target}]", model, images, labels)
    x0 = copies(images, a, p, n)
    moved = (model.inputs[0] != x0).flatten(1).any(1).view(3, N).any(0)
    assert 0 < int((h >= target).sum()) < N
    assert not moved[h >= target].any()
    assert moved[h < target].all()
    assert stats["perturbed_fraction"] == pytest.approx(float((h < target).float().mean()))


def test_hm_step_follows_the_sign_of_the_hardness_gradient(batch):
    model, images, labels = batch
    eps = 0.05
    run("HM[R,1.5]", model, images, labels, pgd_steps=1, eps=eps)  # one step = FGSM with step eps
    a, p, n = replay("R", model, images, labels)
    x0 = copies(images, a, p, n).requires_grad_(True)
    (grad,) = torch.autograd.grad(hardness(*model.module(x0).chunk(3)).sum(), x0)
    delta = model.inputs[0] - x0.detach()
    assert torch.allclose(delta, eps * grad.sign(), atol=1e-6)


def test_excluding_settled_triplets_does_not_change_the_attack(batch):
    """The k moving triplets take the same steps as they would inside the full 3N PGD batch. In float64: the claim is
    about which images enter PGD, and only float64 keeps a k-row and a 3N-row batch from rounding (and so from
    flipping near-zero gradient signs) differently on some CPUs."""
    model, images, labels = batch
    from retrieval.robustness.pgd import PGDConfig, pgd
    from training.defenses.hm import EARLY_STOP_TOL
    from training.defenses.lga import hm_objective

    model.double()
    images = images.double()
    a, p, n = replay("R", model, images, labels)
    clean = clean_embeddings(model, images)
    target = destination_between(hardness(clean[a], clean[p], clean[n]))
    _, _, stats = run(f"HM[R,{target}]", model, images, labels, pgd_steps=6)
    full = pgd(
        model,
        copies(images, a, p, n),
        hm_objective(torch.full((N,), target, dtype=torch.float64)),
        PGDConfig(77 / 255, 3 / 255, 6, early_stop_tol=EARLY_STOP_TOL),
    )
    assert torch.equal(model.inputs[0], full.x)
    assert stats["pgd_steps"] == full.steps


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["HM[R,gLGA]", "HM[R,2]", "ACT[R]", "EST[R]", "HM[R,M]"]),
    eps=st.floats(0.0, 0.4),
    alpha=st.floats(0.001, 0.2),
    steps=st.integers(1, 3),
)
def test_adversarial_images_stay_in_the_budget_and_in_range(batch, method, eps, alpha, steps):
    model, images, labels = batch
    run(method, model, images, labels, eps=eps, alpha=alpha, pgd_steps=steps)
    x_adv = model.inputs[0]
    if method.startswith("EST"):
        x0 = images
    elif method.startswith("ACT"):
        a, p, n = replay("R", model, images, labels)
        x0 = copies(images, a, p, n)
    else:
        x0 = copies(images, *replay("R", model, images, labels))
    assert x_adv.shape == x0.shape
    assert (x_adv - x0).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_lga_destination_sequence():
    lga = LGADestination(margin=0.2, u=0.2, sync=True)
    seen = []
    for loss in [0.5, 0.1, 0.0, -0.1, 0.15]:
        seen.append(lga.current())
        lga.update(loss)
    assert seen == pytest.approx([-0.2, -0.2, -0.1, 0.0, 0.0])
    restored = LGADestination(margin=0.2, u=0.2, sync=True)
    restored.load_state_dict(lga.state_dict())
    assert restored.current() == pytest.approx(-0.2 * 0.15 / 0.2)


def test_lga_follows_the_previous_adversarial_loss(batch):
    model, images, labels = batch
    cfg = dataclasses.replace(parse_method("HM[S,gLGA]&ICS"), pgd_steps=2, margin=0.3, lga_u=0.25)
    defense = build_defense(cfg, generator=torch.Generator().manual_seed(SEED))
    expected = -0.3  # starts at -margin
    for _ in range(3):
        _, stats = defense(model, images, labels)
        assert stats["lga_destination"] == pytest.approx(expected)
        expected = -0.3 * min(stats["adv_loss"], 0.25) / 0.25  # the adversarial loss, without ICS
    reference = build_defense(dataclasses.replace(cfg, reference=True))
    assert reference(model, images, labels)[1]["lga_destination"] == pytest.approx(-0.2)


def test_act_never_perturbs_the_anchor(batch):
    model, images, labels = batch
    _, _, stats = run("ACT[R]", model, images, labels)
    x = model.inputs[0]
    assert torch.equal(x[:N], images[0::2])
    assert (x[N:] != copies(images, *replay("R", model, images, labels))[N:]).flatten(1).any(1).all()
    assert stats["perturbed_fraction"] == 1.0


def test_est_perturbs_every_image(batch):
    model, images, labels = batch
    _, _, stats = run("EST[R]", model, images, labels)
    assert (model.inputs[0] != images).flatten(1).any(1).all()
    assert stats["perturbed_fraction"] == 1.0


def test_ics_is_zero_when_the_adversarial_anchor_is_the_clean_anchor(batch):
    model, images, labels = batch
    _, loss, stats = run("HM[R,-2]&ICS", model, images, labels)  # nothing is below -2: no triplet moves
    assert stats["perturbed_fraction"] == 0.0
    assert stats["ics_loss"] == 0.0 and stats["loss"] == stats["adv_loss"]
    a, p = torch.randn(5, 8), torch.randn(5, 8)
    assert float(ics_loss(a, a, a + p)) == 0.0


@pytest.mark.parametrize("method", ["N/A[R]", "EST[R]", "ACT[R]", "HM[S,gLGA]&ICS", "HM[R,2]", "HM[S,gB(M)]"])
def test_one_training_forward_and_no_attack_gradients(batch, method):
    model, images, labels = batch
    defense, loss, stats = run(method, model, images, labels)
    assert len(model.inputs) == 1  # PGD and mining bypass the (DDP) wrapper
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert stats["loss"] == pytest.approx(float(loss.detach()))
    assert defense.paper_cost() == (1 if method.startswith("N/A") else 5)
    assert stats["image_passes"] >= 2 * N


def test_reference_mode_quirks(batch):
    model, images, labels = batch
    act = build_defense(dataclasses.replace(parse_method("ACT[M]"), reference=True))
    assert isinstance(act, AntiCollapse) and act.miner.margin == 1.0 and act.miner.reference
    assert build_defense(parse_method("ACT[M]")).miner.margin == 0.2
    model.module.arch = "c2f2"
    minmax = build_defense(dataclasses.replace(parse_method("HM[M,2]"), reference=True))
    assert minmax.miner.margin == 1.0 and build_defense(parse_method("HM[M,2]")).miner.margin == 0.2
    assert build_defense(dataclasses.replace(parse_method("HM[M,gLGA]"), reference=True)).miner.margin == 0.2
    _, stats = minmax(model, images, labels)
    assert stats["pgd_steps"] == 7 and minmax.paper_cost() == 8


@pytest.mark.parametrize(
    "cfg",
    [
        DefenseConfig(defense="hm", source="S"),
        DefenseConfig(defense="hm", source="S", destination="2.5"),
        DefenseConfig(defense="hm", source="S", destination="boost:nope"),
        DefenseConfig(defense="act", ics=0.5),
        DefenseConfig(defense="est", pgd_steps=0),
        DefenseConfig(defense="magic"),
        DefenseConfig(source="Q"),
    ],
)
def test_bad_configs_are_user_errors(cfg):
    with pytest.raises(UserError):
        build_defense(cfg)


def test_auto_precision_uses_bf16_only_where_it_was_shown_safe(auto_precision_as) -> None:
    cpu = torch.device("cpu")
    assert build_defense(parse_method("HM[S,gLGA]&ICS")).precision(cpu) == auto_precision_as
    assert build_defense(parse_method("ACT[R]")).precision(cpu) == auto_precision_as
    assert build_defense(parse_method("EST[R]")).precision(cpu) == "fp32"
    assert build_defense(dataclasses.replace(parse_method("ACT[R]"), reference=True)).precision(cpu) == "fp32"
    assert build_defense(dataclasses.replace(parse_method("EST[R]"), precision="bf16")).precision(cpu) == "bf16"
    assert build_defense(dataclasses.replace(parse_method("ACT[R]"), precision="fp32")).precision(cpu) == "fp32"


def test_auto_precision_follows_the_hardware_unless_forced(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.delenv(AUTO_PRECISION_VARIABLE, raising=False)
    assert auto_precision(cpu) == ("bf16" if bf16_is_fast(cpu) else "fp32")
    monkeypatch.setenv(AUTO_PRECISION_VARIABLE, "fp16")
    with pytest.raises(UserError, match="RR_AUTO_PRECISION must be fp32 or bf16, not 'fp16'"):
        auto_precision(cpu)


def test_a_random_start_moves_only_triplets_the_adversary_attacks(batch):
    """+RS: with step size 0 the adversary's images are its random start, inside the ball; settled triplets stay clean."""
    model, images, labels = batch
    eps = 0.05
    _, _, stats = run("ACT[R]+RS", model, images, labels, alpha=0.0, pgd_steps=2, eps=eps)
    x0 = copies(images, *replay("R", model, images, labels))[N:]
    moved = model.inputs[0][N:]
    assert (moved != x0).flatten(1).any(1).all() and (moved - x0).abs().max() <= eps + 1e-6
    _, _, stats = run("HM[R,-2]+RS", model, images, labels, eps=eps)  # nothing is below -2: no triplet moves
    assert stats["perturbed_fraction"] == 0.0 and torch.equal(model.inputs[0], copies(images, *replay("R", model, images, labels)))


def test_the_apgd_adversary_searches_the_whole_ball_with_all_its_steps(batch):
    """+APGD: the first step is 2 eps, so a fixed-step adversary of tiny alpha stays near the clean images while APGD
    reaches the edge of the ball, and it takes all eta steps (no early stop)."""
    model, images, labels = batch
    eps = 0.1
    _, _, fixed = run("HM[R,1.5]", model, images, labels, alpha=1e-3, pgd_steps=4, eps=eps)
    reach = (model.inputs[0] - copies(images, *replay("R", model, images, labels))).abs().amax()
    assert reach <= 4 * 1e-3 + 1e-6
    _, _, stats = run("HM[R,1.5]+APGD", model, images, labels, alpha=1e-3, pgd_steps=4, eps=eps)
    reach = (model.inputs[0] - copies(images, *replay("R", model, images, labels))).abs().amax()
    assert reach == pytest.approx(eps, abs=1e-6) and stats["pgd_steps"] == 4


def test_full_steps_turn_off_hms_early_stop(batch):
    model, images, labels = batch
    assert run("HM[R,1.5]+FULL", model, images, labels, pgd_steps=8, eps=0.0)[2]["pgd_steps"] == 8
