"""Gallery indexing benchmark: embedding throughput (onnxruntime vs torch eager) and flat / HNSW / IVF-PQ on a large
synthetic gallery (build time, memory, per-query latency p50/p99, recall@10 against exact search).

    python benchmarks/index_bench.py                 # 1M x 512-d gallery, 2 threads
    python benchmarks/index_bench.py --n 100000      # quick check

Synthetic vectors. Uniform noise on a 512-d sphere has no neighbourhood structure, which makes every ANN method look
far worse than on real embeddings. Trained embeddings are clustered (classes) and have a low intrinsic dimension, so
the generator draws a Gaussian mixture in a low-dimensional latent space and embeds it:

    z = mu_c + 0.6 * u,   mu_c, u ~ N(0, I_32),  c uniform over n/1000 clusters
    x = normalize(W z + 0.05 * e),   W: random 512x32 with orthonormal columns,  e ~ N(0, I_512)

This is kinder to IVF than real galleries are: with n/1000 clusters and nlist ~ sqrt(n) lists, the lists roughly
follow the clusters, so small nprobe values already reach high recall.

Queries are fresh draws from the same distribution (not gallery items). Each index is built through
retrieval.gallery.index.GalleryIndex, so its search parameters are the ones build auto-tunes on a gallery sample (build_s is
train + add; build_with_tuning_s includes that tuning). Then it is measured on the held-out queries: recall@10 against
exact inner-product search, and single-query latency on one thread, which is how the service searches (concurrent
requests provide the parallelism). Build uses --threads.
Memory is the growth of this process's resident set while the index is built and held.

HNSW builds at only 1.5k-4k 512-d vectors/s per core here (busy vs idle machine), so it is measured on the first
--hnsw-n gallery items (100k by default; the row says its n) rather than spending many minutes on 1M; this is also
why `--index-type auto` stops choosing hnsw above 250k items.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from retrieval.gallery import quality
from retrieval.atomic import atomic_path, atomic_write_json
from retrieval.datasets import load_dataset
from retrieval.gallery.embedder import OnnxEmbedder
from retrieval.gallery.index import INDEX_TYPES, GalleryIndex, memory_estimate, metadata_table
from training.export import export_bundle
from retrieval.models import build_model

RESULTS = Path(__file__).parent / "results"
LATENT = 32
CLUSTER_SIZE = 1000
BUILD_PARAMS = ("M", "efConstruction", "factory", "nlist", "trained_on")


def synthetic(n: int, dim: int, seed: int, *, n_clusters: int, basis: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """The clustered low-intrinsic-dimension generator of the module docstring, in chunks to bound temporaries."""
    centres = np.random.default_rng(12345).standard_normal((n_clusters, LATENT)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        z = centres[rng.integers(n_clusters, size=m)] + 0.6 * rng.standard_normal((m, LATENT), dtype=np.float32)
        x = z @ basis.T + 0.05 * rng.standard_normal((m, dim), dtype=np.float32)
        faiss.normalize_L2(x)
        out[start : start + m] = x
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_index(kind: str, gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    table = metadata_table([""] * len(gallery), [""] * len(gallery))
    before = rss_bytes()
    start = time.perf_counter()
    index = GalleryIndex.build(gallery, table, kind)
    build_s = time.perf_counter() - start
    held = rss_bytes() - before
    _, ids = index.search(queries, quality.RECALL_K)  # batched: throughput is not what is measured here
    recall = float(np.mean([len(np.intersect1d(a, t)) / quality.RECALL_K for a, t in zip(ids, truth)]))
    latency = quality.latency_ms(index.index, queries[: quality.LATENCY_QUERIES if kind == "flat" else len(queries)])
    return {
        "type": kind,
        "n": len(gallery),
        "threads": faiss.omp_get_max_threads(),
        "params": {k: v for k, v in index.info.items() if k in BUILD_PARAMS},
        "search_params": index.info["search_params"],
        "build_s": index.info["build_seconds"],
        "build_with_tuning_s": round(build_s, 2),
        "rss_growth_mb": round(held / 2**20, 1),
        "estimated_mb": round(memory_estimate(kind, len(gallery), gallery.shape[1]) / 2**20, 1),
        "recall_at_10": round(recall, 4),
        "gallery_sample_recall_at_10": index.info["recall_at_10"],
        **{k: round(v, 3) for k, v in latency.items()},
    }


def bench_embedding(images: torch.Tensor, threads: int, batch: int) -> dict:
    """images/s of the exported C2F2 through onnxruntime and through torch eager on the same images and threads."""
    torch.manual_seed(0)
    model = build_model("c2f2", pretrained=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        with atomic_path(Path(tmp) / "run" / "checkpoint.pt") as ckpt:
            torch.save({"model": model.state_dict(), "config": {"arch": "c2f2", "embedding_dim": 512}}, ckpt)
        bundle = export_bundle(Path(tmp) / "run", Path(tmp) / "bundle")
        embedder = OnnxEmbedder(bundle, threads=threads, batch_size=batch)
        torch.set_num_threads(threads)

        def torch_embed(x: torch.Tensor) -> None:
            with torch.no_grad():
                for s in range(0, len(x), batch):
                    model(x[s : s + batch])

        result = {}
        for name, fn in (("onnxruntime", embedder.embed), ("torch_eager", torch_embed)):
            fn(images[:batch])  # warm-up
            start = time.perf_counter()
            fn(images)
            result[f"{name}_images_per_s"] = round(len(images) / (time.perf_counter() - start), 1)
    return {"images": len(images), "batch": batch, "threads": threads, **result}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        ax1.scatter(r["p50_ms"], r["recall_at_10"], s=60)
        label = f"{r['type']} ({r['n']:,})"
        ax1.annotate(label, (r["p50_ms"], r["recall_at_10"]), textcoords="offset points", xytext=(5, 5))
    ax1.set_xscale("log")
    ax1.axhline(0.95, ls="--", c="grey")
    ax1.axvline(2.0, ls="--", c="grey")
    ax1.set(xlabel="per-query p50 latency (ms, 1 thread, log)", ylabel="recall@10 vs exact", title="quality vs speed")
    ax2.bar([f"{r['type']}\n({r['n']:,})" for r in rows], [r["build_s"] for r in rows])
    ax2.set(ylabel="seconds (train + add)", title="build time")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="Synthetic gallery size.")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500, help="Held-out queries for recall and latency.")
    parser.add_argument("--threads", type=int, default=2, help="Threads for building and embedding.")
    parser.add_argument("--types", nargs="+", default=["flat", "hnsw", "ivf-pq"], choices=INDEX_TYPES[1:])
    parser.add_argument("--hnsw-n", type=int, default=100_000, help="Gallery items HNSW is built on (subset).")
    parser.add_argument("--embed-images", type=int, default=4096, help="Fashion-MNIST test images to embed (0: skip).")
    parser.add_argument("--out", type=Path, default=RESULTS / "index_bench.json")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)

    embedding = None
    if args.embed_images:
        images = load_dataset("fashion-mnist", "test").tensors()[: args.embed_images]
        embedding = bench_embedding(images, args.threads, batch=256)
        print(f"embedding {embedding['images']} images, batch 256, {args.threads} threads: "
              f"onnxruntime {embedding['onnxruntime_images_per_s']:.0f} images/s, "
              f"torch eager {embedding['torch_eager_images_per_s']:.0f} images/s")

    basis = np.linalg.qr(np.random.default_rng(7).standard_normal((args.dim, LATENT)))[0].astype(np.float32)
    clusters = max(1, args.n // CLUSTER_SIZE)
    start = time.perf_counter()
    gallery = synthetic(args.n, args.dim, seed=1, n_clusters=clusters, basis=basis)
    queries = synthetic(args.queries, args.dim, seed=2, n_clusters=clusters, basis=basis)
    _, truth = faiss.knn(queries, gallery, quality.RECALL_K, metric=faiss.METRIC_INNER_PRODUCT)
    print(f"generated {args.n} x {args.dim} vectors and exact top-{quality.RECALL_K} of {args.queries} queries "
          f"in {time.perf_counter() - start:.1f} s")

    rows = []
    print(f"{'type':<8}{'n':>9}{'build s':>9}{'RSS MB':>9}{'est MB':>9}{'recall@10':>11}{'p50 ms':>9}{'p99 ms':>9}"
          "  search params")
    for kind in args.types:
        if kind == "hnsw" and args.hnsw_n < args.n:
            subset = gallery[: args.hnsw_n]
            _, subset_truth = faiss.knn(queries, subset, quality.RECALL_K, metric=faiss.METRIC_INNER_PRODUCT)
            r = bench_index(kind, subset, queries, subset_truth)
        else:
            r = bench_index(kind, gallery, queries, truth)
        rows.append(r)
        print(f"{kind:<8}{r['n']:>9}{r['build_s']:>9.1f}{r['rss_growth_mb']:>9.0f}{r['estimated_mb']:>9.0f}"
              f"{r['recall_at_10']:>11.4f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}  {r['search_params']}", flush=True)

    atomic_write_json(args.out, {
        "gallery": {"n": args.n, "dim": args.dim, "clusters": clusters, "latent_dim": LATENT, "queries": args.queries},
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
                    "faiss": faiss.__version__},
        "embedding": embedding,
        "indexes": rows,
    })
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
