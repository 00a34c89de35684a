"""One input-size protocol: training, evaluation, export and serving treat a model of any side the same way."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn

from retrieval.images import decode_image
from retrieval.protocol import LARGE, SMALL, protocol_for
from retrieval.robustness.evaluation import evaluate_robustness
from serve.probe import default_eps
from serve.settings import Settings
from serve.decoding import DecodePool
from serve.uploads import decode_all, max_pixels
from training.defenses import DefenseConfig, build_defense
from training.export import _bundle_config


class Flat(nn.Module):
    """The smallest embedding model of a given input side."""

    channels, embedding_dim = 1, 8

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(input_size * input_size, self.embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize(("size", "expected"), [(28, SMALL), (48, SMALL), (64, SMALL), (65, LARGE), (224, LARGE)])
def test_training_evaluation_export_and_serving_use_one_protocol(size, expected):
    torch.manual_seed(0)
    model = Flat(size).eval()
    assert protocol_for(size) == expected

    trained_eps, trained_alpha = build_defense(DefenseConfig(defense="est")).budget(model)
    images, labels = torch.rand(6, 1, size, size), torch.tensor([0, 1, 0, 1, 0, 1])
    evaluation = evaluate_robustness(model, images, labels, steps=0, progress=False)
    exported = _bundle_config(model, {"arch": "flat", "defense": DefenseConfig(defense="est").to_dict()}, None)
    undefended = _bundle_config(model, {"arch": "flat", "defense": DefenseConfig(defense="none").to_dict()}, None)
    served = default_eps(SimpleNamespace(bundle=SimpleNamespace(config=undefended, input_size=size)))

    assert (trained_eps, trained_alpha) == (expected.train_eps, expected.train_alpha)
    assert evaluation["profile"] == expected.evaluation.name
    assert evaluation["config"]["eps"] == exported["eps"] == served == trained_eps
    assert undefended["eps"] is None


def test_configured_budget_wins_over_the_protocol_in_training_and_export():
    model = Flat(28)
    cfg = DefenseConfig(defense="est", eps=5 / 255, alpha=2 / 255)
    assert build_defense(cfg).budget(model) == (5 / 255, 2 / 255)
    assert _bundle_config(model, {"arch": "flat", "defense": cfg.to_dict()}, None)["eps"] == 5 / 255


def _banded_png(side: int = 300) -> bytes:
    """Black, with a white band along the top edge that a 256->224-style centre crop cuts off."""
    img = Image.new("L", (side, side))
    img.paste(255, (0, 0, side, side // 20))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def decoder():
    pool = DecodePool(1)
    yield pool
    pool.close()


@pytest.mark.parametrize("size", [48, 64, 65, 224])
def test_gallery_and_upload_decoding_follow_the_protocol(size, tmp_path: Path, decoder):
    expected = protocol_for(size)
    bundle = SimpleNamespace(input_size=size, channels=1, config={})
    settings = Settings(index=tmp_path / "index")
    gallery = decode_image(_banded_png(), size=size, channels=1)
    upload = asyncio.run(decode_all(decoder, [_banded_png()], bundle, settings))[0]
    assert torch.equal(gallery, upload)
    assert bool(gallery[0, 0].mean() > 0.5) is (expected.resize_ratio is None)  # the top row is the band unless cropped away
    assert max_pixels(settings, bundle) == expected.max_pixels


def test_sizes_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        protocol_for(0)
