"""Behaviour that small plausible bugs used to get past: HM's early stop and its N/k tolerance, the density term of
the distance-weighted miner, which embeddings ICS compares, and LGA's average over processes (docs/method.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

from retrieval.robustness.pgd import PGDConfig, pgd
from test_defenses import N, Recorder, Tiny, batch, copies, replay, run  # noqa: F401  (batch is a fixture)
from tests.support.ports import free_port
from training.defenses import build_defense
from training.defenses.base import clean_embeddings
from training.defenses.hm import EARLY_STOP_TOL
from training.defenses.lga import hm_objective
from training.losses import hardness, ics_loss
from training.defenses.notation import parse_method
from training.miners import get_miner


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


def test_distance_weighted_density_term_in_five_dimensions():
    """With k = 5, w(d) = d^-3 / (1 - d^2/4): at d = 1 and d = 1.9 the second factor decides the odds (0.47 : 0.53);
    in 3 dimensions it vanishes, so this is the test that sees its sign."""

    def at_distance(d: float) -> torch.Tensor:  # a unit vector at distance d from e_2, padded to 5 dimensions
        z = 1 - d**2 / 2
        return torch.tensor([0.0, (1 - z**2) ** 0.5, z, 0.0, 0.0])

    def weight(d: float, k: int = 5) -> float:
        return d ** (2 - k) * (1 - d**2 / 4) ** (-(k - 3) / 2)

    anchors = 1500
    u, mid, far = at_distance(0.0), at_distance(1.0), at_distance(1.9)
    embeddings = torch.cat([u.repeat(2 * anchors, 1), mid.repeat(2, 1), far.repeat(2, 1)])
    labels = torch.tensor([0] * 2 * anchors + [1, 1, 2, 2])
    _, _, n = get_miner("D", generator=torch.Generator().manual_seed(0))(embeddings, labels)
    mid_share = (n < 2 * anchors + 2).float().mean().item()
    assert mid_share == pytest.approx(weight(1.0) / (weight(1.0) + weight(1.9)), abs=0.04)


def _lga_rank(rank: int, world: int, port: int, out: str) -> None:
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
    mp.start_processes(_lga_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    mean = sum(r["adv_loss"] for r in records) / 2
    assert records[0]["adv_loss"] != pytest.approx(records[1]["adv_loss"])
    for record in records:
        assert record["next_destination"] == pytest.approx(-0.2 * min(mean, 2.2) / 2.2, rel=1e-6)


def test_semihard_excludes_a_negative_exactly_as_far_as_the_positive():
    """One-hot embeddings make d(a, p) = d(a, n1) = sqrt(2) exactly; n1 is not *farther* than the positive, so only
    n2 (inside the margin band) is semihard."""
    n2 = torch.nn.functional.normalize(torch.tensor([[-0.1, 0.7, 0.7]]), dim=1)[0]
    embeddings = torch.stack([torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), torch.tensor([0.0, 0, 1]),
                              torch.tensor([0.0, 0, 1]), n2, n2])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    miner = get_miner("M", generator=torch.Generator().manual_seed(0))
    picks = {int(miner(embeddings, labels)[2][0]) for _ in range(40)}
    assert picks <= {4, 5}


def test_hardest_falls_back_to_another_label_when_every_negative_is_a_duplicate():
    """Row of anchor 0: both other-label images coincide with it (distance 0, not candidates), so the fallback draws
    among them; the other rows have real candidates. Every negative must carry another label."""
    e0, e1 = torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0])
    embeddings = torch.stack([e0, e1, e0, e0])
    labels = torch.tensor([0, 0, 1, 1])
    miner = get_miner("H", generator=torch.Generator().manual_seed(0))
    for _ in range(30):
        a, _, n = miner(embeddings, labels)
        assert (labels[n] != labels[a]).all()


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
    from training.defenses.lga import build_destination

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
