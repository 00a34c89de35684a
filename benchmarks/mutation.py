"""Mutation score of the algorithm and security modules, with mutmut (not part of CI: it takes hours in full).

    pip install -e '.[mutation]'
    python benchmarks/mutation.py                         # every module, one after another
    python benchmarks/mutation.py retrieval/ers.py --budget-s 600 --exclude tests/training/test_pinned_behaviour.py

Each module is mutated in its own scratch copy of the working tree (so the checkout never sees a `mutants/`
directory) and checked against a fast subset of the suite: the test files listed for it below, of which mutmut runs,
per mutant, only the tests that reach the mutated function. `--budget-s` bounds each module's run; a module that runs
out of time reports the mutants it did check. `--exclude` drops test files, to measure the score before they were
written. Prints a table and writes benchmarks/results/mutation.json (per module: killed, survived, timeouts, not
covered, timed out or crashed, not checked, score = killed / checked, and the surviving mutants' names; `mutmut show NAME` in the scratch
copy prints a mutant's diff).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from retrieval.atomic import atomic_write_json  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
SCRATCH = Path(os.environ.get("RR_MUTATION_DIR", "/tmp/rr-mutation"))

MODULES: dict[str, tuple[list[str], list[str]]] = {
    # module: (files mutmut mutates, the test files that exercise them)
    "training/defenses": (["training/defenses/*.py"],
                          ["tests/training/test_defenses.py", "tests/training/test_pinned_behaviour.py",
                           "tests/training/test_method.py"]),
    "training/miners": (["training/miners/*.py"],
                        ["tests/training/test_miners.py", "tests/training/test_pinned_behaviour.py"]),
    "training/losses": (["training/losses/*.py"], ["tests/training/test_losses.py"]),
    "retrieval/pgd.py": (["retrieval/pgd.py"],
                         ["tests/retrieval/test_pgd_bf16.py", "tests/retrieval/test_pgd_pinned.py",
                          "tests/retrieval/test_attacks.py",
                          "tests/training/test_defenses.py"]),
    "retrieval/attacks": (["retrieval/attacks/*.py"],
                          ["tests/retrieval/test_attacks.py", "tests/retrieval/test_attacks_beat_noise.py"]),
    "retrieval/ers.py": (["retrieval/ers.py"], ["tests/retrieval/test_ers.py", "tests/retrieval/test_ers_interval.py"]),
    "retrieval/bundle.py": (["retrieval/bundle.py"], ["tests/retrieval/test_bundle.py"]),
    "serve/security.py": (["serve/security.py"], ["tests/serve/test_security.py"]),
    "serve/paths.py": (["serve/paths.py"], ["tests/serve/test_paths_pinned.py", "tests/serve/test_security.py"]),
}
KILLED = {"killed", "caught by type check"}
"""mutmut verdicts that mean a test failed on the mutant. Timeouts and crashes are counted apart: a harness problem
(tests that cannot be found, a fork that dies) shows up as those too, so they are not claimed as kills."""


def tracked_files() -> list[str]:
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    return [f for f in listing.splitlines() if (ROOT / f).is_file() and not f.startswith("mutants/")]


def prepare(module: str, tests: list[str]) -> Path:
    """A fresh copy of the working tree with a setup.cfg that points mutmut at this module and these tests."""
    work = SCRATCH / module.replace("/", "_").removesuffix(".py")
    shutil.rmtree(work, ignore_errors=True)
    for name in tracked_files():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
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
    return work


def run_module(module: str, budget_s: float, exclude: set[str]) -> dict:
    patterns, tests = MODULES[module]
    tests = [t for t in tests if t not in exclude]
    work = prepare(module, tests)
    started = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "1"], cwd=work,
                       timeout=budget_s, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finished = True
    except subprocess.TimeoutExpired:
        finished = False
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work,
                             capture_output=True, text=True).stdout
    verdicts = {}
    for line in listing.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            verdicts[name] = status.strip()
    counts = Counter(verdicts.values())
    killed = sum(counts[s] for s in KILLED)
    survived = counts["survived"] + counts["suspicious"]
    uncovered = counts["no tests"]
    crashed = counts["timeout"] + counts["segfault"]
    checked = killed + survived + uncovered + crashed
    return {
        "module": module, "tests": tests, "excluded": sorted(exclude), "finished": finished,
        "seconds": round(time.monotonic() - started), "mutants": len(verdicts),
        "killed": killed, "survived": survived, "not_covered": uncovered, "timeout_or_crash": crashed,
        "not_checked": counts["not checked"], "skipped": counts["skipped"],
        "score": round(killed / checked, 3) if checked else None,
        "surviving": sorted(n for n, s in verdicts.items() if s in ("survived", "suspicious", "no tests")),
        "scratch": str(work),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES), choices=list(MODULES), metavar="MODULE")
    parser.add_argument("--budget-s", type=float, default=3600, help="Time limit per module (default 1 h).")
    parser.add_argument("--exclude", action="append", default=[], help="A test file to leave out (repeatable).")
    parser.add_argument("--label", default="after", help="Name of this measurement in the results file.")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    print(f"{'module':<22} {'mutants':>7} {'killed':>6} {'survived':>8} {'uncovered':>9} {'timeout':>7} {'unchecked':>9} "
          f"{'score':>6}")
    for module in args.modules:
        row = run_module(module, args.budget_s, set(args.exclude))
        results.setdefault(args.label, {})[module] = row
        atomic_write_json(RESULTS, results)
        print(f"{module:<22} {row['mutants']:>7} {row['killed']:>6} {row['survived']:>8} {row['not_covered']:>9} "
              f"{row['timeout_or_crash']:>7} {row['not_checked']:>9} {row['score'] if row['score'] is not None else '-':>6}",
              flush=True)


if __name__ == "__main__":
    main()
