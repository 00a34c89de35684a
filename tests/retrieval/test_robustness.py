"""evaluate_robustness over a small real gallery, and the multi-run report built from its output."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from retrieval.datasets import load_dataset
from retrieval.distances import normalize
from retrieval.errors import UserError
from retrieval.ers import ATTACK_KEYS, ers
from retrieval.report import COLUMNS, markdown_table, robustness_markdown, write_report
from retrieval.robustness import evaluate_robustness


class LinearEmbedder(nn.Module):
    input_size, channels, embedding_dim, arch = 28, 1, 8, "linear"

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(self.fc(x.flatten(1)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    ds = load_dataset("fashion-mnist", "test")
    return LinearEmbedder(), ds.tensors()[:120], ds.labels[:120]


def evaluate(setup, **options):
    model, images, labels = setup
    return evaluate_robustness(model, images, labels, max_queries=30, steps=2, batch_size=16, progress=False, **options)


@pytest.fixture(scope="module")
def report(setup) -> dict:
    return evaluate(setup, noise_baseline=True, seed=5)


def test_report_holds_every_value_and_its_score(report) -> None:
    assert set(report["attacks"]) == set(ATTACK_KEYS) == set(report["normalized"])
    assert report["ERS"] == pytest.approx(ers(report["attacks"]))
    assert report["collapse"] == {"TMA": report["attacks"]["TMA"], "ES:D": report["attacks"]["ES:D"]}
    assert 0 < report["benign"]["R@1"] <= 100
    assert report["config"]["queries"] == 30 and report["config"]["gallery_size"] == 120
    assert set(report["timings"]["attack_s"]) == {"CA+", "CA-", "QA+", "QA-", "TMA", "ES", "LTM", "GTM", "GTT"}
    assert set(report["noise_baseline"]["attacks"]) == set(ATTACK_KEYS)


def test_the_attacks_beat_random_noise_of_the_same_budget(report) -> None:
    attacked, noise = report["attacks"], report["noise_baseline"]["attacks"]
    assert attacked["CA+"] < noise["CA+"] and attacked["QA-"] > noise["QA-"]
    assert attacked["LTM"] <= noise["LTM"] and attacked["GTT"] <= noise["GTT"]


def test_same_seed_repeats_exactly(setup, report) -> None:
    assert evaluate(setup, seed=5)["attacks"] == report["attacks"]


def test_bad_inputs_are_user_errors(setup) -> None:
    model, images, labels = setup
    with pytest.raises(UserError):
        evaluate_robustness(model, images, labels[:10], progress=False)
    with pytest.raises(UserError):
        evaluate(setup, restarts=1, reference_quirks=True)


def test_report_table_and_plots(tmp_path, report) -> None:
    for name, method, cost in (("na", "N/A[R]", 1), ("hm", "HM[S,gLGA]&ICS", 9)):
        run = tmp_path / name
        run.mkdir()
        (run / "robustness.json").write_text(json.dumps(report))
        (run / "metrics.json").write_text(json.dumps({"method": method, "paper_cost": cost, "train_seconds": 60.0}))
    written = write_report([tmp_path / "na", tmp_path / "hm"], tmp_path / "out")
    names = {p.name for p in written}
    assert {"report.md", "report.json", "ers_vs_cost.png", "r1_vs_ers.png", "attacks_na.png", "attacks_hm.png"} == names
    assert all(p.stat().st_size > 0 for p in written)
    header = (tmp_path / "out" / "report.md").read_text().splitlines()[0]
    assert header == "| " + " | ".join(["run", "method", *COLUMNS]) + " |"
    rows = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["method"] for r in rows] == ["N/A[R]", "HM[S,gLGA]&ICS"] and rows[1]["cost"] == 9


def test_markdown_shows_missing_values_as_dashes(report) -> None:
    assert "| – |" in markdown_table([{"run": "r", "method": "m"}])
    assert "uniform noise" in robustness_markdown(report, "run")


def test_report_without_evaluation_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="evaluate"):
        write_report([tmp_path], tmp_path / "out")
