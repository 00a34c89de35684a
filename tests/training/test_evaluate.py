"""Loading a trained model for `evaluate` from a run directory or a checkpoint file."""

from __future__ import annotations

import pytest
import torch

from retrieval.errors import UserError
from retrieval.models.loading import load_trained
from retrieval.models import build_model


@pytest.fixture()
def run_dir(tmp_path):
    torch.manual_seed(0)
    model = build_model("c2f2", embedding_dim=32, pretrained=False)
    config = {"model": "c2f2", "embedding_dim": 32, "dataset": "fashion-mnist", "data_root": None}
    torch.save({"model": model.state_dict(), "config": config}, tmp_path / "checkpoint.pt")
    return tmp_path, model


def test_loads_the_same_weights_from_a_directory_or_a_file(run_dir) -> None:
    path, original = run_dir
    x = torch.rand(2, 1, 28, 28)
    for source in (path, path / "checkpoint.pt"):
        trained = load_trained(source)
        model, config = trained.model, trained.config
        assert trained.run_dir == path and config["embedding_dim"] == 32
        with torch.no_grad():
            assert torch.allclose(model.eval()(x), original.eval()(x))


def test_missing_or_foreign_checkpoint_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="no checkpoint"):
        load_trained(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_trained(tmp_path)
    torch.save({"weights": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(UserError, match="not a robust-retrieval checkpoint"):
        load_trained(tmp_path)
