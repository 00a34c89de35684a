"""Behaviour of the training defenses (docs/method.md) on a tiny embedding network and a tiny SPC-2 batch: HM's
early stop and its N/k tolerance, the margin and the reported stats, which embeddings ICS compares, EST's jitter and
reproducibility, LGA's destinations and its average over processes, and the messages of refused methods and configs."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from retrieval.distances import normalize
from retrieval.errors import UserError
from retrieval.robustness.pgd import AUTO_PRECISION_VARIABLE, PGDConfig, auto_precision, bf16_is_fast, pgd
from tests.support.ports import free_port
from training.defenses import build_defense, validate
from training.defenses.act import AntiCollapse
from training.defenses.base import clean_embeddings
from training.defenses.config import DefenseConfig
from training.defenses.destinations import build_destination
from training.defenses.destinations.base import hm_objective
from training.defenses.destinations.lga import LGADestination
from training.defenses.hm import EARLY_STOP_TOL, MinMax
from training.defenses.notation import format_method, grammar, parse_method
from training.losses import hardness, ics_loss
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
    assert isinstance(defense, MinMax) and format_method(defense.cfg) == "HM[R,2]"
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
    from training.defenses.destinations.base import hm_objective

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


@pytest.mark.parametrize("method", ["N/A[R]", "EST[R]", "ACT[R]", "HM[S,gLGA]&ICS", "HM[R,2]", "HM[S,gB(M)]",
                                    "HM[B,gLGA]&ICS+APGD"])
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


class LinearTiny(nn.Module):
    arch, input_size, channels, embedding_dim = "tiny", 28, 1, 8

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, self.embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(self.fc(x.flatten(1)))


def _hm(destination: str = "0"):
    cfg = DefenseConfig(defense="hm", source="random", destination=destination, pgd_steps=3, precision="fp32")
    return build_defense(cfg, generator=torch.Generator().manual_seed(0))


def _perturb(defense, moving: list[bool]):
    """HM.perturb on 3N copies of random images; records the early-stop tolerance PGD was given."""
    torch.manual_seed(0)
    x0 = torch.rand(3 * len(moving), 1, 28, 28)
    given = []
    attack = defense.attack

    def recording(model, x, objective, *, early_stop_tol=None):
        given.append(early_stop_tol)
        return attack(model, x, objective, early_stop_tol=early_stop_tol)

    defense.attack = recording
    out = defense.perturb(LinearTiny(), x0, torch.tensor(moving), torch.zeros(len(moving)))
    return x0, out, given


def test_hm_early_stop_tolerance_is_rescaled_by_n_over_k():
    """PGD sees only the k moving triplets, so its per-triplet mean must settle within 1e-7 * N / k: the rule on
    the whole batch's mean (docs/method.md, HM)."""
    _, _, given = _perturb(_hm(), [True, False, False, True, False, False, False, True])
    assert given == [pytest.approx(EARLY_STOP_TOL * 8 / 3)]
    _, _, given = _perturb(_hm("2"), [True, False, True, True])  # min-max never stops early
    assert given == [None]


def test_hm_with_nothing_moving_costs_nothing():
    x0, (x, steps, passes), given = _perturb(_hm(), [False, False, False])
    assert x is x0 and (steps, passes) == (0, 0) and given == []
    _, (_, steps, passes), _ = _perturb(_hm(), [True, False, False])
    assert passes == steps * 3 and steps >= 1  # each step: one forward+backward of the 3 moving copies


@pytest.mark.parametrize("text", ["lga", "boost:R"])
def test_intended_lga_state_is_shared_across_processes_and_reference_state_is_not(text):
    """The intended LGA averages its running loss over all processes; the reference keeps one per process."""
    def build(reference: bool):
        return build_destination(text, margin=0.2, u=0.2, xi=0.1, reference=reference)

    assert build(reference=False).sync is True
    assert build(reference=True).sync is False


@pytest.mark.parametrize("method", ["ACT[R,M]", "HM[R]"])
def test_a_method_with_the_wrong_brackets_is_refused_quoting_it(method):
    with pytest.raises(UserError) as refused:
        parse_method(method)
    assert str(refused.value) == (f"bad method {method!r} (HM takes [source,destination], the others only [miner]); "
                                  f"grammar: {grammar()}")


@pytest.mark.parametrize("overrides", [{"margin": -0.1}, {"lga_u": 0.0}])
def test_a_negative_margin_or_non_positive_lga_clip_is_refused(overrides):
    with pytest.raises(UserError) as refused:
        validate(DefenseConfig(**overrides))
    assert str(refused.value) == "margin must be >= 0 and the LGA clip u must be > 0"


def test_unknown_methods_and_hm_without_destination_are_user_errors():
    with pytest.raises(UserError) as refused:
        parse_method("XYZ[R]")
    assert str(refused.value) == f"bad method 'XYZ[R]' (unknown method 'XYZ'); grammar: {grammar()}"
    with pytest.raises(UserError) as refused:
        parse_method("ACT[R]&ICS")
    assert str(refused.value) == (f"bad method 'ACT[R]&ICS' (ICS needs an adversarial anchor, i.e. HM); "
                                  f"grammar: {grammar()}")
    with pytest.raises(UserError) as refused:
        format_method(DefenseConfig(defense="hm", destination=None))
    assert str(refused.value) == "HM needs a destination"


def _est(seed: int):
    cfg = DefenseConfig(defense="est", source="random", pgd_steps=2, precision="fp32")
    return build_defense(cfg, generator=torch.Generator().manual_seed(seed))


def test_est_jitter_comes_from_the_defense_generator_not_the_global_one():
    clean = torch.zeros(4, 4000)

    def shift(seed: int, global_seed: int) -> torch.Tensor:
        defense = _est(seed)
        torch.manual_seed(global_seed)
        return defense.shift_objective(clean)(clean)

    assert torch.equal(shift(5, global_seed=1), shift(5, global_seed=2))
    assert not torch.equal(shift(5, global_seed=1), shift(6, global_seed=1))


def test_est_reference_embedding_is_jittered_by_minus_one_zero_or_one_times_1e_7():
    """docs/method.md#est: each coordinate of the reference moves by 1e-7 * {-1, 0, 1}, uniformly. Read off the
    objective at clean embeddings of zero: -||1e-6 - 1e-7 j|| (1e-6 is the pair distance's eps), so the mean of
    (10 - j)^2 over the coordinates is 100 - 20 E[j] + E[j^2] = 100 + 2/3 ({0, 1} would give 90.5, {-2..1} 111.5)."""
    clean = torch.zeros(4, 4000)
    distance = -_est(0).shift_objective(clean)(clean)
    per_coordinate = (distance / 1e-7) ** 2 / clean.shape[1]
    assert float(per_coordinate.mean()) == pytest.approx(100 + 2 / 3, abs=1.5)


class GatedTiny(LinearTiny):
    """Blank images embed to 0 with a zero input gradient, so PGD cannot move them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return normalize(self.fc(flat) * (flat.sum(dim=1, keepdim=True) > 0))


def test_est_counts_a_triplet_as_perturbed_when_any_of_its_images_moved():
    """Only the first positive can move: triplet 0 always has it (as positive), so at least half the triplets count."""
    torch.manual_seed(0)
    images = torch.zeros(4, 1, 28, 28)
    images[1] = torch.rand(1, 28, 28)
    _, stats = _est(0)(GatedTiny(), images, torch.tensor([0, 0, 1, 1]))
    assert stats["perturbed_fraction"] >= 0.5


def _lga_previous_loss_rank(rank: int, port: int, out: Path, reference: bool) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        destination = build_destination("lga", margin=0.2, u=0.2, xi=0.1, reference=reference)
        destination.update([0.1, 0.3][rank])
        (out / f"rank{rank}").write_text(repr(destination.previous))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("reference", "expected"), [(False, [0.2, 0.2]), (True, [0.1, 0.3])])
def test_lga_previous_loss_is_the_mean_over_two_processes(tmp_path, reference, expected):
    """Two gloo processes with adversarial losses 0.1 and 0.3: the intended LGA moves both by their mean (not the
    sum), the reference keeps each process's own."""
    context = mp.start_processes(_lga_previous_loss_rank, args=(free_port(), tmp_path, reference), nprocs=2, join=False,
                                 start_method="fork")
    deadline = time.monotonic() + 60
    while not context.join(timeout=1):
        assert time.monotonic() < deadline, "the two LGA processes did not finish within 60 s"
    assert [float((tmp_path / f"rank{r}").read_text()) for r in (0, 1)] == pytest.approx(expected)


def source_hardness(model, images, labels) -> torch.Tensor:
    a, p, n = replay("R", model, images, labels)
    clean = clean_embeddings(model, images)
    return hardness(clean[a], clean[p], clean[n])


def test_hm_early_stop_ends_pgd_once_every_moving_triplet_reached_its_destination(batch):
    model, images, labels = batch
    h = source_hardness(model, images, labels)
    target = float(f"{float(h.max()) + 0.05:g}")  # every triplet moves, and a short way suffices
    _, _, stats = run(f"HM[R,{target}]", model, images, labels, pgd_steps=40, alpha=0.05)
    x_adv = model.inputs[0]
    reached = hardness(*model.module(x_adv).chunk(3)) >= target
    assert stats["perturbed_fraction"] == 1.0 and reached.all()
    assert stats["pgd_steps"] < 40  # J was 0 twice in a row long before the last step


@pytest.mark.parametrize(("seed", "rank"), [(9, 1), (0, 5), (3, 3)])
def test_settled_triplets_left_out_of_pgd_do_not_change_when_it_stops(batch, seed, rank):
    """Only the k moving triplets of N enter PGD; with the tolerance scaled by N/k they stop at exactly the step the
    full-batch PGD (tolerance 1e-7 on the mean over all N) stops at, and end at the same images. Seed 9 with two
    moving triplets is a case where the unscaled tolerance runs one step longer."""
    model, images, labels = batch
    torch.manual_seed(seed)
    model.module.load_state_dict(Tiny().state_dict())
    target = float(f"{float(source_hardness(model, images, labels).sort().values[rank]):g}")
    _, _, stats = run(f"HM[R,{target}]", model, images, labels, pgd_steps=80, alpha=0.004)
    assert 0 < stats["perturbed_fraction"] < 1
    a, p, n = replay("R", model, images, labels)
    full = pgd(model, copies(images, a, p, n), hm_objective(torch.full((N,), target)),
               PGDConfig(77 / 255, 0.004, 80, early_stop_tol=EARLY_STOP_TOL))
    assert stats["pgd_steps"] == full.steps < 80
    assert torch.allclose(model.inputs[0], full.x, atol=1e-6)


def test_ics_compares_the_clean_anchor_with_its_adversarial_copy_and_the_source_positive(batch):
    model, images, labels = batch
    _, _, stats = run("HM[R,1.5]&ICS", model, images, labels, alpha=0.05)  # anchors move far
    (inputs,) = model.inputs  # the one training forward: [a~; p~; n~; a; p]
    with torch.no_grad():
        adv_anchor, _, _, anchor, positive = model.module(inputs).chunk(5)
    expected = float(ics_loss(anchor, adv_anchor, positive))
    swapped = float(ics_loss(positive, adv_anchor, anchor))
    assert abs(expected - swapped) > 1e-3  # the batch tells the two apart
    assert stats["ics_loss"] == pytest.approx(expected, abs=1e-6)


def _lga_adversarial_loss_rank(rank: int, world: int, port: int, out: str) -> None:
    """One process of a gloo group: two HM[R,gLGA] iterations on its own batch; records its adversarial loss and the
    LGA destination it uses next."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = Tiny()
        torch.manual_seed(100 + rank)
        images = torch.rand(2 * N, 1, 28, 28)
        labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3]).repeat_interleave(2)
        cfg = dataclasses.replace(parse_method("HM[R,gLGA]"), pgd_steps=2, lga_u=2.2, precision="fp32")
        defense = build_defense(cfg, generator=torch.Generator().manual_seed(rank))
        _, first = defense(model, images, labels)
        _, second = defense(model, images, labels)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"adv_loss": first["adv_loss"], "next_destination": second["lga_destination"]}, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="gloo process group on POSIX")
def test_lga_averages_the_adversarial_loss_over_processes(tmp_path):
    """u = 2.2 keeps the losses unclipped, so a sum and a mean over the two processes give different destinations."""
    mp.start_processes(_lga_adversarial_loss_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    mean = sum(r["adv_loss"] for r in records) / 2
    assert records[0]["adv_loss"] != pytest.approx(records[1]["adv_loss"])
    for record in records:
        assert record["next_destination"] == pytest.approx(-0.2 * min(mean, 2.2) / 2.2, rel=1e-6)


def _training_forward(model) -> torch.Tensor:
    """Embeddings of the one training forward the defense made (recorded by the Recorder)."""
    with torch.no_grad():
        return model.module(model.inputs[-1])


@pytest.mark.parametrize("method", ["ACT[R]", "EST[R]", "HM[R,1.5]"])
def test_the_loss_uses_the_configured_margin_and_every_stat_is_reported(batch, method):
    model, images, labels = batch
    _, loss, stats = run(method, model, images, labels, margin=0.35)
    z = _training_forward(model)
    assert {"loss", "adv_loss", "hardness_adv", "pgd_steps", "image_passes", "perturbed_fraction"} <= set(stats)
    if not method.startswith("EST"):  # (EST re-mines the adversarial embeddings after drawing its noise)
        za, zp, zn = z.chunk(3)
        expected = (hardness(za, zp, zn) + 0.35).clamp(min=0).mean()
        assert float(loss.detach()) == pytest.approx(float(expected), abs=1e-5)
        assert stats["hardness_adv"] == pytest.approx(float(hardness(za, zp, zn).mean()), abs=1e-5)
    perturbed = {"ACT": 2 * N, "EST": 2 * N, "HM[": 3 * N}[method[:3]]
    assert stats["image_passes"] == stats["pgd_steps"] * perturbed + len(model.inputs[-1])


def test_est_pushes_embeddings_further_than_noise_of_the_same_budget(batch):
    model, images, labels = batch
    run("EST[R]", model, images, labels, pgd_steps=4, alpha=0.05, eps=0.2)
    with torch.no_grad():
        clean = model.module(images)
        shift = (model.module(model.inputs[-1]) - clean).norm(dim=1).mean()
        noise = (images + (torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.2)
        noise_shift = (model.module(noise.clamp(0, 1)) - clean).norm(dim=1).mean()
    assert shift > 2 * noise_shift


def test_reference_est_makes_its_logging_forward_on_the_clean_batch(batch):
    model, images, labels = batch
    run("EST[R]", model, images, labels, reference=True)
    assert len(model.inputs) == 2 and torch.equal(model.inputs[0], images)


def test_regular_training_mines_with_the_configured_miner_settings_and_seed(batch):
    model, images, labels = batch
    defense, first, _ = run("N/A[M]", model, images, labels, margin=0.35, reference=True)
    assert defense.miner.margin == 0.35 and defense.miner.reference is True
    _, second, _ = run("N/A[M]", model, images, labels, margin=0.35, reference=True)
    assert torch.equal(first, second)  # the seeded generator reaches the miner


def test_boost_destination_adds_xi_times_the_remaining_progress():
    from training.defenses.destinations import build_destination

    clean = torch.nn.functional.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3]).repeat_interleave(2)
    anchors = torch.arange(0, 16, 2)

    def destination(text: str):
        return build_destination(text, margin=0.2, u=0.2, xi=0.1, reference=False,
                                 generator=torch.Generator().manual_seed(5))

    boost, miner = destination("boost:M"), destination("M")
    assert torch.allclose(boost(clean, labels, anchors), miner(clean, labels, anchors))  # loss 2.0: no boost yet
    boost.update(0.05)
    restored = destination("boost:M")
    restored.load_state_dict(boost.state_dict())
    expected = destination("M")(clean, labels, anchors) + 0.1 * (1 - 0.05 / 0.2)
    assert torch.allclose(restored(clean, labels, anchors), expected)
    fresh = destination("boost:M")
    fresh.load_state_dict({})  # an old checkpoint without the key starts from the initial loss
    assert torch.allclose(fresh(clean, labels, anchors), destination("M")(clean, labels, anchors))
