"""The multi-run report (training.report): from real `evaluate_robustness` output, and from hand-written records
under both protocols (the published attacker's robustness.json, the strong attacker's robustness-strong.json)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from retrieval.datasets import load_dataset
from retrieval.robustness.ers import ATTACK_KEYS, ers, ers_normalize
from retrieval.errors import UserError
from retrieval.robustness.evaluation import evaluate_robustness
from training.report import (COLUMNS, attack_scores, load_run, markdown_table, robustness_markdown, scatter_series,
                             write_report)

RAW = dict(zip(ATTACK_KEYS, (15.5, 37.7, 16.6, 30.9, 0.753, 0.506, 17.9, 16.7, 27.3, 2.9)))
"""docs/method.md's ERS example (ERS 36.0): a published-protocol evaluation."""
RAW_STRONG = dict(zip(ATTACK_KEYS, (8.0, 70.0, 9.0, 65.0, 0.9, 0.8, 5.0, 4.0, 10.0, 1.0)))
"""The same model under the strong attacker: every attack gets further."""
PROTOCOL = "rob28 eps 77/255, alpha 3/255, 32 steps x 1 start(s), best iterate"
STRONG_PROTOCOL = "rob28 eps 77/255, APGD 100 steps x 2 start(s), best iterate"


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
    (tmp_path / "hm" / "robustness-strong.json").write_text(json.dumps(robustness))  # a real record's keys
    written = write_report([tmp_path / "na", tmp_path / "hm"], tmp_path / "out")
    names = {p.name for p in written}
    assert {"report.md", "report.json", "ers_vs_cost.png", "r1_vs_ers.png", "attacks_na.png", "attacks_hm.png"} == names
    assert all(p.stat().st_size > 0 for p in written)
    header = (tmp_path / "out" / "report.md").read_text().splitlines()[0]
    assert header == "| " + " | ".join(["run", "method", *COLUMNS]) + " |"
    rows = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["method"] for r in rows] == ["N/A[R]", "HM[S,gLGA]&ICS"] and rows[1]["cost"] == 9
    assert rows[0]["ERS"] == pytest.approx(robustness["ERS"]) and rows[0]["wall_s"] == 60.0
    assert rows[0]["ERS strong"] is None and rows[1]["ERS strong"] == pytest.approx(robustness["ERS"])


def test_markdown_shows_missing_values_as_dashes(robustness) -> None:
    assert "| – |" in markdown_table([{"run": "r", "method": "m"}])
    assert "uniform noise" in robustness_markdown(robustness, "run")


def test_report_without_evaluation_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="evaluate"):
        write_report([tmp_path], tmp_path / "out")


def record(attacks: dict[str, float], protocol: str) -> dict:
    """The parts of an `evaluate` record that report reads."""
    return {"method": "HM[S,gLGA]&ICS", "profile": "rob28", "protocol": protocol,
            "benign": {"R@1": 85.0, "R@2": 90.0, "mAP": 60.0, "NMI": 70.0},
            "attacks": attacks, "normalized": ers_normalize(attacks), "ERS": ers(attacks)}


@pytest.fixture
def runs(tmp_path) -> list:
    """Three runs: evaluated under both protocols, under the published one only, under the strong one only."""
    published = {"robustness.json": record(RAW, PROTOCOL)}
    strong = {"robustness-strong.json": record(RAW_STRONG, STRONG_PROTOCOL)}
    files = {"both": published | strong, "published": published, "strong": strong}
    for name, records in files.items():
        (tmp_path / name).mkdir()
        for file, content in records.items():
            (tmp_path / name / file).write_text(json.dumps(content))
        (tmp_path / name / "metrics.json").write_text(json.dumps({"paper_cost": 9, "train_seconds": 60.0}))
    return [tmp_path / name for name in files]


def test_the_table_shows_strong_ers_beside_ers_with_both_protocols(tmp_path, runs) -> None:
    write_report(runs, tmp_path / "out")
    lines = (tmp_path / "out" / "report.md").read_text().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[head.index("ERS") + 1] == "ERS strong"
    cells = {line.split("|")[1].strip(): dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
             for line in lines[2:5]}
    assert (cells["both"]["ERS"], cells["both"]["ERS strong"]) == (f"{ers(RAW):.1f}", f"{ers(RAW_STRONG):.1f}")
    assert (cells["published"]["ERS"], cells["published"]["ERS strong"]) == (f"{ers(RAW):.1f}", "–")
    assert (cells["strong"]["ERS"], cells["strong"]["ERS strong"]) == ("–", f"{ers(RAW_STRONG):.1f}")
    assert cells["strong"]["R@1"] == "85.0"  # benign values come from whichever record exists
    assert f"protocol (ERS): {PROTOCOL}" in lines and f"protocol (ERS strong): {STRONG_PROTOCOL}" in lines

    rows = {r["run"]: r for r in json.loads((tmp_path / "out" / "report.json").read_text())}
    assert rows["both"]["ERS"] == pytest.approx(ers(RAW)) and rows["both"]["protocol"] == PROTOCOL
    assert rows["both"]["ERS strong"] == pytest.approx(ers(RAW_STRONG))
    assert rows["both"]["protocol strong"] == STRONG_PROTOCOL and rows["published"]["ERS strong"] is None
    assert rows["both"]["CA-"] == RAW["CA-"]  # the attack columns stay the published protocol's raw values


def test_attack_bars_are_the_normalised_scores_and_ers_per_protocol(runs) -> None:
    bars = attack_scores(load_run(runs[0]))
    assert list(bars) == ["rob28", "strong"]
    for name, raw in (("rob28", RAW), ("strong", RAW_STRONG)):
        assert bars[name] == pytest.approx([*ers_normalize(raw).values(), ers(raw)])
        assert sum(bars[name][:10]) / 10 == pytest.approx(bars[name][10])  # ERS is the mean of the bars
    assert bars["rob28"][1] == pytest.approx(100 - RAW["CA-"])  # CA- raw 37.7 (a high CA- is bad) plots as 62.3
    assert list(attack_scores(load_run(runs[1]))) == ["rob28"]
    assert list(attack_scores(load_run(runs[2]))) == ["strong"]


def test_tradeoff_plots_add_the_strong_ers_as_a_second_series(runs) -> None:
    rows = [load_run(r) for r in runs]
    for x_key, y_key in (("cost", "ERS"), ("ERS", "R@1")):
        series = {s["strong"]: s for s in scatter_series(rows, x_key, y_key)}
        ers_axis = "y" if y_key == "ERS" else "x"
        assert sorted(series[False][ers_axis]) == pytest.approx([ers(RAW)] * 2)  # "both" and "published"
        assert sorted(series[True][ers_axis]) == pytest.approx([ers(RAW_STRONG)] * 2)  # "both" and "strong"
        assert series[True]["label"] == "HM[S,gLGA]&ICS, strong attacker"
