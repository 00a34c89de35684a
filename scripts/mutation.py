"""Mutation score of the algorithm and security modules, with mutmut (not part of CI: it takes hours in full).

    pip install -e '.[mutation]'
    taskset -c 1 python scripts/mutation.py serve/paths.py retrieval/robustness/ers.py      # every mutant of two modules
    taskset -c 1 python scripts/mutation.py retrieval/robustness/pgd.py --sample 60 --seed 1 # a seeded random sample
    python scripts/mutation.py retrieval/robustness/ers.py --exclude tests/retrieval/test_ers_interval.py  # score without a file

Each module is mutated in its own scratch copy of a commit (`--rev`, default HEAD: the measured code is a commit,
never a half-edited working tree) and checked against a fast subset of the suite: the test files listed for it below,
of which mutmut runs, per mutant, only the tests that reach the mutated function, with one worker. `--sample N`
checks a seeded random sample of N mutants per module and reports the score with its 95% Wilson interval.
`--budget-s` bounds each module's run (the whole process group is stopped); a module that runs out of time reports
the mutants it did check.

Only a failing test counts as a kill (pytest exit code 1). Timeouts, crashes, pytest internal or usage errors and
mutants no selected test reaches are reported in their own columns and count against the score: a harness problem
must never look like a kill. Writes benchmarks/results/mutation.json under `--label` (earlier labels are kept); in
the scratch copy `mutmut show NAME` prints a mutant's diff and mutmut.log holds mutmut's output.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from retrieval.atomic import atomic_write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
SCRATCH = Path(os.environ.get("RR_MUTATION_DIR", "/tmp/rr-mutation"))

MODULES: dict[str, tuple[list[str], list[str]]] = {
    # module: (files mutmut mutates, the test files that exercise them; the fast, targeted ones first)
    "training/defenses": (["training/defenses/*.py"],
                          ["tests/training/test_defenses.py", "tests/training/test_method.py"]),
    "training/miners": (["training/miners/*.py"], ["tests/training/test_miners.py"]),
    "training/losses": (["training/losses/*.py"],
                        ["tests/training/test_losses_mutants.py", "tests/training/test_losses.py"]),
    "retrieval/robustness/pgd.py": (["retrieval/robustness/pgd.py"],
                         ["tests/retrieval/test_pgd.py", "tests/retrieval/test_pgd_bf16.py",
                          "tests/retrieval/test_uniform_noise.py", "tests/retrieval/test_attacks.py",
                          "tests/training/test_defenses.py"]),
    "retrieval/attacks": (["retrieval/attacks/*.py"],
                          ["tests/retrieval/test_attacks.py", "tests/retrieval/test_attacks_beat_noise.py"]),
    "retrieval/robustness/ers.py": (["retrieval/robustness/ers.py"],
                         ["tests/retrieval/test_ers_interval.py", "tests/retrieval/test_ers.py"]),
    "retrieval/models/bundle.py": (["retrieval/models/bundle.py"],
                            ["tests/retrieval/test_bundle.py"]),
    # the service's HTTP tests start a service on a trained bundle, about 10 s per mutant: mutmut runs only the tests
    # that reach the mutated function, which for serve/security.py are test_security.py's small apps
    "serve/security.py": (["serve/security.py"], ["tests/serve/test_security.py"]),
    "serve/paths.py": (["serve/paths.py"], ["tests/serve/test_paths.py"]),
}

# mutmut's exit codes (mutmut.stats.status_by_exit_code), grouped so that only a failing test is a kill
KILLED = {1}
SURVIVED = {0}
NOT_COVERED = {5, 33}  # no selected test reaches the mutated function
TIMEOUT = {24, -24, 152, 255, 36}  # over mutmut's CPU-time limit (SIGXCPU)
CRASHED = {-9, -11}  # killed or segfaulted
NOT_CHECKED = {None}
# anything else (pytest internal error 3, usage error 4, interrupted 2, mutmut's "suspicious") is a harness error

GENERATE_ONLY = """
import os
import mutmut.__main__ as mutmut
mutmut.set_mutant_under_test("mutant_generation")
os.makedirs("mutants", exist_ok=True)
mutmut.copy_src_dir()
mutmut.copy_also_copy_files()
mutmut.setup_source_paths()
mutmut.store_lines_covered_by_tests()
mutmut.create_mutants(1)
"""
"""The first step of `mutmut run` (mutmut has no command for it): write the mutants and their .meta files, run none."""


def snapshot(rev: str, work: Path) -> str:
    """Extract commit `rev` into `work`; returns the commit's full hash."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    work.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    return commit


def prepare(module: str, tests: list[str], rev: str) -> tuple[Path, str, list[str]]:
    """A fresh copy of commit `rev` with a setup.cfg pointing mutmut at this module and those of `tests` it has."""
    work = SCRATCH / module.replace("/", "_").removesuffix(".py")
    shutil.rmtree(work, ignore_errors=True)
    commit = snapshot(rev, work)
    tests = [t for t in tests if (work / t).is_file()]
    patterns, _ = MODULES[module]
    lines = ["[mutmut]", "source_paths=", "    training", "    retrieval", "    serve", "only_mutate="]
    lines += [f"    {p}" for p in patterns]
    lines += ["also_copy=", "    conftest.py", "    benchmarks", "pytest_add_cli_args_test_selection="]
    lines += [f"    {t}" for t in tests]
    lines += ["pytest_add_cli_args=", "    -p", "    no:cacheprovider", "    -q",
              "process_isolation=forkserver", "use_git_change_detection=false", "use_setproctitle=false"]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")
    # mutmut hands node ids back to pytest; escaped ones (a parametrize id with a minus sign) would not be found
    pyproject = work / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        "[tool.pytest.ini_options]\n",
        "[tool.pytest.ini_options]\ndisable_test_id_escaping_and_forfeit_all_rights_to_community_support = true\n"))
    return work, commit, tests


def exit_codes(work: Path) -> dict[str, int | None]:
    """Every mutant's recorded pytest exit code (None: not run), from mutmut's .meta files."""
    codes: dict[str, int | None] = {}
    for meta in sorted((work / "mutants").rglob("*.meta")):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def run_mutmut(args: list[str], work: Path, deadline: float) -> int | None:
    """Run mutmut in its own process group (its forked workers included); None when the deadline stopped it."""
    with open(work / "mutmut.log", "ab") as log:
        process = subprocess.Popen([sys.executable, *args], cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            return process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            return None


def wilson(killed: int, checked: int) -> list[float] | None:
    """95% Wilson score interval of the kill rate."""
    if not checked:
        return None
    interval = binomtest(killed, checked).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(interval.low, 3), round(interval.high, 3)]


def run_module(module: str, budget_s: float, exclude: set[str], rev: str, sample: int | None, seed: int) -> dict:
    patterns, tests = MODULES[module]
    work, commit, tests = prepare(module, [t for t in tests if t not in exclude], rev)
    started = time.monotonic()
    deadline = started + budget_s
    chosen: list[str] = []
    if sample is not None:
        generated = run_mutmut(["-c", GENERATE_ONLY], work, deadline)
        names = sorted(exit_codes(work))
        if generated != 0 or not names:
            raise SystemExit(f"error: mutmut could not generate the mutants of {module}; see {work / 'mutmut.log'}")
        chosen = sorted(random.Random(seed).sample(names, min(sample, len(names))))
    exit_code = run_mutmut(["-m", "mutmut", "run", "--max-children", "1", *chosen], work, deadline)
    codes = exit_codes(work)
    measured = {name: codes.get(name) for name in chosen} if sample is not None else codes

    def names_with(group: set) -> list[str]:
        return sorted(name for name, code in measured.items() if code in group)

    groups = {"killed": KILLED, "survived": SURVIVED, "not_covered": NOT_COVERED, "timeout": TIMEOUT,
              "crashed": CRASHED, "not_checked": NOT_CHECKED}
    known = set().union(*groups.values())
    counts = {key: len(names_with(group)) for key, group in groups.items()}
    harness_errors = sorted(name for name, code in measured.items() if code not in known)
    checked = len(measured) - counts["not_checked"]
    return {
        "module": module, "commit": commit, "tests": tests, "excluded": sorted(exclude),
        "sample": sample, "seed": seed if sample is not None else None,
        "finished": exit_code is not None and counts["not_checked"] == 0, "mutmut_exit_code": exit_code,
        "seconds": round(time.monotonic() - started), "mutants": len(codes), "measured": len(measured),
        **counts, "harness_error": len(harness_errors),
        "score": round(counts["killed"] / checked, 3) if checked else None,
        "score_95ci_wilson": wilson(counts["killed"], checked),
        "surviving": names_with(SURVIVED | NOT_COVERED),
        "timeouts_crashes_harness_errors": names_with(TIMEOUT | CRASHED) + harness_errors,
        "scratch": str(work),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES), choices=list(MODULES), metavar="MODULE")
    parser.add_argument("--budget-s", type=float, default=3600, help="Time limit per module (default 1 h).")
    parser.add_argument("--exclude", action="append", default=[], help="A test file to leave out (repeatable).")
    parser.add_argument("--rev", default="HEAD", help="The commit to measure (default HEAD).")
    parser.add_argument("--sample", type=int, help="Check a seeded random sample of this many mutants per module.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of --sample (default 0).")
    parser.add_argument("--label", default="after", help="Name of this measurement in the results file.")
    args = parser.parse_args()
    if args.sample is not None and args.sample < 1:
        parser.error("--sample must be at least 1")
    print(f"{'module':<20} {'mutants':>7} {'checked':>7} {'killed':>6} {'survived':>8} {'uncovered':>9} "
          f"{'timeout':>7} {'crash':>5} {'harness':>7} {'score':>6} {'95% CI':>13}")
    for module in args.modules:
        row = run_module(module, args.budget_s, set(args.exclude), args.rev, args.sample, args.seed)
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        results.setdefault(args.label, {})[module] = row
        atomic_write_json(RESULTS, results)
        checked = row["measured"] - row["not_checked"]
        interval = "-" if row["score_95ci_wilson"] is None else "{:.2f}-{:.2f}".format(*row["score_95ci_wilson"])
        print(f"{module:<20} {row['mutants']:>7} {checked:>7} {row['killed']:>6} {row['survived']:>8} "
              f"{row['not_covered']:>9} {row['timeout']:>7} {row['crashed']:>5} {row['harness_error']:>7} "
              f"{row['score'] if row['score'] is not None else '-':>6} {interval:>13}", flush=True)


if __name__ == "__main__":
    main()
