"""SIGKILL during `index`: the previous index stays loadable and unchanged (or the new one is complete)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.gallery.generations import resolve_current
from retrieval.gallery.index import GalleryIndex
from tests.support.bundles import SIZE, make_bundle

pytestmark = pytest.mark.slow

KILL_AFTER_S = (0.5, 2.0, 3.5, 5.0)


def images(directory: Path, count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = directory / f"class{i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(folder / f"{i}.png")
    return directory


def index_cmd(bundle: Path, source: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "serve.cli", "index", "--bundle", str(bundle), "--images", str(source),
            "-o", str(out)]


def snapshot(root: Path) -> dict[str, str]:
    generation = resolve_current(root)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in generation.iterdir()}


def test_sigkill_during_index_keeps_the_previous_index(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    out = tmp_path / "index"
    subprocess.run(index_cmd(bundle, images(tmp_path / "small", 20, seed=0), out), check=True, capture_output=True)
    before = snapshot(out)
    big = images(tmp_path / "big", 3000, seed=1)

    interrupted = 0
    for delay in KILL_AFTER_S:
        process = subprocess.Popen(index_cmd(bundle, big, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        finished = process.poll() is not None
        if not finished:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        loaded = GalleryIndex.load(out, verify=True)  # whatever happened, the index loads and verifies
        if finished:
            assert len(loaded) == 3000
            break
        interrupted += 1
        if len(loaded) == 20:
            assert snapshot(out) == before  # byte for byte the previous generation
        else:
            assert len(loaded) == 3000  # killed after the switch: the new generation is complete
    assert interrupted >= 1, "every run finished before it could be killed"
