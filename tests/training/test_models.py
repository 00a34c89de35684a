"""Embedding networks: shapes, unit-norm outputs, contract attributes, BatchNorm freezing, offline fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import retrieval.models.resnet18 as resnet18_module
from retrieval.errors import UserError
from retrieval.models import ARCHS, build_model


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_c2f2_embeds_to_unit_sphere_with_contract_attributes() -> None:
    torch.manual_seed(0)
    model = build_model("c2f2", embedding_dim=64)
    out = model(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 64)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    assert (model.arch, model.input_size, model.channels, model.embedding_dim) == ("c2f2", 28, 1, 64)


def test_c2f2_follows_the_spec_layer_sizes() -> None:
    model = build_model("c2f2")
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(32, 1, 5, 5), (32,), (64, 32, 5, 5), (64,), (1024, 3136), (1024,), (512, 1024), (512,)]
    assert not batchnorms(model)


def test_resnet18_embeds_to_unit_sphere_with_contract_attributes() -> None:
    model = build_model("resnet18", embedding_dim=32, pretrained=False).eval()
    out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    assert (model.arch, model.input_size, model.channels, model.embedding_dim) == ("resnet18", 224, 3, 32)
    assert model.backbone.fc.in_features == 512 and model.backbone.fc.out_features == 32


def test_resnet18_applies_imagenet_normalisation_inside_forward() -> None:
    model = build_model("resnet18", embedding_dim=16, pretrained=False).eval()
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = nn.functional.normalize(model.backbone((x - mean) / std))
    torch.testing.assert_close(model(x), expected)
    assert not any(name in ("mean", "std") for name in model.state_dict())


def test_resnet18_frozen_batchnorm_stays_in_eval_mode_and_keeps_statistics() -> None:
    model = build_model("resnet18", embedding_dim=16, pretrained=False).train()
    assert model.training and model.backbone.fc.training
    assert all(not bn.training for bn in batchnorms(model))
    before = batchnorms(model)[0].running_mean.clone()
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    torch.testing.assert_close(batchnorms(model)[0].running_mean, before)
    assert batchnorms(model)[0].weight.grad is not None  # affine BN parameters still train


def test_resnet18_unfrozen_batchnorm_trains_in_batch_mode() -> None:
    model = build_model("resnet18", embedding_dim=16, pretrained=False)
    model.freeze_bn = False
    model.train()
    assert all(bn.training for bn in batchnorms(model))
    before = batchnorms(model)[0].running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert not torch.equal(batchnorms(model)[0].running_mean, before)
    model.eval()
    assert all(not bn.training for bn in batchnorms(model))


def test_resnet18_without_imagenet_weights_warns_and_uses_random_init(monkeypatch: pytest.MonkeyPatch) -> None:
    real = resnet18_module.resnet18

    def offline(*, weights=None):
        if weights is not None:
            raise OSError("no network")
        return real(weights=None)

    monkeypatch.setattr(resnet18_module, "resnet18", offline)
    with pytest.warns(RuntimeWarning, match="random initialisation"):
        model = build_model("resnet18", embedding_dim=8, pretrained=True)
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 8)


def test_build_model_rejects_unknown_arch_listing_valid_ones() -> None:
    with pytest.raises(UserError, match="c2f2, resnet18"):
        build_model("vgg")
    assert set(ARCHS) == {"c2f2", "resnet18"}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["c2f2", "resnet18"])
def test_model_exports_to_onnx_with_matching_outputs(arch: str, tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model(arch, embedding_dim=16, pretrained=False).eval()
    size = 28 if arch == "c2f2" else 64
    x = torch.rand(2, model.channels, size, size)
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model, (x,), str(path), input_names=["pixel_values"], output_names=["embedding"],
        dynamic_axes={"pixel_values": {0: "n"}}, dynamo=False,  # the exporter training/export.py uses
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, model.channels, size, size)  # a different batch size than at export
    (out,) = session.run(None, {"pixel_values": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-5)
