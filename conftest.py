"""Test-session isolation: every cache in a throwaway directory, and no dataset ever comes from the network.

Caches: the variables below are set before any test module imports torch, matplotlib or Hugging Face code, and
child processes (CLI runs, servers) inherit them, so a test run neither reads a developer's caches nor leaves files
in them. The directory is removed when the session ends.

Datasets: the suite reads Fashion-MNIST from the Debian package only (CI installs it, so CI never skips). Where it
is missing, a test that loads it in-process is skipped with the install command instead of triggering torchvision's
download; tests whose *child processes* read it carry the `fashion_mnist` marker and are skipped up front.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CACHE_ROOT = Path(tempfile.mkdtemp(prefix="rr-test-cache-"))
CACHE_VARIABLES = {
    "XDG_CACHE_HOME": "xdg-cache",
    "XDG_CONFIG_HOME": "xdg-config",
    "XDG_DATA_HOME": "xdg-data",
    "ROBUST_RETRIEVAL_CACHE": "robust-retrieval",
    "TORCH_HOME": "torch",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "HF_HOME": "huggingface",
    "HF_DATASETS_CACHE": "huggingface/datasets",
    "HUGGINGFACE_HUB_CACHE": "huggingface/hub",
    "MPLCONFIGDIR": "matplotlib",
    "NUMBA_CACHE_DIR": "numba",
    "PIP_CACHE_DIR": "pip",
}
for _variable, _sub in CACHE_VARIABLES.items():
    os.environ[_variable] = str(CACHE_ROOT / _sub)
    (CACHE_ROOT / _sub).mkdir(parents=True, exist_ok=True)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL = "apt-get install dataset-fashion-mnist"
MISSING = f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} (tests never download it): {INSTALL}"


def fashion_mnist_installed() -> bool:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return all(any((FASHION_MNIST_DIR / f"{s}{ext}").is_file() for ext in ("", ".gz")) for s in stems)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fashion_mnist: a child process of this test reads the installed Fashion-MNIST")
    from hypothesis import settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    settings.register_profile("isolated", database=DirectoryBasedExampleDatabase(str(CACHE_ROOT / "hypothesis")))
    settings.load_profile("isolated")
    _refuse_downloads()


def _refuse_downloads() -> None:
    """Replace the dataset loader's torchvision download by a skip for the real datasets.

    A test's own stand-in class (e.g. one that simulates being offline) still goes through the loader's download path.
    """
    from torchvision.datasets import mnist as tv_mnist

    from retrieval.datasets import idx

    download = idx._download
    real = {tv_mnist.FashionMNIST: MISSING, tv_mnist.MNIST: f"MNIST is not available offline: {idx.SOURCES['mnist'].install_hint}"}

    def skip_instead(source: idx.IdxSource) -> None:
        if source.torchvision_class in real:
            pytest.skip(real[source.torchvision_class])
        download(source)

    idx._download = skip_instead


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if fashion_mnist_installed():
        return
    for item in items:
        if item.get_closest_marker("fashion_mnist"):
            item.add_marker(pytest.mark.skip(reason=MISSING))


@pytest.fixture(params=["fp32", "bf16"], ids=["auto-is-fp32", "auto-is-bf16"])
def auto_precision_as(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once as on a CPU where precision `auto` decides fp32, once as on one where it decides bf16."""
    from retrieval.robustness.pgd import AUTO_PRECISION_VARIABLE

    monkeypatch.setenv(AUTO_PRECISION_VARIABLE, request.param)
    return request.param


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(CACHE_ROOT, ignore_errors=True)
