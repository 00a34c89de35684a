"""The `robust-retrieval index` command: embed a gallery with a bundle and publish a FAISS index generation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import ProgressColumn, Task
from rich.text import Text

from retrieval.errors import UserError
from retrieval.progress import tracked


def index(
    bundle: Path = typer.Option(..., "--bundle", help="Model bundle written by `robust-retrieval export`."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="NAME:SPLIT, e.g. fashion-mnist:test."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "-o", "--out", help="Index directory (generations + CURRENT pointer)."),
    index_type: str = typer.Option("auto", "--index-type", help="auto, flat, hnsw or ivf-pq (auto: size and memory)."),
    append: bool = typer.Option(False, "--append", help="Add new images to the existing index instead of rebuilding."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first unreadable image instead of skipping it."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder (folder, cub, cars, sop)."),
    batch_size: int = typer.Option(256, min=1, help="Images per onnxruntime call."),
    threads: Optional[int] = typer.Option(None, min=1, help="onnxruntime and FAISS threads (default: all cores)."),
    memory_gb: Optional[float] = typer.Option(None, min=0.0, help="RAM budget of --index-type auto (half free RAM)."),
    thumbnails: Optional[bool] = typer.Option(
        None, "--thumbnails/--no-thumbnails", show_default=False,
        help="Store a preview (at most 128 px) of every item for GET /items/{id}/thumbnail. Default: on for a new "
        "index; --append follows the index.",
    ),
) -> None:
    """Embed a gallery with a bundle's ONNX model and build (or --append to) a FAISS index."""
    from retrieval.bundle import Bundle  # late imports keep `--help` of every command fast
    from retrieval.datasets import load_dataset, parse_dataset_spec
    from retrieval.embedder import OnnxEmbedder
    from retrieval.gallery import embed_dataset, embed_files, image_files
    from retrieval.index import INDEX_TYPES, GalleryIndex
    from retrieval.threads import use_faiss_threads

    if (dataset is None) == (images is None):
        raise UserError("give exactly one of --dataset or --images")
    if index_type not in INDEX_TYPES:
        raise UserError(f"--index-type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}")
    threads = use_faiss_threads(threads)
    model = Bundle.load(bundle)
    embedder = OnnxEmbedder(model, threads=threads, batch_size=batch_size)
    existing = GalleryIndex.load(out, expected_model_sha256=model.model_sha256) if append else None
    if existing is not None and index_type not in ("auto", existing.index_type):
        raise UserError(f"--append keeps the index type ({existing.index_type}); drop --index-type {index_type}")
    previews = thumbnails is not False if existing is None else existing.thumbnails is not None
    if thumbnails is not None and thumbnails != previews:
        state = "has" if previews else "has no"
        raise UserError(f"--append keeps the index's thumbnails (it {state} thumbnails); drop --"
                        f"{'' if thumbnails else 'no-'}thumbnails, or rebuild without --append")
    known = frozenset(existing.metadata.column("sha256").to_pylist()) if existing is not None else frozenset()
    console = Console(stderr=True, soft_wrap=True)  # paths in messages must stay greppable
    if dataset is not None:
        name, split = parse_dataset_spec(dataset)
        data = load_dataset(name, split, root=data_root, image_size=model.input_size, channels=model.channels)
        with tracked("embedding", len(data), _RateColumn(), console=console) as advance:
            items = embed_dataset(
                data, embedder, strict=strict, known_sha256=known, progress=advance, thumbnails=previews
            )
    else:
        paths = image_files(images)
        with tracked("embedding", len(paths), _RateColumn(), console=console) as advance:
            items = embed_files(
                paths, embedder, strict=strict, known_sha256=known, progress=advance, thumbnails=previews
            )
    for skipped in items.skipped:
        console.print(f"[yellow]skipped[/] {skipped.source}: {skipped.reason}", highlight=False)
    if existing is None:
        memory = None if memory_gb is None else int(memory_gb * (1 << 30))
        gallery = GalleryIndex.build(
            items.vectors, items.metadata, index_type, model_sha256=model.model_sha256, memory=memory,
            thumbnails=items.thumbnails,
        )
    elif len(items.vectors):
        existing.append(items.vectors, items.metadata, model_sha256=model.model_sha256, thumbnails=items.thumbnails)
        gallery = existing
    else:
        console.print(f"nothing new to add ({items.already_indexed} already indexed); index unchanged")
        return
    gallery.info["bundle"] = os.path.relpath(model.path.resolve(), out.resolve())  # lets `serve INDEX/` find it
    generation = gallery.save(out)
    info = gallery.info
    stored = f"{info['thumbnails']['bytes'] / 1e6:.1f} MB of thumbnails" if info["thumbnails"] else "no thumbnails"
    console.print(
        f"indexed {len(items.vectors)} images ({len(items.skipped)} skipped, {items.already_indexed} already indexed); "
        f"{len(gallery)} items in a {info['type']} index, recall@10 {info['recall_at_10']:.3f}, "
        f"p50 {info['latency']['p50_ms']:.2f} ms, p99 {info['latency']['p99_ms']:.2f} ms, {stored} -> {generation}",
        highlight=False,
    )


class _RateColumn(ProgressColumn):
    """Images per second, the throughput figure that matters when embedding a gallery."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} images/s", style="progress.data.speed")
