"""The `robust-retrieval index` command: embed a gallery with a bundle and publish a FAISS index generation."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.progress import ProgressColumn, Task
from rich.text import Text

from retrieval.errors import UserError
from retrieval.progress import tracked

if TYPE_CHECKING:
    from retrieval.models.bundle import Bundle
    from retrieval.distributed import Processes
    from retrieval.gallery.items import GalleryItems
    from retrieval.gallery.index import GalleryIndex


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
    """Embed a gallery with a bundle's ONNX model and build (or --append to) a FAISS index. Under torchrun each
    process embeds its part (the dataset and -o must be reachable from every machine); rank 0 publishes."""
    from retrieval.models.bundle import Bundle  # late imports keep `--help` of every command fast
    from retrieval.distributed import started
    from retrieval.gallery.index import INDEX_TYPES

    if (dataset is None) == (images is None):
        raise UserError("give exactly one of --dataset or --images")
    if index_type not in INDEX_TYPES:
        raise UserError(f"--index-type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}")
    with started("cpu") as processes:
        _index(processes, Bundle.load(bundle), dataset, images, out, index_type, append, strict, data_root,
               batch_size, threads, memory_gb, thumbnails)


def _index(
    processes: Processes, model: Bundle, dataset: str | None, images: Path | None, out: Path, index_type: str,
    append: bool, strict: bool, data_root: Path | None, batch_size: int, threads: int | None, memory_gb: float | None,
    thumbnails: bool | None,
) -> None:
    from retrieval.datasets import load_dataset, parse_dataset_spec
    from retrieval.gallery.embedder import OnnxEmbedder
    from retrieval.gallery.items import embed_dataset, embed_files, image_files
    from retrieval.gallery.index import GalleryIndex
    from retrieval.threads import use_faiss_threads

    threads = use_faiss_threads(threads)
    embedder = OnnxEmbedder(model, threads=threads, batch_size=batch_size)
    existing = None

    def settings() -> tuple[bool, frozenset[str]]:
        nonlocal existing  # rank 0 appends to it
        existing = GalleryIndex.load(out, expected_model_sha256=model.model_sha256) if append else None
        return _append_settings(existing, index_type, thumbnails)

    previews, known = processes.agreed(settings)
    console = Console(stderr=True, soft_wrap=True)  # paths in messages must stay greppable
    if dataset is not None:
        name, split = parse_dataset_spec(dataset)
        data = load_dataset(name, split, root=data_root, image_size=model.input_size, channels=model.channels)
        part = processes.part(len(data))
        with tracked("embedding", len(part), _RateColumn(), console=console, enabled=processes.is_main) as advance:
            items = embed_dataset(data, embedder, strict=strict, known_sha256=known, progress=advance,
                                  thumbnails=previews, part=part)
    else:
        paths = processes.agreed(lambda: image_files(images))  # one listing, even if files arrive meanwhile
        part = processes.part(len(paths))
        with tracked("embedding", len(part), _RateColumn(), console=console, enabled=processes.is_main) as advance:
            items = embed_files([paths[i] for i in part], embedder, strict=strict, known_sha256=known,
                                progress=advance, thumbnails=previews)
    if processes.distributed:
        items = _joined(processes, out, items)
        if items is None:
            return
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


def _append_settings(
    existing: GalleryIndex | None, index_type: str, thumbnails: bool | None
) -> tuple[bool, frozenset[str]]:
    """(whether items get thumbnails, sha256 of the items already indexed), checked against the existing index."""
    if existing is not None and index_type not in ("auto", existing.index_type):
        raise UserError(f"--append keeps the index type ({existing.index_type}); drop --index-type {index_type}")
    previews = thumbnails is not False if existing is None else existing.thumbnails is not None
    if thumbnails is not None and thumbnails != previews:
        state = "has" if previews else "has no"
        raise UserError(f"--append keeps the index's thumbnails (it {state} thumbnails); drop --"
                        f"{'' if thumbnails else 'no-'}thumbnails, or rebuild without --append")
    known = frozenset(existing.metadata.column("sha256").to_pylist()) if existing is not None else frozenset()
    return previews, known


def _joined(processes: Processes, out: Path, mine: GalleryItems) -> GalleryItems | None:
    """Every process's items, in rank order, on rank 0 (None on the others): each writes its part into a staging
    folder in `out` (shared by all machines), and rank 0 reads them once all are in. A staging folder left by a
    killed run is never published and is pruned like the generations' own (retrieval.gallery.generations)."""
    from retrieval.gallery.items import GalleryItems

    staging = Path(processes.agreed(lambda: tempfile.mkdtemp(prefix=".staging-parts-", dir=_made(out))))
    mine.write(staging / f"rank-{processes.rank}")
    processes.barrier()
    if not processes.is_main:
        return None
    try:
        return GalleryItems.joined([GalleryItems.read(staging / f"rank-{r}") for r in range(processes.world_size)])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class _RateColumn(ProgressColumn):
    """Images per second, the throughput figure that matters when embedding a gallery."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} images/s", style="progress.data.speed")
