"""SPC-2 miners (docs/method.md#miners): triplet invariants, each miner's rule checked by brute force (the distance-
weighted density term in five dimensions, the semihard band's edges, softhard at its edge), every fallback forced,
clamped distances, and the refusals of a batch that is not SPC-2 shaped and of an unknown miner."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retrieval.datasets import load_dataset
from retrieval.distances import distance_matrix
from retrieval.errors import UserError
from retrieval.models import build_model
from training.losses import hardness, triplet_loss
from training.miners import LETTERS, MINERS, get_miner

ALL = sorted(MINERS)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spc2_batch(pair_labels: list[int], dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random unit embeddings for pairs with the given labels, ordered [a0, p0, a1, p1, ...]."""
    embeddings = F.normalize(torch.randn(2 * len(pair_labels), dim, generator=seeded(seed)), dim=1)
    return embeddings, torch.tensor(pair_labels).repeat_interleave(2)


def one_hot(indices: list[int], dim: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(indices), dim).float()


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("name", ALL)
def test_every_miner_returns_n_valid_triplets(name: str, reference: bool) -> None:
    embeddings, labels = spc2_batch([0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 2, 4])
    a, p, n = get_miner(name, reference=reference, generator=seeded())(embeddings, labels)
    assert all(t.dtype == torch.long and t.shape == (12,) for t in (a, p, n))
    assert torch.equal(a, torch.arange(0, 24, 2))
    assert torch.equal(labels[p], labels[a])
    assert (labels[n] != labels[a]).all()
    if not (name == "softhard" and reference):
        assert (p != a).all()


@pytest.mark.parametrize("name", ALL)
def test_mining_is_reproducible_with_a_seeded_generator(name: str) -> None:
    embeddings, labels = spc2_batch(list(range(8)) * 4)
    first = get_miner(name, generator=seeded(3))(embeddings, labels)
    second = get_miner(name, generator=seeded(3))(embeddings, labels)
    assert all(torch.equal(x, y) for x, y in zip(first, second))


@pytest.mark.parametrize("name", ["random", "semihard", "softhard", "distance"])
def test_stochastic_miners_depend_on_the_seed(name: str) -> None:
    embeddings, labels = spc2_batch(list(range(8)) * 8, dim=3)  # low dim: distance weights are not one-hot
    _, p1, n1 = get_miner(name, generator=seeded(1))(embeddings, labels)
    _, p2, n2 = get_miner(name, generator=seeded(2))(embeddings, labels)
    assert not (torch.equal(p1, p2) and torch.equal(n1, n2))


def test_miner_does_not_track_gradients_of_the_embeddings() -> None:
    embeddings, labels = spc2_batch([0, 1, 0, 1])
    embeddings.requires_grad_(True)
    a, p, n = get_miner("softhard", generator=seeded())(embeddings, labels)
    assert not any(t.requires_grad for t in (a, p, n))


@pytest.mark.parametrize("name", ALL)
def test_single_label_batch_falls_back_to_partner_and_uniform_negative_over_the_batch(name: str) -> None:
    embeddings, labels = spc2_batch([7] * 40)
    a, p, n = get_miner(name, generator=seeded())(embeddings, labels)
    assert torch.equal(p, a + 1)
    assert n.min() >= 0 and n.max() < 80
    assert len(n.unique()) > 10  # spread over the batch, not stuck on one index


def test_random_negatives_cover_every_other_label_image() -> None:
    embeddings, labels = spc2_batch([0, 1, 2])
    miner = get_miner("R", generator=seeded())
    seen = torch.cat([miner(embeddings, labels)[2][:1] for _ in range(200)])
    assert set(seen.tolist()) == {2, 3, 4, 5}


def test_semihard_negatives_are_in_the_margin_band_when_one_exists() -> None:
    embeddings, labels = spc2_batch([0, 1, 2, 3] * 10, dim=4, seed=1)
    a, p, n = get_miner("semihard", margin=0.2, generator=seeded())(embeddings, labels)
    dist = distance_matrix(embeddings)
    different = labels[a][:, None] != labels[None, :]
    d_ap = dist[a, p][:, None]
    band = different & (dist[a] > d_ap) & (dist[a] < d_ap + 0.2)
    assert band.any(dim=1).sum() > 10  # the check below is not vacuous
    d_an = dist[a, n]
    in_band = (d_an > dist[a, p]) & (d_an < dist[a, p] + 0.2)
    assert torch.equal(in_band, band.any(dim=1))  # band when possible, fallback otherwise
    assert (labels[n] != labels[a]).all()


def test_semihard_margin_argument_widens_the_band() -> None:
    embeddings, labels = spc2_batch([0, 1, 2, 3] * 10, dim=4, seed=1)
    dist = distance_matrix(embeddings)
    a, p, n = get_miner("M", margin=1.0, generator=seeded())(embeddings, labels)
    assert (dist[a, n] < dist[a, p] + 1.0).all() and (dist[a, n] >= dist[a, p] + 0.2).any()


def test_softhard_picks_hard_positives_and_hard_negatives() -> None:
    embeddings, labels = spc2_batch([0, 1, 2] * 12, dim=4, seed=2)
    a, p, n = get_miner("S", generator=seeded())(embeddings, labels)
    dist = distance_matrix(embeddings)[a]
    same = labels[a][:, None] == labels[None, :]
    closest_negative = dist.masked_fill(same, 9).min(dim=1).values
    farthest_positive = dist.masked_fill(~same, -1).max(dim=1).values
    rows = torch.arange(len(a))
    has_hard_positive = (same & (dist > closest_negative[:, None])).any(dim=1)
    has_hard_negative = (~same & (dist < farthest_positive[:, None])).any(dim=1)
    assert has_hard_positive.all() and has_hard_negative.all()  # rich batch: no fallback needed here
    assert (dist[rows, p] > closest_negative).all()
    assert (dist[rows, n] < farthest_positive).all()


def lonely_pairs(count: int, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair has its own label and a partner much closer than any other image: no hard positive exists."""
    anchors = one_hot(list(range(count)), dim)
    partners = F.normalize(anchors + 0.05 * one_hot([count] * count, dim), dim=1)
    return torch.stack([anchors, partners], dim=1).reshape(2 * count, dim), torch.arange(count).repeat_interleave(2)


def duplicate_negative_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor e0 with partner e1; a label-1 pair sitting exactly on the anchor (d = 0); a label-2 pair at e2, e3."""
    return one_hot([0, 1, 0, 0, 2, 3], 8), torch.tensor([0, 0, 1, 1, 2, 2])


def test_reference_softhard_may_use_the_anchor_as_its_own_positive() -> None:
    embeddings, labels = lonely_pairs(20)
    a, p, n = get_miner("S", reference=True, generator=seeded())(embeddings, labels)
    assert ((p == a) | (p == a + 1)).all()
    assert (p == a).any() and (p == a + 1).any()
    assert (labels[n] != labels[a]).all()


def test_intended_softhard_never_uses_the_anchor_as_positive() -> None:
    embeddings, labels = lonely_pairs(20)
    for seed in range(5):
        a, p, n = get_miner("S", generator=seeded(seed))(embeddings, labels)
        assert torch.equal(p, a + 1)
        assert (labels[n] != labels[a]).all()


def test_blend_takes_randoms_triplet_for_its_share_of_anchors_and_softhards_for_the_rest() -> None:
    """Each class has two pairs at opposite poles, so Softhard's positive is always the other pair (distance 2, past
    every negative) and Random's is always the partner: the anchors given their partner are the Random share."""
    classes, dim = 200, 64
    poles = F.normalize(torch.randn(classes, dim, generator=seeded(3)), dim=1)
    pair = lambda v: torch.stack([v, F.normalize(v + 0.01 * poles.roll(1, 0), dim=1)], dim=1)  # noqa: E731
    embeddings = torch.stack([pair(poles), pair(-poles)], dim=1).reshape(4 * classes, dim)
    labels = torch.arange(classes).repeat_interleave(4)
    miner = get_miner("B", generator=seeded())
    a, p, n = miner(embeddings, labels)
    partnered = (p == a + 1).float().mean().item()
    assert abs(partnered - miner.random_share) < 0.07, partnered
    other_pair = (p != a + 1) & (p != a)
    assert (labels[p] == labels[a]).all() and (labels[n] != labels[a]).all()
    assert (distance_matrix(embeddings)[a[other_pair], p[other_pair]] > 1.9).all()


def test_hardest_picks_the_closest_negative() -> None:
    embeddings, labels = spc2_batch([0, 1, 2, 3, 4] * 6, dim=8)
    a, p, n = get_miner("H")(embeddings, labels)
    dist = distance_matrix(embeddings)[a]
    expected = dist.masked_fill(labels[a][:, None] == labels[None, :], 9).argmin(dim=1)
    assert torch.equal(n, expected)
    assert torch.equal(p, a + 1)


@pytest.mark.parametrize("reference", [False, True])
def test_hardest_skips_negatives_at_zero_distance(reference: bool) -> None:
    embeddings, labels = duplicate_negative_batch()
    _, _, n = get_miner("H", reference=reference)(embeddings, labels)
    assert n[0] in (4, 5)


def test_distance_weighted_samples_with_inverse_sphere_density() -> None:
    # k = 3 makes the weight 1/d exactly; many identical anchors give independent draws from one distribution.
    def at_distance(d: float) -> torch.Tensor:  # a unit vector at distance d from the north pole (0, 0, 1)
        z = 1 - d**2 / 2
        return torch.tensor([0.0, (1 - z**2) ** 0.5, z])

    u, near, far = at_distance(0.0), at_distance(0.5), at_distance(1.5)
    anchors = 300
    embeddings = torch.cat([u.repeat(2 * anchors, 1), near.repeat(2, 1), far.repeat(2, 1)])
    labels = torch.tensor([0] * 2 * anchors + [1, 1, 2, 2])
    torch.testing.assert_close(distance_matrix(embeddings)[0, -4:], torch.tensor([0.5, 0.5, 1.5, 1.5]))
    _, _, n = get_miner("D", generator=seeded())(embeddings, labels)
    near_share = (n[:anchors] < 2 * anchors + 2).float().mean().item()
    assert abs(near_share - 0.75) < 0.08  # (1/0.5) / (1/0.5 + 1/1.5)
    assert (n[:anchors] >= 2 * anchors).all()


def test_intended_distance_weighted_prefers_a_duplicate_negative() -> None:
    embeddings, labels = duplicate_negative_batch()
    chosen = {get_miner("D", generator=seeded(s))(embeddings, labels)[2][0].item() for s in range(30)}
    assert chosen == {2, 3}


def test_reference_distance_weighted_turns_a_duplicate_negative_into_the_uniform_fallback() -> None:
    embeddings, labels = duplicate_negative_batch()
    chosen = {get_miner("D", reference=True, generator=seeded(s))(embeddings, labels)[2][0].item() for s in range(30)}
    assert chosen & {0, 1}  # same-label images: the whole batch is the candidate set
    assert chosen & {4, 5}


def test_intended_miners_stay_valid_with_duplicate_embeddings() -> None:
    embeddings = F.normalize(torch.randn(2, 32, generator=seeded()), dim=1)[torch.arange(48) % 2]
    labels = torch.arange(24).repeat_interleave(2) % 5
    for name in ALL:
        a, p, n = get_miner(name, generator=seeded())(embeddings, labels)
        assert (labels[n] != labels[a]).all(), name
        assert (labels[p] == labels[a]).all() and (p != a).all(), name


def test_get_miner_accepts_names_and_paper_letters() -> None:
    assert set(LETTERS.values()) == set(MINERS)
    for letter, name in LETTERS.items():
        assert type(get_miner(letter)) is MINERS[name] is type(get_miner(name))
    miner = get_miner("semihard", margin=1.0, reference=True)
    assert (miner.margin, miner.reference) == (1.0, True)


def test_get_miner_rejects_unknown_names_listing_valid_ones() -> None:
    with pytest.raises(UserError, match="S/softhard"):
        get_miner("lifted")


def test_miner_rejects_an_odd_or_mismatched_batch() -> None:
    embeddings, labels = spc2_batch([0, 1])
    with pytest.raises(ValueError):
        get_miner("R")(embeddings[:3], labels[:3])
    with pytest.raises(ValueError):
        get_miner("R")(embeddings, labels[:2])


@pytest.mark.slow
def test_mean_hardness_orders_the_miners_on_a_briefly_trained_c2f2() -> None:
    """Spec 2.2 / 14: E[H] Random < Semihard < Softhard < Hardest, Distance close to Hardest.

    20 Adam steps (lr 1e-3, Random miner, 64-pair SPC-2 batches from 4000 Fashion-MNIST images) already separate
    the miners clearly; hardness is then averaged over 8 batches of 128 pairs.
    """
    data = load_dataset("fashion-mnist", "train")
    images, labels = data.tensors()[:4000], data.labels[:4000]
    by_class = [torch.nonzero(labels == c).flatten() for c in range(10)]
    gen = seeded(0)

    def batch(pairs: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        anchors = torch.randint(len(labels), (pairs,), generator=gen)
        partners = torch.stack([by_class[c][torch.randint(len(by_class[c]), (1,), generator=gen)][0]
                                for c in labels[anchors].tolist()])
        order = torch.stack([anchors, partners], dim=1).flatten()
        return images[order], labels[order]

    torch.manual_seed(0)
    model = build_model("c2f2")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    random_miner = get_miner("R", generator=gen)
    for _ in range(20):
        x, y = batch(64)
        emb = model(x)
        a, p, n = random_miner(emb, y)
        loss = triplet_loss(emb[a], emb[p], emb[n])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    miners = {name: get_miner(name, generator=gen) for name in ("random", "semihard", "softhard", "distance", "hardest")}
    totals = dict.fromkeys(miners, 0.0)
    with torch.no_grad():
        for _ in range(8):
            x, y = batch()
            emb = model(x)
            for name, miner in miners.items():
                a, p, n = miner(emb, y)
                totals[name] += hardness(emb[a], emb[p], emb[n]).mean().item() / 8
    print("mean hardness:", {k: round(v, 4) for k, v in totals.items()})
    assert totals["random"] < totals["semihard"] < totals["softhard"] < totals["hardest"]
    assert totals["softhard"] < totals["distance"]
    assert abs(totals["distance"] - totals["hardest"]) < abs(totals["softhard"] - totals["hardest"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_miners_run_on_cuda_embeddings_with_a_cpu_generator(name: str) -> None:
    embeddings, labels = spc2_batch([0, 1, 2, 3] * 4)
    cpu = get_miner(name, generator=seeded())(embeddings, labels)
    cuda = get_miner(name, generator=seeded())(embeddings.cuda(), labels.cuda())
    assert all(t.device.type == "cuda" for t in cuda)
    assert torch.equal(cuda[0].cpu(), cpu[0])


@pytest.mark.parametrize(("rows", "labels", "shape"), [(3, 3, "(3, 4)"), (4, 2, "(4, 4)")])
def test_a_bad_batch_is_refused_with_its_shapes(rows, labels, shape):
    with pytest.raises(ValueError) as refused:
        get_miner("R")(torch.randn(rows, 4), torch.arange(labels))
    assert str(refused.value) == f"miner expects 2N embeddings with 2N labels, got {shape} and {labels} labels"


def test_intended_distances_are_clamped_and_reference_distances_keep_the_nan():
    """docs/method.md#reference-quirks: the reference takes the sqrt of unclamped squared distances.

    One-dimensional embeddings a and its float32 successor b: each Gram entry is a single correctly rounded product
    (no sum a BLAS could order differently), and for this a the Gram form a^2 + b^2 - 2ab rounds below zero on any CPU."""
    a = torch.tensor(0.7481282949447632)
    b = torch.nextafter(a, torch.tensor(1.0))
    assert float(a * a + b * b - 2 * (a * b)) < 0  # negative by rounding, the case the clamp exists for
    embeddings, anchors = torch.stack([a, b]).reshape(2, 1), torch.tensor([0])
    assert get_miner("R").distances(embeddings, anchors).tolist() == [[0.0, 0.0]]
    assert get_miner("R", reference=True).distances(embeddings, anchors)[0, 1].isnan()


def test_softhard_negative_farther_than_every_positive_is_not_hard():
    """Anchor 0's positive is at 0.8; negatives at 0.85 and 1.5 are both beyond it, so neither is hard and the
    negative falls back to any other-label image."""
    def on_circle(chord: float) -> list[float]:
        angle = 2 * math.asin(chord / 2)
        return [math.cos(angle), math.sin(angle)]

    embeddings = torch.tensor([on_circle(0.0), on_circle(0.8), on_circle(0.85), on_circle(-1.5)])
    labels = torch.tensor([0, 0, 1, 1])
    chosen = {get_miner("S", generator=torch.Generator().manual_seed(s))(embeddings, labels)[2][0].item()
              for s in range(30)}
    assert chosen == {2, 3}


def test_an_unknown_miner_is_refused_listing_letters_and_names():
    with pytest.raises(UserError) as refused:
        get_miner("Q")
    assert str(refused.value) == ("unknown miner 'Q'; choose one of: "
                                  "R/random, M/semihard, S/softhard, D/distance, H/hardest, B/blend")


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
