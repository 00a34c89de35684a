"""training.miners: what a caller reads when the batch is not SPC-2 shaped (a mutant emptied the message unseen)."""

from __future__ import annotations

import pytest
import torch

from training.miners import get_miner


@pytest.mark.parametrize(("rows", "labels", "shape"), [(3, 3, "(3, 4)"), (4, 2, "(4, 4)")])
def test_a_bad_batch_is_refused_with_its_shapes(rows, labels, shape):
    with pytest.raises(ValueError) as refused:
        get_miner("R")(torch.randn(rows, 4), torch.arange(labels))
    assert str(refused.value) == f"miner expects 2N embeddings with 2N labels, got {shape} and {labels} labels"
