"""FAISS gallery: type choice, recall, crash-safe generations, tamper and model checks, and the `index` command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import retrieval.gallery.index as index_module
from retrieval.models.bundle import Bundle
from retrieval.errors import UserError
from retrieval.gallery.index import GalleryIndex, choose_index_type, memory_estimate, metadata_table
from serve.cli import app
from tests.support.bundles import DIM, SIZE, make_bundle


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(clusters, size=n)] + 0.4 * rng.standard_normal((n, dim))).astype(np.float32)


def table(n: int, offset: int = 0) -> pa.Table:
    ids = range(offset, offset + n)
    return metadata_table([f"item-{i}" for i in ids], [f"{i:064x}" for i in ids], [i % 7 for i in ids])


def test_auto_rule_picks_by_size_and_memory() -> None:
    assert choose_index_type(10_000, 512) == "flat"
    assert choose_index_type(200_000, 512, memory=64 << 30) == "hnsw"
    assert choose_index_type(200_000, 512, memory=100 << 20) == "ivf-pq"  # the graph would not fit
    assert choose_index_type(1_000_000, 512, memory=64 << 30) == "ivf-pq"  # hnsw would build too slowly
    sizes = [memory_estimate(kind, 10**6, 512) for kind in ("ivf-pq", "flat", "hnsw")]
    assert sizes == sorted(sizes)


def test_flat_search_and_metadata_rows() -> None:
    vectors = clustered(500, 24)
    gallery = GalleryIndex.build(vectors, table(500), "flat", model_sha256="m1")
    scores, ids = gallery.search(vectors[:3] * 5.0, 4)  # queries are normalised too
    assert ids[:, 0].tolist() == [0, 1, 2] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert gallery.rows([2, -1]) == [
        {"id": 2, "label": 2, "source": "item-2", "sha256": f"{2:064x}", "class_name": None}
    ]
    assert gallery.info["recall_at_10"] == 1.0 and gallery.info["type"] == "flat"
    _, ids = gallery.search(vectors[:1], 600)
    assert (ids[0, 500:] == -1).all()


def test_hnsw_meets_recall_target_on_sample() -> None:
    gallery = GalleryIndex.build(clustered(3000, 32), table(3000), "hnsw")
    info = gallery.info
    assert info["recall_at_10"] >= 0.95 and "efSearch" in info["search_params"]
    assert 0 < info["latency"]["p50_ms"] <= info["latency"]["p99_ms"]  # measured, not a placeholder


@pytest.mark.slow
def test_ivf_pq_recall_and_append_limit() -> None:
    vectors = clustered(10_000, 16)
    gallery = GalleryIndex.build(vectors, table(10_000), "ivf-pq")
    assert gallery.info["recall_at_10"] >= 0.95 and gallery.info["factory"].startswith("IVF")
    gallery.append(vectors[:100], table(100, offset=10_000))
    assert len(gallery) == 10_100
    too_many = np.repeat(vectors, 3, axis=0)
    with pytest.raises(UserError, match="rebuild"):
        gallery.append(too_many, table(len(too_many)))


def test_build_refuses_bad_input() -> None:
    with pytest.raises(UserError, match="NaN"):
        GalleryIndex.build(np.full((3, 4), np.nan, np.float32), table(3), "flat")
    with pytest.raises(UserError, match="empty"):
        GalleryIndex.build(np.zeros((0, 4), np.float32), table(0), "flat")
    with pytest.raises(UserError, match="ivf-pq needs"):
        GalleryIndex.build(clustered(100, 8), table(100), "ivf-pq")
    with pytest.raises(UserError, match="unknown index type"):
        GalleryIndex.build(clustered(10, 8), table(10), "lsh")
    gallery = GalleryIndex.build(clustered(10, 8), table(10), "flat")
    with pytest.raises(UserError, match="shape"):
        gallery.search(np.zeros((1, 9), np.float32), 3)


def test_save_load_round_trip_and_pruning(tmp_path: Path) -> None:
    vectors = clustered(800, 16)
    gallery = GalleryIndex.build(vectors, table(800), "hnsw", model_sha256="m1")
    for _ in range(3):
        generation = gallery.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "CURRENT").read_text().strip() == generation.name == "gen-000003"
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["CURRENT", "gen-000002", "gen-000003"]
    loaded = GalleryIndex.load(tmp_path / "idx", expected_model_sha256="m1")
    np.testing.assert_array_equal(loaded.search(vectors[:20], 10)[1], gallery.search(vectors[:20], 10)[1])
    assert loaded.metadata.equals(gallery.metadata)
    info = json.loads((generation / "index_info.json").read_text())
    assert info["count"] == 800 and info["dim"] == 16 and "recall_at_10" in info and "p99_ms" in info["latency"]


def test_an_index_saved_before_class_names_existed_loads_with_null_names_and_takes_named_items(tmp_path: Path) -> None:
    """Indexes built before the class_name column must keep serving; appends then add named items beside them."""
    generation = GalleryIndex.build(clustered(50, 8), table(50), "flat", model_sha256="m1").save(tmp_path / "idx")
    metadata = generation / "metadata.parquet"
    pq.write_table(pq.read_table(metadata).drop_columns(["class_name"]), metadata)  # the layout before the column
    manifest = json.loads((generation / "manifest.json").read_text())
    manifest["files"]["metadata.parquet"] = hashlib.sha256(metadata.read_bytes()).hexdigest()
    (generation / "manifest.json").write_text(json.dumps(manifest))
    old = GalleryIndex.load(tmp_path / "idx", expected_model_sha256="m1")
    assert old.rows([3]) == [{"id": 3, "label": 3, "source": "item-3", "sha256": f"{3:064x}", "class_name": None}]
    named = metadata_table(["new-0"], ["f" * 64], [1], ["Trouser"])
    old.append(clustered(1, 8, seed=5), named, model_sha256="m1")
    old.save(tmp_path / "idx")
    assert GalleryIndex.load(tmp_path / "idx").metadata.column("class_name").to_pylist() == [None] * 50 + ["Trouser"]


def test_crash_while_saving_keeps_previous_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = GalleryIndex.build(clustered(50, 8), table(50), "flat")
    first.save(tmp_path / "idx")
    second = GalleryIndex.build(clustered(70, 8, seed=1), table(70), "flat")

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(index_module.pq, "write_table", crash)
    with pytest.raises(OSError):
        second.save(tmp_path / "idx")
    assert len(GalleryIndex.load(tmp_path / "idx")) == 50
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["CURRENT", "gen-000001"]


@pytest.mark.parametrize("name", ["index.faiss", "metadata.parquet", "index_info.json"])
def test_tampered_or_truncated_files_are_refused(tmp_path: Path, name: str) -> None:
    generation = GalleryIndex.build(clustered(50, 8), table(50), "flat").save(tmp_path / "idx")
    path = generation / name
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match=name):
        GalleryIndex.load(tmp_path / "idx")


def test_truncated_index_without_verification_is_still_a_user_error(tmp_path: Path) -> None:
    generation = GalleryIndex.build(clustered(50, 8), table(50), "flat").save(tmp_path / "idx")
    (generation / "index.faiss").write_bytes((generation / "index.faiss").read_bytes()[:100])
    with pytest.raises(UserError):
        GalleryIndex.load(tmp_path / "idx", verify=False)


def test_index_of_another_model_is_refused(tmp_path: Path) -> None:
    GalleryIndex.build(clustered(50, 8), table(50), "flat", model_sha256="a" * 64).save(tmp_path / "idx")
    with pytest.raises(UserError, match="rebuild"):
        GalleryIndex.load(tmp_path / "idx", expected_model_sha256="b" * 64)
    with pytest.raises(UserError, match="no index"):
        GalleryIndex.load(tmp_path / "empty")


def test_append_continues_ids_and_checks_model() -> None:
    gallery = GalleryIndex.build(clustered(40, 8), table(40), "flat", model_sha256="m1")
    extra = clustered(5, 8, seed=9)
    gallery.append(extra, table(5, offset=40), model_sha256="m1")
    assert len(gallery) == 45 and gallery.metadata.column("id").to_pylist() == list(range(45))
    assert gallery.search(extra[:1], 1)[1][0, 0] == 40
    with pytest.raises(UserError, match="another model"):
        gallery.append(extra, table(5), model_sha256="m2")


# --- the `index` command -------------------------------------------------------------------------------------------


def _write_pngs(directory: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(directory / f"img{seed}-{i}.png")


@pytest.fixture()
def gallery_dir(tmp_path: Path) -> Path:
    _write_pngs(tmp_path / "images" / "a", 12, seed=0)
    _write_pngs(tmp_path / "images" / "b", 8, seed=1)
    (tmp_path / "images" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    return tmp_path / "images"


def _index(*args: str) -> object:
    return CliRunner().invoke(app, ["index", *args])


def test_index_images_skips_unreadable_and_records_metadata(tmp_path: Path, gallery_dir: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    result = _index("--bundle", str(bundle), "--images", str(gallery_dir), "-o", str(tmp_path / "idx"), "--threads=1")
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output and "1 skipped" in result.output
    gallery = GalleryIndex.load(tmp_path / "idx", expected_model_sha256=Bundle.load(bundle).model_sha256)
    assert len(gallery) == 20 and gallery.dim == DIM
    row = gallery.rows([0])[0]
    assert row["label"] is None
    assert row["sha256"] == hashlib.sha256(Path(row["source"]).read_bytes()).hexdigest()
    assert gallery.info["bundle"] and (tmp_path / "idx" / gallery.info["bundle"]).resolve() == bundle.resolve()


def test_index_strict_fails_on_unreadable_image(tmp_path: Path, gallery_dir: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    result = _index("--bundle", str(bundle), "--images", str(gallery_dir), "-o", str(tmp_path / "idx"), "--strict")
    assert isinstance(result.exception, UserError) and "broken.png" in str(result.exception)
    assert not (tmp_path / "idx" / "CURRENT").exists()


def test_index_append_adds_only_new_images_and_refuses_other_model(tmp_path: Path, gallery_dir: Path) -> None:
    bundle, other = make_bundle(tmp_path / "bundle"), make_bundle(tmp_path / "other", seed=1)
    out = str(tmp_path / "idx")
    assert _index("--bundle", str(bundle), "--images", str(gallery_dir), "-o", out).exit_code == 0
    _write_pngs(gallery_dir / "c", 5, seed=2)
    result = _index("--bundle", str(bundle), "--images", str(gallery_dir), "-o", out, "--append")
    assert result.exit_code == 0, result.output
    assert "indexed 5 images" in result.output and "20 already indexed" in result.output
    assert len(GalleryIndex.load(out)) == 25
    result = _index("--bundle", str(other), "--images", str(gallery_dir), "-o", out, "--append")
    assert isinstance(result.exception, UserError) and "rebuild" in str(result.exception)


def test_index_dataset_split(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", size=28)
    result = _index("--bundle", str(bundle), "--dataset", "fashion-mnist:test", "-o", str(tmp_path / "idx"))
    assert result.exit_code == 0, result.output
    gallery = GalleryIndex.load(tmp_path / "idx")
    assert len(gallery) == 10_000 and gallery.info["type"] == "flat"
    assert gallery.rows([17])[0]["source"] == "fashion-mnist:test:17"
    assert gallery.metadata.column("label").null_count == 0
    names = {row["label"]: row["class_name"] for row in gallery.rows(range(100))}
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot" and len(names) == 10


def test_index_of_a_folder_dataset_names_items_by_their_class_folder(tmp_path: Path) -> None:
    for name, seed in (("apple", 0), ("cherry", 1), ("durian", 2), ("elderberry", 3)):
        _write_pngs(tmp_path / "fruit" / name, 2, seed=seed)
    bundle = make_bundle(tmp_path / "bundle")
    result = _index("--bundle", str(bundle), "--dataset", "folder:test", "--data-root", str(tmp_path / "fruit"),
                    "-o", str(tmp_path / "idx"))
    assert result.exit_code == 0, result.output
    rows = GalleryIndex.load(tmp_path / "idx").rows(range(4))
    assert [(row["label"], row["class_name"]) for row in rows] == [(0, "durian")] * 2 + [(1, "elderberry")] * 2


def test_index_requires_exactly_one_source(tmp_path: Path) -> None:
    result = _index("--bundle", str(tmp_path), "-o", str(tmp_path / "idx"))
    assert isinstance(result.exception, UserError) and "exactly one" in str(result.exception)
