"""Every attack must beat uniform noise of the same budget on the values it reports (same targets, same seed):
an attack whose objective points the wrong way can still move its values a little, but not past noise."""

from __future__ import annotations

import pytest
import torch

from retrieval.attacks import ATTACKS, MEASURES, get_attack
from retrieval.protocol import attack_config
from test_attacks import QUERIES, data, gallery, model  # noqa: F401  (module-scoped fixtures)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_beats_uniform_noise_of_the_same_budget(name, model, data, gallery):
    images, labels = data
    cfg = attack_config("rob28", steps=8)
    attack = get_attack(name)(gallery, labels, cfg, torch.Generator().manual_seed(0))
    attacked = attack(model, images[:QUERIES], labels[:QUERIES])
    u = torch.rand(images[:QUERIES].shape, generator=torch.Generator().manual_seed(1))
    noisy = (images[:QUERIES] + (2 * u - 1) * cfg.eps).clamp(0, 1)
    attack.generator.manual_seed(0)  # the same targets as the attack
    noise = attack.measure_perturbed(model, images[:QUERIES], noisy, labels[:QUERIES])
    for key in attacked.values:
        robust_way = 1 if MEASURES[key].higher_is_more_robust else -1
        gain = robust_way * (noise.values[key].float().mean() - attacked.values[key].float().mean())
        assert gain >= 0, key
    main = attack.reports[0]
    robust_way = 1 if MEASURES[main].higher_is_more_robust else -1
    assert robust_way * (noise.values[main].float().mean() - attacked.values[main].float().mean()) > 0, main


def test_tma_targets_are_drawn_from_the_whole_gallery(model, data, gallery):
    images, labels = data
    attack = get_attack("TMA")(gallery, labels, attack_config("rob28", steps=0), torch.Generator().manual_seed(0))
    targets = attack(model, images[:QUERIES], labels[:QUERIES]).targets
    assert int(targets.max()) >= gallery.shape[1]  # not only the first embedding-dim items
