"""Queries per second of each ERS attack: C2F2 on the Fashion-MNIST test split, profile rob28.

    python benchmarks/attack_speed.py --max-queries 128 --steps 32

The gallery is the benign embedding of the first --gallery test images (all 10,000 by default, as in the
evaluation); the first --max-queries images are attacked in batches of --batch-size. Each attack is timed over
all its batches, target selection and final measurement included. Weights come from --checkpoint (a run
directory or checkpoint file) or are C2F2's untrained default init (speed does not depend on the weights).
Results go to benchmarks/results/attack_speed.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from retrieval.atomic import atomic_write_json
from retrieval.attacks import ATTACKS
from retrieval.protocol import attack_config
from retrieval.datasets import load_dataset
from retrieval.metrics import embed
from retrieval.seeding import derive_seed
from retrieval.threads import default_threads
from retrieval.models import build_model

OUT = Path(__file__).parent / "results" / "attack_speed.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-queries", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--restarts", type=int, default=0)
    parser.add_argument("--gallery", type=int, default=10_000, help="Gallery size (first N test images).")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.checkpoint is not None:
        from retrieval.models.loading import load_trained

        model = load_trained(args.checkpoint).model
    else:
        torch.manual_seed(0)
        model = build_model("c2f2", pretrained=False)
    model = model.to(device)
    data = load_dataset("fashion-mnist", "test")
    images, labels = data.tensors()[: args.gallery], data.labels[: args.gallery]
    started = time.perf_counter()
    gallery = embed(model, images).to(device)
    embed_s = time.perf_counter() - started

    cfg = attack_config("rob28", steps=args.steps, restarts=args.restarts)
    queries = min(args.max_queries, len(images))
    starts = range(0, queries, args.batch_size)
    rows = {}
    for name, cls in ATTACKS.items():
        attack = cls(gallery, labels.to(device), cfg, torch.Generator())
        tick = time.perf_counter()
        for b, start in enumerate(starts):
            stop = min(start + args.batch_size, queries)
            attack.generator.manual_seed(derive_seed(0, name, b))
            attack(model, images[start:stop].to(device), labels[start:stop].to(device))
        seconds = time.perf_counter() - tick
        rows[name] = {"seconds": seconds, "queries_per_second": queries / seconds}
        print(f"{name:<4} {queries / seconds:8.2f} queries/s  ({seconds:.1f} s for {queries} queries)", flush=True)

    result = {
        "model": "c2f2", "dataset": "fashion-mnist:test", "profile": "rob28", "steps": cfg.steps,
        "restarts": cfg.restarts, "best_iterate": cfg.keep_best, "queries": queries, "batch_size": args.batch_size,
        "gallery_size": len(gallery), "threads": torch.get_num_threads(), "device": str(device),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "load_average_1m": os.getloadavg()[0], "embed_gallery_s": embed_s, "attacks": rows,
        "all_ten_values_queries_per_second": queries / sum(r["seconds"] for r in rows.values()),
    }
    atomic_write_json(args.out, result)
    print(f"all attacks: {result['all_ten_values_queries_per_second']:.2f} queries/s; wrote {args.out}")


if __name__ == "__main__":
    main()
