"""`robust-retrieval train`: option resolution (presets, method, explicit options), resume and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serve.cli import main
from tests.support.training_runs import write_folder, write_idx
from training.config import PRESETS, PRODUCT_METHOD, build_config
from training.defenses.notation import format_method, parse_method

TINY = ["--batch-pairs", "8", "--train-subset", "32", "--val-subset", "16", "--device", "cpu", "--num-workers", "0"]


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["robust-retrieval", "train", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_model_protocol_then_preset_then_explicit_options() -> None:
    resnet = build_config({"model": "resnet18"}, {})
    assert (resnet.lr, resnet.weight_decay, resnet.batch_pairs, resnet.epochs, resnet.val_every) == (
        1e-5, 4e-4, 56, 75, 5)
    c2f2 = build_config({}, {}, preset="paper")
    assert (c2f2.lr, c2f2.weight_decay, c2f2.batch_pairs, c2f2.epochs, c2f2.defense.pgd_steps) == (
        1e-3, 1e-7, 128, 8, 32)
    quick = build_config({"epochs": 3}, {}, preset="quick")
    assert (quick.dataset, quick.device, quick.epochs, quick.max_steps, quick.time_budget, quick.defense.pgd_steps) == (
        "fashion-mnist", "cpu", 3, 700, None, 8)
    assert quick.defense.schedule == "apgd"  # the product's method: eta 8 is enough for the APGD adversary
    standard = build_config({}, {}, preset="standard")
    assert (standard.max_steps, standard.checkpoint_every, standard.time_budget, standard.defense.pgd_steps) == (
        3000, 100, None, 8)


@pytest.mark.parametrize("preset", [None, "quick", "standard", "paper"])
def test_without_a_method_train_trains_the_products_method(preset) -> None:
    assert format_method(build_config({}, {}, preset=preset).defense) == PRODUCT_METHOD
    assert build_config({}, {"defense": "act"}, preset=preset).defense.defense == "act"


def test_method_sets_the_defense_and_explicit_defense_options_win() -> None:
    cfg = build_config({}, {"ics": 0.05, "pgd_steps": 4}, preset="quick", method=parse_method("HM[S,gLGA]&ICS"))
    d = cfg.defense
    assert (d.defense, d.source, d.destination, d.ics, d.pgd_steps) == ("hm", "softhard", "lga", 0.05, 4)


@pytest.mark.slow
def test_train_then_resume_through_the_cli(monkeypatch, capsys, tmp_path) -> None:
    data, out = write_idx(tmp_path / "data"), tmp_path / "run"
    common = ["--out", str(out), "--dataset", "mnist", "--data-root", str(data), *TINY]
    code, stdout, _ = run_cli(monkeypatch, capsys, *common, "--method", "HM[S,gLGA]&ICS", "--pgd-steps", "1",
                              "--max-steps", "2")
    assert code == 0, stdout
    config = json.loads((out / "config.json").read_text())
    defense = config["defense"]
    assert (defense["defense"], defense["destination"], defense["ics"], defense["pgd_steps"]) == ("hm", "lga", 0.5, 1)
    assert json.loads((out / "metrics.json").read_text())["method"] == "HM[S,gLGA]&ICS"

    code, _, _ = run_cli(monkeypatch, capsys, "--out", str(out), "--resume", "--max-steps", "3")
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3

    code, _, err = run_cli(monkeypatch, capsys, "--out", str(out), "--resume", "--lr", "0.1")
    assert code == 2 and err.startswith("error: --lr cannot change on --resume")


def _no_idx_files(root: Path) -> list[str]:
    root.mkdir()
    return ["--dataset", "mnist", "--data-root", str(root)]


def _empty_class(root: Path) -> list[str]:
    write_folder(root)
    (root / "train" / "class9").mkdir()
    return ["--dataset", "folder", "--data-root", str(root)]


def _corrupt_image(root: Path) -> list[str]:
    write_folder(root, per_class=3)
    (root / "train" / "class1" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return ["--dataset", "folder", "--data-root", str(root), "--num-workers", "1", "--train-subset", "13"]


def _truncated_checkpoint(root: Path) -> list[str]:
    root.mkdir()
    stored = build_config({"out": str(root), "batch_pairs": 8, "train_subset": 32, "val_subset": 16}, {})  # = TINY
    (root / "config.json").write_text(json.dumps(stored.to_dict()))
    (root / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    return ["--resume", "--out", str(root)]


BAD_INPUT = {
    "unknown model": (lambda root: ["--model", "foo"], "--model 'foo' is not one of"),
    "unknown miner": (lambda root: ["--miner", "foo"], "unknown source miner 'foo'"),
    "unknown device": (lambda root: ["--device", "tpu"], "--device 'tpu'"),
    "unknown defense": (lambda root: ["--defense", "magic"], "unknown defense 'magic'"),
    "unknown preset": (lambda root: ["--preset", "fast"], "--preset 'fast'"),
    "missing dataset files": (_no_idx_files, "not found in"),
    "empty class folder": (_empty_class, "class folder has no images"),
    "corrupt image": (_corrupt_image, "0.png: "),
    "truncated checkpoint": (_truncated_checkpoint, "is truncated or corrupt"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, case: str) -> None:
    make_args, message = BAD_INPUT[case]
    args = ["--out", str(tmp_path / "run"), *TINY, *make_args(tmp_path / "root")]  # a later --out wins
    code, _, err = run_cli(monkeypatch, capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


@pytest.mark.slow
def test_console_script_reports_bad_options_in_one_line(tmp_path) -> None:
    script = Path(sys.executable).with_name("robust-retrieval")
    done = subprocess.run([str(script), "train", "--out", str(tmp_path / "r"), "--model", "foo"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --model 'foo' is not one of: c2f2, resnet18"]


def test_a_method_can_say_the_default_over_a_preset(monkeypatch) -> None:
    monkeypatch.setitem(PRESETS, "hardened", {"defense": {"defense": "act", "source": "softhard", "pgd_steps": 4}})
    cfg = build_config({}, {}, preset="hardened", method=parse_method("N/A[R]"))
    assert (cfg.defense.defense, cfg.defense.source, cfg.defense.pgd_steps) == ("none", "random", 4)
