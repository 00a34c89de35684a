"""training.defenses: HM's early-stop tolerance and pass count, where LGA's state is shared, EST's jitter and its
reproducibility, and the messages of refused methods and configs (each a behaviour a sampled mutant of
training/defenses changed without a test noticing)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from retrieval.distances import normalize
from retrieval.errors import UserError
from training.defenses import build_defense
from training.defenses.config import DefenseConfig, validate
from training.defenses.hm import EARLY_STOP_TOL
from training.defenses.lga import build_destination
from training.defenses.notation import format_method, grammar, parse_method


class Tiny(nn.Module):
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
    out = defense.perturb(Tiny(), x0, torch.tensor(moving), torch.zeros(len(moving)))
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


class GatedTiny(Tiny):
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


def _lga_rank(rank: int, port: int, out: Path, reference: bool) -> None:
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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.start_processes(_lga_rank, args=(port, tmp_path, reference), nprocs=2, join=False,
                                 start_method="fork")
    deadline = time.monotonic() + 60
    while not context.join(timeout=1):
        assert time.monotonic() < deadline, "the two LGA processes did not finish within 60 s"
    assert [float((tmp_path / f"rank{r}").read_text()) for r in (0, 1)] == pytest.approx(expected)
