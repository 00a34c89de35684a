"""`evaluate` and `report` end to end through the root command, on two tiny trained runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from retrieval.robustness.ers import ATTACK_KEYS, ers, ers_normalize
from serve.cli import main
from tests.support.training_runs import write_folder, write_idx

TINY = ["--batch-pairs", "8", "--train-subset", "32", "--val-subset", "16", "--device", "cpu", "--num-workers", "0",
        "--max-steps", "2", "--pgd-steps", "1"]
EVALUATE = ["--max-queries", "12", "--batch-size", "6", "--steps", "2", "--no-progress", "--device", "cpu"]


def cli(monkeypatch, *args: str) -> int:
    """The console entry point in-process; its exit code."""
    monkeypatch.setattr(sys, "argv", ["robust-retrieval", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """N/A[R] and HM[S,gLGA] trained for two iterations, then evaluated through the CLI."""
    root = tmp_path_factory.mktemp("cli-e2e")
    data = write_idx(root / "data")
    runs = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for method in ("N/A[R]", "HM[S,gLGA]"):
            out = root / method.replace("/", "").replace("[", "-").replace(",", "-").strip("]")
            assert cli(monkeypatch, "train", "--out", str(out), "--dataset", "mnist", "--data-root", str(data),
                       "--method", method, *TINY) == 0
            assert cli(monkeypatch, "evaluate", str(out), *EVALUATE) == 0
            runs[method] = out
    return runs


@pytest.mark.slow
def test_evaluate_writes_every_attack_and_a_consistent_ers(runs):
    for method, run in runs.items():
        report = json.loads((run / "robustness.json").read_text())
        assert report["method"] == method
        assert set(report["attacks"]) == set(ATTACK_KEYS)
        assert report["config"]["queries"] == 12 and report["config"]["steps"] == 2
        assert report["normalized"] == pytest.approx(ers_normalize(report["attacks"]))
        assert report["ERS"] == pytest.approx(ers(report["attacks"]))
        assert 0 <= report["benign"]["R@1"] <= 100 and report["attacks"]["ES:D"] >= 0  # table units
        assert method in (run / "robustness.md").read_text()


@pytest.mark.slow
def test_report_gathers_the_runs_into_one_table_and_plots(runs, monkeypatch, capsys, tmp_path):
    out = tmp_path / "report"
    assert cli(monkeypatch, "report", *map(str, runs.values()), "-o", str(out)) == 0, capsys.readouterr().err
    rows = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in rows] == list(runs)
    for row, run in zip(rows, runs.values()):
        evaluated = json.loads((run / "robustness.json").read_text())
        assert row["ERS"] == pytest.approx(evaluated["ERS"])
        assert row["cost"] == json.loads((run / "metrics.json").read_text())["paper_cost"]
    table = (out / "report.md").read_text()
    assert all(f"| {m} |" in table for m in runs)
    for name in ("ers_vs_cost.png", "r1_vs_ers.png", *(f"attacks_{run.name}.png" for run in runs.values())):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_a_run_without_its_files_is_one_error_line(command, monkeypatch, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [command, str(tmp_path / "empty")] + (["-o", str(tmp_path / "out")] if command == "report" else [])
    code = cli(monkeypatch, *args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err


@pytest.mark.slow
def test_one_evaluate_measures_both_protocols_and_export_carries_them(runs, monkeypatch, tmp_path):
    run = runs["HM[S,gLGA]"]
    out = tmp_path / "measured"
    assert cli(monkeypatch, "evaluate", str(run), *EVALUATE, "--protocols", "rob28,strong", "--out", str(out)) == 0
    published = json.loads((out / "robustness.json").read_text())
    strong = json.loads((out / "robustness-strong.json").read_text())
    assert published["config"]["schedule"] == "fixed" and strong["config"]["schedule"] == "apgd"
    assert strong["config"]["restarts"] == 1 and strong["config"]["query_indices"] == published["config"]["query_indices"]
    assert strong["config"]["passes_per_query"]["QA-"] == 2 * 2  # 2 steps x 2 starts
    summary = json.loads((out / "robustness-summary.json").read_text())
    assert summary["protocols"]["rob28"]["ers"] == pytest.approx(published["ERS"], abs=0.01)
    assert summary["protocols"]["strong"]["ers"] == pytest.approx(strong["ERS"], abs=0.01)
    assert "APGD" in summary["protocols"]["strong"]["attacker"] and summary["queries"] == 12

    copy = tmp_path / "run"  # the run as it would be after evaluating in place
    copy.mkdir()
    for item in run.iterdir():
        if item.is_file():
            (copy / item.name).write_bytes(item.read_bytes())
    (copy / "robustness-summary.json").write_bytes((out / "robustness-summary.json").read_bytes())
    assert cli(monkeypatch, "export", str(copy), "-o", str(tmp_path / "bundle")) == 0
    carried = json.loads((tmp_path / "bundle" / "config.json").read_text())["robustness"]
    assert carried == summary


def test_a_query_sample_of_a_class_sorted_folder_spans_every_class(monkeypatch, tmp_path):
    data = write_folder(tmp_path / "folder", per_class=6)
    run = tmp_path / "run"
    assert cli(monkeypatch, "train", "--out", str(run), "--dataset", "folder", "--data-root", str(data),
               "--method", "N/A[R]", "--batch-pairs", "4", "--max-steps", "1", "--device", "cpu",
               "--num-workers", "0") == 0
    assert cli(monkeypatch, "evaluate", str(run), "--max-queries", "8", "--steps", "1", "--no-progress",
               "--device", "cpu") == 0
    config = json.loads((run / "robustness.json").read_text())["config"]
    labels = [i // 6 for i in config["query_indices"]]  # the folder lists its test images class by class
    assert sorted(set(labels)) == [0, 1, 2, 3] and len(config["query_indices"]) == 8
    assert config["query_sample"].startswith("seeded class-balanced sample")


@pytest.mark.slow
def test_training_records_the_strong_attack_proxy_in_metrics_and_log(runs):
    for run in runs.values():
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0 <= metrics["robust_proxy"] <= 100 and {"robust_QA-", "robust_TMA"} <= set(metrics)
        validations = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
                       if json.loads(line)["kind"] == "val"]
        assert validations and all("robust_proxy" in v for v in validations)


@pytest.mark.parametrize(("protocols", "message"), [
    ("rob99", "unknown protocol 'rob99'; choose from rob28, rob224, strong"),
    ("rob28,rob28", "--protocols needs distinct names"),
])
def test_an_unknown_or_repeated_protocol_is_one_error_line(runs, monkeypatch, capsys, protocols, message):
    code = cli(monkeypatch, "evaluate", str(runs["N/A[R]"]), *EVALUATE, "--protocols", protocols)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0]


def test_the_reference_protocol_has_no_strong_attacker(runs, monkeypatch, capsys):
    code = cli(monkeypatch, "evaluate", str(runs["N/A[R]"]), *EVALUATE, "--strong", "--reference-quirks")
    assert code == 2 and "fixed-step PGD without restarts" in capsys.readouterr().err
