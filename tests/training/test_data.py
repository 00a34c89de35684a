"""SPC-2 batch plans (docs/method.md#spc-2-batches), the class-balanced subset and the batch loaders."""

from __future__ import annotations

import pytest
import torch

from retrieval.datasets import load_dataset
from retrieval.errors import UserError
from retrieval.sampling import balanced_subset
from tests.support.training_runs import write_folder
from training.data import SPC2Sampler, TrainBatches

LABELS = torch.tensor([0] * 10 + [1] * 7 + [2] * 2 + [3] * 1)


def test_balanced_subset_spreads_over_classes_and_is_seeded() -> None:
    chosen = balanced_subset(LABELS, 12, seed=0)
    assert chosen.unique().numel() == 12 and torch.equal(chosen, chosen.sort().values)
    counts = torch.bincount(LABELS[chosen], minlength=4).tolist()
    assert counts[2:] == [2, 1]  # small classes give everything they have ...
    assert sorted(counts[:2]) == [4, 5]  # ... and the big ones share the rest evenly
    assert torch.equal(chosen, balanced_subset(LABELS, 12, seed=0))
    assert not torch.equal(balanced_subset(LABELS, 8, seed=0), balanced_subset(LABELS, 8, seed=1))


@pytest.mark.parametrize("n", [0, 21])
def test_balanced_subset_rejects_impossible_sizes(n: int) -> None:
    with pytest.raises(UserError, match="train-subset"):
        balanced_subset(LABELS, n, seed=0)


def test_epoch_plan_is_pairs_of_same_class_over_all_anchors() -> None:
    sampler = SPC2Sampler(LABELS, batch_pairs=6, seed=3)
    plan = sampler.epoch(0)
    assert len(plan) == sampler.batches_per_epoch == 4
    assert [len(b) for b in plan] == [12, 12, 12, 4]  # the last batch is partial, as in the reference
    flat = torch.cat(plan)
    anchors, partners = flat[0::2], flat[1::2]
    assert torch.equal(anchors.sort().values, torch.arange(len(LABELS)))  # every anchor exactly once
    assert torch.equal(LABELS[anchors], LABELS[partners])
    assert partners[LABELS[anchors] == 3].tolist() == [19]  # a one-image class pairs the anchor with itself


def test_epoch_plans_are_reproducible_and_differ_between_epochs_and_seeds() -> None:
    a, b = SPC2Sampler(LABELS, 4, seed=0), SPC2Sampler(LABELS, 4, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.epoch(5), b.epoch(5)))
    assert not torch.equal(torch.cat(a.epoch(0)), torch.cat(a.epoch(1)))
    assert not torch.equal(torch.cat(a.epoch(0)), torch.cat(SPC2Sampler(LABELS, 4, seed=1).epoch(0)))


def test_partner_is_uniform_over_the_class_including_the_anchor() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    sampler = SPC2Sampler(labels, 2, seed=0)
    same = [int((flat[0::2] == flat[1::2]).sum()) for flat in (torch.cat(sampler.epoch(e)) for e in range(200))]
    assert 0.4 < sum(same) / (4 * 200) < 0.6  # class of two: the anchor is its own partner half the time


def test_processes_get_disjoint_anchors_and_equal_step_counts() -> None:
    shares = [SPC2Sampler(LABELS, 3, seed=0, rank=r, world_size=3) for r in range(3)]
    plans = [torch.cat(s.epoch(2)) for s in shares]
    anchors = [set(p[0::2].tolist()) for p in plans]
    assert {len(s.epoch(2)) for s in shares} == {2}  # 20 anchors // 3 processes = 6 each, 3 pairs per batch
    assert all(len(a) == 6 for a in anchors) and not (anchors[0] & anchors[1] or anchors[1] & anchors[2])


def test_in_memory_batches_index_the_dataset_tensor() -> None:
    images = torch.rand(20, 1, 4, 4)

    class InMemory(torch.utils.data.Dataset):
        labels = LABELS

        def __len__(self) -> int:
            return len(LABELS)

        def tensors(self) -> torch.Tensor:
            return images

    items = torch.tensor([1, 3, 5, 11, 12, 19])
    batches = TrainBatches(InMemory(), items, torch.device("cpu"), seed=0, num_workers=0)
    plan = SPC2Sampler(LABELS[items], 2, seed=0).epoch(0)
    got = list(batches.iterate(0, plan, start=1))
    assert len(got) == 2
    assert torch.equal(got[0][0], images[items[plan[1]]]) and torch.equal(got[0][1], LABELS[items[plan[1]]])


@pytest.mark.parametrize("size", [28, 224])
def test_folder_batches_are_reproducible_across_workers_and_resume(tmp_path, size: int) -> None:
    root = write_folder(tmp_path, per_class=2, size=size if size == 28 else 256)
    dataset = load_dataset("folder", "train", root=root, image_size=size, channels=1)
    plan = SPC2Sampler(dataset.labels, 2, seed=0).epoch(0)
    inline = list(TrainBatches(dataset, None, torch.device("cpu"), seed=0, num_workers=0).iterate(0, plan))
    workers = list(TrainBatches(dataset, None, torch.device("cpu"), seed=0, num_workers=2).iterate(0, plan, start=2))
    assert [x.shape for x, _ in inline] == [(4, 1, size, size)] * 4
    for (x, y), (xw, yw) in zip(inline[2:], workers):
        assert torch.equal(x, xw) and torch.equal(y, yw)
    assert torch.equal(inline[0][1], dataset.labels[plan[0]])
