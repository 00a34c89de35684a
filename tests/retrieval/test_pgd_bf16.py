"""The bf16 PGD path: where bf16 counts as fast (oneDNN's answer on the CPU, the GPU's own on CUDA); on the CPU the
model's forward runs under bfloat16 autocast, the objective and the images stay float32, the budget holds, and the
attack is about as strong as in float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retrieval.distances import normalize
from retrieval.robustness.pgd import PGDConfig, bf16_is_fast, pgd


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, kernel_size=3, stride=2)
        self.fc = nn.Linear(8 * 13 * 13, 16)
        self.fc_dtypes: list[torch.dtype] = []
        self.fc.register_forward_hook(lambda module, args, out: self.fc_dtypes.append(out.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(self.fc(torch.relu(self.conv(x)).flatten(1)))


def attack(precision: str):
    torch.manual_seed(0)
    model, images = Net(), torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        start = model(images)
    target = normalize(torch.randn(6, 16))
    seen: list[torch.dtype] = []

    def pull(z: torch.Tensor) -> torch.Tensor:  # move each embedding onto a random target
        seen.append(z.dtype)
        return (z - target).norm(dim=1)

    model.fc_dtypes.clear()
    cfg = PGDConfig(eps=8 / 255, alpha=2 / 255, steps=6, precision=precision)
    return pgd(model, images, pull, cfg), images, model.fc_dtypes, seen, float((start - target).norm(dim=1).mean())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pgd_precision_reaches_the_model_but_not_the_objective_or_the_images(precision):
    result, images, fc_dtypes, objective_dtypes, _ = attack(precision)
    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    assert fc_dtypes and set(fc_dtypes) == {expected}
    assert set(objective_dtypes) == {torch.float32}
    assert result.x.dtype == torch.float32 and result.objective.dtype == torch.float32
    assert (result.x - images).abs().max() <= 8 / 255 + 1e-6
    assert result.x.min() >= 0 and result.x.max() <= 1


def test_bf16_attack_is_about_as_strong_as_fp32():
    fp32, _, _, _, before = attack("fp32")
    bf16, _, _, _, _ = attack("bf16")
    gain32, gain16 = before - float(fp32.objective.mean()), before - float(bf16.objective.mean())
    assert gain32 > 0.01 and gain16 == pytest.approx(gain32, rel=0.25)


def test_on_cuda_bf16_is_fast_exactly_when_the_gpu_supports_it(monkeypatch):
    """Asks the GPU, not the CPU's oneDNN check (the device is only named here: no GPU needed)."""
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert bf16_is_fast(torch.device("cuda")) is supported


def test_bf16_is_fast_on_the_cpu_exactly_when_onednn_has_bf16_and_never_elsewhere_without_cuda():
    assert bf16_is_fast(torch.device("cpu")) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert bf16_is_fast(torch.device("meta")) is False
