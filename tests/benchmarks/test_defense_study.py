"""The defense study's plan and its skip/resume decisions, on fake run directories (no training, no data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import defense_study as study
from retrieval.robustness.ers import ATTACK_KEYS
from retrieval.errors import UserError


def test_every_profile_plans_the_eight_methods_plus_the_eta_sweep(tmp_path: Path) -> None:
    for profile, base in (("cpu", 8), ("paper", 32), ("smoke", 2)):
        runs = study.plan(profile, tmp_path)
        pairs = [(r.method, r.eta) for r in runs]
        assert pairs[:8] == [("N/A[R]", 0)] + [(m, base) for m in study.METHODS[1:]]
        for method in ("ACT[R]", "HM[S,gLGA]&ICS"):
            assert {eta for m, eta in pairs if m == method} == {base, 2, 4, 8}
        assert len(set(pairs)) == len(pairs) == len({r.directory for r in runs})
        assert all(r.directory.parent == tmp_path / profile for r in runs)


def test_one_budget_for_every_method(tmp_path: Path) -> None:
    runs = study.plan("cpu", tmp_path)
    budget = {(r.config.epochs, r.config.batch_pairs, r.config.train_subset, r.config.seed, r.config.lr) for r in runs}
    assert budget == {(1, 128, 38_400, 0, 1e-3)}
    assert all(r.config.defense.pgd_steps == r.eta for r in runs if r.eta)
    kinds = {r.method: (r.config.defense.defense, r.config.defense.ics) for r in runs}
    assert kinds["N/A[R]"] == ("none", 0.0)
    assert kinds["HM[R,2]"] == ("minmax", 0.0)
    assert kinds["HM[S,gLGA]&ICS"] == ("hm", 0.5)


def test_paper_profile_follows_spec_section_10(tmp_path: Path) -> None:
    cfg = study.plan("paper", tmp_path)[2].config
    assert (cfg.epochs, cfg.batch_pairs, cfg.train_subset, cfg.lr, cfg.weight_decay) == (8, 128, None, 1e-3, 1e-7)
    assert cfg.defense.pgd_steps == 32 and study.PROFILES["paper"].queries is None


def fake_run(run: study.Run, *, metrics: bool, robustness: bool, checkpoint: bool = False) -> None:
    run.directory.mkdir(parents=True)
    (run.directory / "config.json").write_text(json.dumps(run.config.to_dict()))
    if checkpoint:
        (run.directory / "checkpoint.pt").write_bytes(b"")
    if metrics:
        values = {"R@1": 0.8, "R@2": 0.9, "mAP": 0.7, "NMI": 0.6, "paper_cost": run.eta + 1, "train_seconds": 12.5,
                  "steps": 2, "method": run.method}
        (run.directory / "metrics.json").write_text(json.dumps(values))
    if robustness:
        report = {"method": run.method, "benign": {"R@1": 80.0, "R@2": 90.0, "mAP": 70.0, "NMI": 60.0},
                  "attacks": dict.fromkeys(ATTACK_KEYS, 0.5), "ERS": 30.0 + run.eta, "timings": {"total_s": 3.0}}
        (run.directory / "robustness.json").write_text(json.dumps(report))


def test_next_action_skips_finished_evaluates_trained_and_resumes_interrupted(tmp_path: Path) -> None:
    runs = study.plan("smoke", tmp_path)
    fake_run(runs[0], metrics=True, robustness=True, checkpoint=True)
    fake_run(runs[1], metrics=True, robustness=False, checkpoint=True)
    fake_run(runs[2], metrics=False, robustness=False, checkpoint=True)
    fake_run(runs[3], metrics=False, robustness=False)
    actions = [study.next_action(r.directory) for r in runs]
    assert actions[:5] == ["skip", "evaluate", "resume", "train", "train"]


def test_a_run_directory_with_another_configuration_is_refused(tmp_path: Path) -> None:
    run = study.plan("smoke", tmp_path)[1]
    fake_run(run, metrics=False, robustness=False, checkpoint=True)
    study.check_config(run)  # same configuration: fine
    changed = run.config.to_dict() | {"batch_pairs": 64}
    (run.directory / "config.json").write_text(json.dumps(changed))
    with pytest.raises(UserError, match="another configuration"):
        study.check_config(run)


def test_a_finished_study_only_writes_its_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = study.plan("smoke", tmp_path / "runs")
    for run in runs:
        fake_run(run, metrics=True, robustness=True, checkpoint=True)
    monkeypatch.setattr(study, "evaluate_run", lambda *a: pytest.fail("a finished run was evaluated again"))
    records = study.run_study("smoke", tmp_path / "runs", tmp_path / "out", console=study.Console(quiet=True))
    assert [(r["method"], r["eta"]) for r in records] == [(r.method, r.eta) for r in runs]
    first = records[0]
    assert {"method", "eta", "R@1", "ERS", "train_seconds", *ATTACK_KEYS} <= first.keys()
    assert (first["R@1"], first["ERS"], first["cost"], first["train_seconds"]) == (80.0, 30.0, 1, 12.5)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    stem = "defense_study_smoke"
    assert written == [f"{stem}.json", f"{stem}.md", f"{stem}_ers_vs_cost.png", f"{stem}_r1_vs_ers.png"]
    table = (tmp_path / "out" / f"{stem}.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| run"))
    assert header.index("R@1") < header.index("CA+") < header.index("GTT") < header.index("ERS") < header.index("cost")
    assert json.loads((tmp_path / "out" / f"{stem}.json").read_text()) == records
