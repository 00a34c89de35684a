"""What one /probe costs in-process, and where it goes: the attack, the smallest-flip search, the rest.

The service's own probe (serve.probe.run_probe) on the tests' model at the default 512-d embedding over the 10k
Fashion-MNIST test split (flat index; as serve_bench), torch on one thread as a one-core server runs it. Two cases,
each --repeats times: GTT 32 steps at eps 1/255 (the top-1 holds, so the attack alone) and at the default eps (the
undefended model flips, so the smallest-flip search runs after the attack). Reported: wall and CPU ms (median) and
the flip search's trials. With --profile, cProfile's largest cumulative costs of one flipping probe.

With --root, the probe is that checkout's (git worktree add DIR REV), so two revisions compare on one machine:
run both, one after the other, and compare CPU ms (the machine's load moves wall time far more).
Usage: python -m benchmarks.probe_bench [--repeats 5] [--profile] [--root CHECKOUT] [--out FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"attack": 1 / 255, "with flip search": None}
"""eps of each case (None: the probe's default, the bundle's or the profile's)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose probe runs")
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "probe-bench",
                        help="where the 10k gallery is built once and kept")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "probe_bench.json")
    args = parser.parse_args()
    import tests.support  # noqa: F401  (the helpers are this checkout's, whichever checkout --root names)

    sys.path.insert(0, str(args.root.resolve()))
    import torch

    from serve.engine import load_engine
    from serve.probe import ProbeRequest, default_eps, run_probe

    from benchmarks.serve_harness import fashion_10k

    torch.set_num_threads(1)
    art = _gallery(args.workdir, fashion_10k)
    engine = load_engine(art.index, art.bundle, threads=1, with_torch=True)
    image = art.queries[:1]

    def probe(eps: float | None) -> dict:
        req = ProbeRequest(attack="GTT", eps=default_eps(engine) if eps is None else eps, steps=args.steps,
                           schedule="apgd", top_k=10, return_image=False, bisection_steps=min(args.steps, 8),
                           time_limit_s=600, deadline=time.monotonic() + 600)
        return run_probe(engine, image, req).model_dump()

    probe(None)  # warm
    results = {}
    for case, eps in CASES.items():
        walls, cpus, answers = [], [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            answers.append(probe(eps))
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
        results[case] = {"eps_255": round(answers[0]["eps"] * 255, 2), "wall_ms": round(statistics.median(walls), 1),
                         "cpu_ms": round(statistics.median(cpus), 1), "cpu_ms_runs": [round(c, 1) for c in cpus],
                         "top1_changed": sum(a["top1_changed"] for a in answers),
                         "flip_trials": sorted({a["flip"]["trials"] for a in answers}),
                         "min_flip_eps_255": sorted({round(a["flip"]["min_flip_eps"] * 255) for a in answers
                                                     if a["flip"]["min_flip_eps"] is not None})}
    profile = None
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(probe, None)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        profile = text.getvalue()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    revision = subprocess.run(["git", "-C", str(args.root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    print(f"probe_bench: {args.root} ({revision}), GTT {args.steps} steps, 512-d 10k gallery, torch 1 thread; {uptime}")
    print(f"{'case':18} {'eps x255':>8} {'wall ms':>8} {'CPU ms':>8}  CPU ms per run / top-1 changed / flip trials")
    for case, r in results.items():
        print(f"{case:18} {r['eps_255']:8} {r['wall_ms']:8.0f} {r['cpu_ms']:8.0f}  {r['cpu_ms_runs']} / "
              f"{r['top1_changed']} of {args.repeats} / {r['flip_trials']}")
    if profile:
        print(profile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"root": str(args.root), "revision": revision, "uptime": uptime,
                                    "steps": args.steps, "cases": results, "profile": profile}, indent=1))


def _gallery(workdir: Path, build):
    """The 10k artifacts, built on the first run and kept in `workdir` (they take minutes on a busy machine)."""
    from tests.support.artifacts import Artifacts

    marker = workdir / "artifacts.pt"
    if marker.exists():
        import torch

        saved = torch.load(marker, weights_only=False)
        return Artifacts(**saved)
    art = build(workdir)
    import torch

    torch.save(vars(art), marker)
    return art


if __name__ == "__main__":
    main()
