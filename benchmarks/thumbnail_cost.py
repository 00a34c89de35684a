"""What thumbnails cost the index build: time and bytes, with and without `--no-thumbnails`.

    python benchmarks/thumbnail_cost.py              # 10k Fashion-MNIST test split, 1 thread, 3 builds each

1. The 10k test split through the real `robust-retrieval index` command (in-process), built with and without
   thumbnails: wall seconds (median of --repeats builds), the size of the published generation and of its
   thumbnails files.
2. The 1M synthetic benchmark (benchmarks/index_bench.py) holds vectors, not images, so its thumbnail cost is
   estimated from measured per-item costs times 1M, for two kinds of gallery: 28x28 grey items (per-item cost from
   part 1) and photographs (--photos synthetic 500x375 colour images, the size of CUB / SOP pictures, encoded as
   the index does from the decoded image). The estimate is set next to index_bench.json's 1M figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from retrieval.atomic import atomic_path, atomic_write_json
from retrieval.gallery.generations import resolve_current
from retrieval.gallery.thumbnails import FILES, encode
from serve.cli import app
from training.export import export_bundle
from retrieval.models import build_model

RESULTS = Path(__file__).parent / "results"
MILLION = 1_000_000


def make_bundle(root: Path) -> Path:
    """A C2F2 bundle at the default 512-d embedding (untrained: build cost does not depend on the weights)."""
    torch.manual_seed(0)
    model = build_model("c2f2", pretrained=False).eval()
    with atomic_path(root / "run" / "checkpoint.pt") as ckpt:
        torch.save({"model": model.state_dict(), "config": {"arch": "c2f2", "embedding_dim": 512}}, ckpt)
    return export_bundle(root / "run", root / "bundle").path


def build_10k(bundle: Path, out: Path, thumbnails: bool, threads: int) -> dict:
    flag = "--thumbnails" if thumbnails else "--no-thumbnails"
    args = ["index", "--bundle", str(bundle), "--dataset", "fashion-mnist:test", "-o", str(out), "--threads",
            str(threads), "--index-type", "flat", flag]
    start = time.perf_counter()
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"index failed: {result.output}{result.exception!r}")
    generation = resolve_current(out)
    files = {p.name: p.stat().st_size for p in generation.iterdir()}
    return {"seconds": seconds, "generation_bytes": sum(files.values()),
            "thumbnail_bytes": sum(files.get(name, 0) for name in FILES)}


def measure_10k(bundle: Path, work: Path, repeats: int, threads: int) -> dict:
    rows = {}
    for thumbnails in (False, True):
        runs = [build_10k(bundle, work / f"idx-{thumbnails}-{i}", thumbnails, threads) for i in range(repeats)]
        rows["with" if thumbnails else "without"] = {
            "build_s": round(statistics.median(r["seconds"] for r in runs), 2),
            "build_s_runs": [round(r["seconds"], 2) for r in runs],
            "generation_mb": round(runs[0]["generation_bytes"] / 1e6, 2),
            "thumbnail_mb": round(runs[0]["thumbnail_bytes"] / 1e6, 2),
        }
    n = 10_000
    extra_s = rows["with"]["build_s"] - rows["without"]["build_s"]
    return {"items": n, **rows, "extra_build_s": round(extra_s, 2),
            "extra_build_pct": round(100 * extra_s / rows["without"]["build_s"], 1),
            "bytes_per_item": round(rows["with"]["thumbnail_mb"] * 1e6 / n, 1),
            "extra_us_per_item": round(extra_s / n * 1e6, 1)}


def synthetic_photo(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """Smooth colour regions plus sensor-like noise: compresses like a photograph, unlike pure noise."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def measure_photos(count: int) -> dict:
    rng = np.random.default_rng(0)
    photos = [synthetic_photo(rng) for _ in range(count)]
    encode(photos[0])  # warm-up
    start = time.perf_counter()
    sizes = [len(encode(photo)) for photo in photos]
    seconds = time.perf_counter() - start
    return {"items": count, "source_size": "500x375 RGB", "us_per_item": round(seconds / count * 1e6, 1),
            "bytes_per_item": round(statistics.mean(sizes), 1)}


def estimate_1m(per_item_us: float, per_item_bytes: float, bench: dict | None) -> dict:
    row = {"extra_build_s": round(per_item_us * MILLION / 1e6, 1), "thumbnail_mb": round(per_item_bytes, 1)}
    if bench:
        ivf = next((r for r in bench["indexes"] if r["type"] == "ivf-pq" and r["n"] == MILLION), None)
        if ivf:
            row["ivf_pq_build_with_tuning_s"] = ivf["build_with_tuning_s"]
            row["ivf_pq_index_mb"] = ivf["estimated_mb"]
            row["extra_vs_ivf_pq_build_pct"] = round(100 * row["extra_build_s"] / ivf["build_with_tuning_s"], 1)
            row["thumbnails_vs_ivf_pq_size_pct"] = round(100 * row["thumbnail_mb"] / ivf["estimated_mb"], 1)
        embed = bench.get("embedding", {}).get("onnxruntime_images_per_s")
        if embed:
            row["embedding_s_28x28"] = round(MILLION / embed, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Builds of the 10k index with and without.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--photos", type=int, default=300, help="Synthetic photographs for the per-item cost.")
    parser.add_argument("--out", type=Path, default=RESULTS / "thumbnail_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp))
        split = measure_10k(bundle, Path(tmp), args.repeats, args.threads)
    photos = measure_photos(args.photos)
    bench_path = RESULTS / "index_bench.json"
    bench = json.loads(bench_path.read_text()) if bench_path.exists() else None
    estimates = {
        "28x28 grey (Fashion-MNIST)": estimate_1m(split["extra_us_per_item"], split["bytes_per_item"], bench),
        "photographs (500x375 colour)": estimate_1m(photos["us_per_item"], photos["bytes_per_item"], bench),
    }
    report = {"machine": {"platform": platform.platform(), "threads": args.threads},
              "fashion_mnist_test_10k": split, "photos": photos, "estimate_1m": estimates}

    print(f"10k Fashion-MNIST test split, `index --index-type flat --threads {args.threads}` "
          f"(median of {args.repeats})")
    print(f"{'':16}{'build s':>9}{'generation MB':>15}{'thumbnails MB':>15}")
    for name in ("without", "with"):
        row = split[name]
        print(f"{name + ' thumbnails':16}{row['build_s']:>9.2f}{row['generation_mb']:>15.2f}{row['thumbnail_mb']:>15.2f}")
    print(f"thumbnails add {split['extra_build_s']:.2f} s ({split['extra_build_pct']:.0f}%), "
          f"{split['bytes_per_item']:.0f} bytes per item")
    print(f"\n1M synthetic benchmark, estimated (per-item cost x 1M; photographs: {photos['us_per_item']:.0f} us, "
          f"{photos['bytes_per_item']:.0f} bytes per item)")
    print(f"{'gallery':30}{'extra build s':>14}{'thumbnails MB':>15}{'vs ivf-pq build':>17}{'vs ivf-pq size':>16}")
    for name, row in estimates.items():
        print(f"{name:30}{row['extra_build_s']:>14.0f}{row['thumbnail_mb']:>15.0f}"
              f"{row.get('extra_vs_ivf_pq_build_pct', float('nan')):>16.0f}%"
              f"{row.get('thumbnails_vs_ivf_pq_size_pct', float('nan')):>15.0f}%")
    atomic_write_json(args.out, report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
