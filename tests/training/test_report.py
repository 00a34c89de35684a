"""The multi-run report (training.report) built from real `evaluate_robustness` output."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from retrieval.datasets import load_dataset
from retrieval.errors import UserError
from retrieval.robustness import evaluate_robustness
from training.report import COLUMNS, markdown_table, robustness_markdown, write_report


@pytest.fixture(scope="module")
def robustness() -> dict:
    """robustness.json content of a small linear embedder: every attack, and the uniform-noise baseline."""
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist", "test")
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 8))
    return evaluate_robustness(model, data.tensors()[:64], data.labels[:64], profile="rob28", max_queries=16,
                               steps=1, batch_size=16, progress=False, noise_baseline=True)


def test_report_table_and_plots(tmp_path, robustness) -> None:
    for name, method, cost in (("na", "N/A[R]", 1), ("hm", "HM[S,gLGA]&ICS", 9)):
        run = tmp_path / name
        run.mkdir()
        (run / "robustness.json").write_text(json.dumps(robustness))
        (run / "metrics.json").write_text(json.dumps({"method": method, "paper_cost": cost, "train_seconds": 60.0}))
    written = write_report([tmp_path / "na", tmp_path / "hm"], tmp_path / "out")
    names = {p.name for p in written}
    assert {"report.md", "report.json", "ers_vs_cost.png", "r1_vs_ers.png", "attacks_na.png", "attacks_hm.png"} == names
    assert all(p.stat().st_size > 0 for p in written)
    header = (tmp_path / "out" / "report.md").read_text().splitlines()[0]
    assert header == "| " + " | ".join(["run", "method", *COLUMNS]) + " |"
    rows = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["method"] for r in rows] == ["N/A[R]", "HM[S,gLGA]&ICS"] and rows[1]["cost"] == 9
    assert rows[0]["ERS"] == pytest.approx(robustness["ERS"]) and rows[0]["wall_s"] == 60.0


def test_markdown_shows_missing_values_as_dashes(robustness) -> None:
    assert "| – |" in markdown_table([{"run": "r", "method": "m"}])
    assert "uniform noise" in robustness_markdown(robustness, "run")


def test_report_without_evaluation_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="evaluate"):
        write_report([tmp_path], tmp_path / "out")
