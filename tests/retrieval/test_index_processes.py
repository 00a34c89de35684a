"""`index` under torchrun: two gloo processes publish the index one process publishes (and --append likewise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_index_kill import images

from retrieval.gallery.generations import resolve_current
from retrieval.gallery.index import GalleryIndex
from tests.support.bundles import make_bundle
from tests.support.ports import free_port

pytestmark = pytest.mark.slow
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def index(processes: int, *args: str, succeeds: bool = True) -> str:
    """`robust-retrieval index ARGS` in `processes` local processes (torchrun when more than one); its stderr."""
    if processes == 1:
        command = [sys.executable, "-m", "serve.cli", "index", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "serve.cli", "index", *args]
    done = subprocess.run(command, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == succeeds, done.stderr[-3000:]
    return done.stderr


def assert_same_index(one: Path, two: Path) -> None:
    """Same ids, metadata rows and thumbnails; vectors within 1e-6; nothing but generations left in the folder."""
    a, b = GalleryIndex.load(one), GalleryIndex.load(two)
    assert a.metadata.equals(b.metadata)
    assert a.index_type == b.index_type and len(a) == len(b)
    assert np.abs(a._reconstruct() - b._reconstruct()).max() <= 1e-6
    assert [a.thumbnails.get(i) for i in range(len(a))] == [b.thumbnails.get(i) for i in range(len(b))]
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith("gen-")) == ["CURRENT"]


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("index_type", ["flat", "ivf-pq"])
def test_two_processes_publish_the_index_one_process_publishes(tmp_path, index_type) -> None:
    bundle = make_bundle(tmp_path / "bundle", size=28)
    for processes in (1, 2):
        index(processes, "--bundle", str(bundle), "--dataset", "fashion-mnist:test", "--index-type", index_type,
              "-o", str(tmp_path / f"p{processes}"))
    assert_same_index(tmp_path / "p1", tmp_path / "p2")
    if index_type == "ivf-pq":  # one training on all vectors: the same lists and codes
        one, two = (resolve_current(tmp_path / f"p{n}") / "index.faiss" for n in (1, 2))
        assert one.read_bytes() == two.read_bytes()


def test_two_processes_append_what_one_process_appends(tmp_path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    first, more = images(tmp_path / "first", 30, seed=0), images(tmp_path / "more", 45, seed=1)
    (more / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for processes in (1, 2):
        out = str(tmp_path / f"p{processes}")
        index(1, "--bundle", str(bundle), "--images", str(first), "-o", out)
        index(processes, "--bundle", str(bundle), "--images", str(more), "-o", out, "--append")
        index(processes, "--bundle", str(bundle), "--images", str(first), "-o", out, "--append")  # nothing new
    assert_same_index(tmp_path / "p1", tmp_path / "p2")
    assert len(GalleryIndex.load(tmp_path / "p2")) == 75


def test_a_run_that_fails_on_one_process_publishes_nothing(tmp_path) -> None:
    """--strict stops the process whose share holds a broken image; rank 0 never publishes the others' shares."""
    bundle, out = make_bundle(tmp_path / "bundle"), tmp_path / "index"
    index(1, "--bundle", str(bundle), "--images", str(images(tmp_path / "first", 10, seed=0)), "-o", str(out))
    before = resolve_current(out)
    more = images(tmp_path / "more", 20, seed=1)
    (more / "class4" / "zzz.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # sorted last: rank 1's share
    failed = index(2, "--bundle", str(bundle), "--images", str(more), "-o", str(out), "--append", "--strict",
                   succeeds=False)
    assert "zzz.png: " in failed and "(drop --strict to skip unreadable images)" in failed
    assert resolve_current(out) == before and len(GalleryIndex.load(out)) == 10
