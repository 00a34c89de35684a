"""Dataset loaders on tiny generated trees: IDX, folder (zero-shot split), CUB, Cars196, SOP, plus name parsing."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import mnist as tv_mnist

import retrieval.datasets.idx as idx
from retrieval.datasets import DATASETS, ImageDataset, load_dataset, parse_dataset_spec
from retrieval.errors import UserError
from retrieval.images import CorruptImage, train_transform


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Decompressed IDX copies and downloads go to a throwaway cache, never the user's."""
    monkeypatch.setenv("ROBUST_RETRIEVAL_CACHE", str(tmp_path / "cache"))


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def idx_dir(root: Path, split_prefix: str, n: int = 5, *, compress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    images = np.arange(n * 28 * 28, dtype=np.int64).reshape(n, 28, 28) % 256
    labels = np.arange(n) % 3
    suffix = ".gz" if compress else ""
    write_idx(root / f"{split_prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(root / f"{split_prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return images, labels


def save_image(path: Path, colour=(200, 20, 20), size=(32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# --- IDX (MNIST / Fashion-MNIST) -------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_load_as_uint8_backed_dataset(tmp_path, compress):
    images, labels = idx_dir(tmp_path / "fm", "t10k", compress=compress)
    ds = load_dataset("fashion-mnist", "test", root=str(tmp_path / "fm"))
    assert isinstance(ds, ImageDataset)
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (5, 1, 28, 3)
    assert ds.labels.dtype == torch.long and ds.labels.tolist() == labels.tolist()
    x, y = ds[2]
    assert x.shape == (1, 28, 28) and y == 2
    assert torch.equal(x[0], torch.from_numpy(images[2]).float() / 255)
    all_images = ds.tensors()
    assert all_images.shape == (5, 1, 28, 28) and all_images.dtype == torch.float32
    assert torch.equal(all_images[2], x) and ds.tensors() is all_images  # cached
    assert ds.source(4) == "fashion-mnist:test:4"
    assert ds.classes == ["T-shirt/top", "Trouser", "Pullover"]  # the three classes these files hold


def test_idx_reads_torchvision_raw_layout_and_train_prefix(tmp_path):
    idx_dir(tmp_path / "MNIST" / "raw", "train", n=4)
    ds = load_dataset("mnist", "train", root=tmp_path)
    assert len(ds) == 4 and ds.source(0) == "mnist:train:0"


def test_idx_gz_is_decompressed_once_into_the_cache(tmp_path):
    idx_dir(tmp_path / "fm", "t10k")
    load_dataset("fashion-mnist", "test", root=tmp_path / "fm")
    cached = sorted((tmp_path / "cache" / "idx").iterdir())
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    load_dataset("fashion-mnist", "test", root=tmp_path / "fm")
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache" / "idx").iterdir())] == stamps


def test_missing_idx_under_explicit_root_says_how_to_fix(tmp_path):
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_missing_idx_without_root_tries_download_then_explains(tmp_path, monkeypatch):
    attempts = []

    class Offline(tv_mnist.FashionMNIST):
        def __init__(self, root, **kwargs):
            attempts.append(kwargs)
            raise RuntimeError("no network")

    source = idx.SOURCES["fashion-mnist"]
    monkeypatch.setitem(idx.SOURCES, "fashion-mnist", idx.IdxSource(tmp_path / "absent", Offline, source.install_hint))
    with pytest.raises(UserError, match="--data-root"):
        load_dataset("fashion-mnist", "train")
    assert attempts and attempts[0]["download"] is True


def test_corrupt_idx_is_a_user_error(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x01\x00"))
    with pytest.raises(UserError, match="t10k-images"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_system_fashion_mnist_if_installed():
    if not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist not installed")
    ds = load_dataset("fashion-mnist", "test")
    assert (len(ds), ds.num_classes) == (10000, 10)
    assert ds.labels.bincount().tolist() == [1000] * 10
    assert ds.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                          "Bag", "Ankle boot"]
    assert ds.class_name(9) == "Ankle boot"


# --- folder ----------------------------------------------------------------------------------------------------


def folder_tree(root: Path, classes: dict[str, int]) -> None:
    for name, count in classes.items():
        for i in range(count):
            save_image(root / name / f"img{i}.png", colour=(10 * i, 50, 90))


def test_folder_zero_shot_split_uses_first_half_of_sorted_classes(tmp_path):
    folder_tree(tmp_path, {"d": 2, "a": 2, "c": 3, "b": 1, "e": 2})
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"ignored")
    train = load_dataset("folder", "train", root=tmp_path)
    test = load_dataset("folder", "test", root=tmp_path)
    assert train.classes == ["a", "b", "c"] and test.classes == ["d", "e"]
    assert train.labels.tolist() == [0, 0, 1, 2, 2, 2] and test.labels.tolist() == [0, 0, 1, 1]
    assert (train.num_classes, test.num_classes) == (3, 2)
    x, y = train[0]
    assert x.shape == (3, 224, 224) and y == 0
    assert train.source(0) == str(tmp_path / "a" / "img0.png")
    assert train.tensors() is None


def test_folder_with_train_and_test_dirs_uses_them(tmp_path):
    folder_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    folder_tree(tmp_path / "test", {"fox": 1})
    assert load_dataset("folder", "train", root=tmp_path).classes == ["cat", "dog"]
    assert load_dataset("folder", "test", root=tmp_path).classes == ["fox"]


def test_folder_image_size_and_channels_for_small_models(tmp_path):
    folder_tree(tmp_path, {"a": 1, "b": 1})
    ds = load_dataset("folder", "test", root=tmp_path, image_size=28, channels=1)
    assert (ds.image_size, ds.channels) == (28, 1) and ds[0][0].shape == (1, 28, 28)


def test_folder_transform_can_be_swapped_for_training_augmentation(tmp_path):
    folder_tree(tmp_path, {"a": 1, "b": 1})
    ds = load_dataset("folder", "train", root=tmp_path)
    ds.transform = train_transform(224)
    assert ds[0][0].shape == (3, 224, 224)


def test_folder_empty_class_is_named(tmp_path):
    folder_tree(tmp_path, {"a": 1, "b": 1})
    (tmp_path / "c_empty").mkdir()
    (tmp_path / "c_empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="c_empty"):
        load_dataset("folder", "test", root=tmp_path)


@pytest.mark.parametrize("make", ["missing", "no-classes", "one-class"])
def test_folder_bad_roots(tmp_path, make):
    if make == "no-classes":
        (tmp_path / "loose.png").write_bytes(b"")
    if make == "one-class":
        folder_tree(tmp_path, {"only": 1})
    root = tmp_path / "nope" if make == "missing" else tmp_path
    with pytest.raises(UserError, match=str(root)):
        load_dataset("folder", "train", root=root)


def test_folder_corrupt_image_fails_on_access_naming_the_file(tmp_path):
    folder_tree(tmp_path, {"a": 1, "b": 1})
    (tmp_path / "b" / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    ds = load_dataset("folder", "test", root=tmp_path)
    with pytest.raises(CorruptImage, match="img0.png"):
        ds[0]


# --- CUB / Cars196 / SOP ---------------------------------------------------------------------------------------


def test_cub_layout_splits_classes_at_100(tmp_path):
    base = tmp_path / "CUB_200_2011"
    entries = [(1, 1, "001.A/a1.jpg"), (2, 1, "001.A/a2.jpg"), (3, 100, "100.B/b1.jpg"), (4, 101, "101.C/c1.jpg"),
               (5, 200, "200.D/d1.jpg"), (6, 200, "200.D/d2.jpg")]  # fmt: skip
    for _, _, rel in entries:
        save_image(base / "images" / rel)
    (base / "images.txt").write_text("".join(f"{i} {rel}\n" for i, _, rel in entries))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, c, _ in entries))
    train = load_dataset("cub", "train", root=tmp_path)  # parent of CUB_200_2011 works too
    assert train.classes is None  # no classes.txt: names unknown, not an error
    (base / "classes.txt").write_text("1 001.Black_footed_Albatross\n100 100.B\n101 101.C\n200 200.Dark_eyed_Junco\n")
    test = load_dataset("cub", "test", root=base)
    assert test.classes == ["C", "Dark eyed Junco"]
    assert load_dataset("cub", "train", root=base).class_name(0) == "Black footed Albatross"
    assert train.labels.tolist() == [0, 0, 1] and train.num_classes == 2
    assert test.labels.tolist() == [0, 1, 1] and test.num_classes == 2
    assert test.source(0) == str(base / "images" / "101.C" / "c1.jpg")
    assert test[2][0].shape == (3, 224, 224)


def test_cub_missing_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="images.txt"):
        load_dataset("cub", "train", root=tmp_path)
    base = tmp_path / "CUB_200_2011"
    base.mkdir()
    (base / "images.txt").write_text("1 001.A/a1.jpg\n")
    (base / "image_class_labels.txt").write_text("1 1\n")
    with pytest.raises(UserError, match="a1.jpg"):
        load_dataset("cub", "train", root=base)


def test_cars_annotation_mat_splits_classes_at_98(tmp_path):
    from scipy.io import savemat

    entries = [("car_ims/000001.jpg", 1), ("car_ims/000002.jpg", 98), ("car_ims/000003.jpg", 99),
               ("car_ims/000004.jpg", 196), ("car_ims/000005.jpg", 196)]  # fmt: skip
    for rel, _ in entries:
        save_image(tmp_path / rel)
    annotations = np.zeros(
        (1, len(entries)), dtype=[("relative_im_path", object), ("class", object), ("test", object)]
    )
    for j, (rel, cls) in enumerate(entries):
        annotations[0, j] = (rel, np.array([[cls]], dtype=np.uint8), np.array([[j % 2]], dtype=np.uint8))
    names = np.array([f"Car model {cls}" for cls in range(1, 197)], dtype=object)
    savemat(tmp_path / "cars_annos.mat", {"annotations": annotations, "class_names": names})
    train = load_dataset("cars", "train", root=tmp_path)
    test = load_dataset("cars", "test", root=tmp_path)
    assert train.labels.tolist() == [0, 1] and test.labels.tolist() == [0, 1, 1]
    assert train.classes == ["Car model 1", "Car model 98"] and test.classes == ["Car model 99", "Car model 196"]
    assert test.source(0) == str(tmp_path / "car_ims" / "000003.jpg")
    assert test[0][0].shape == (3, 224, 224)


def test_cars_wrong_mat_is_user_error(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "cars_annos.mat", {"something_else": np.zeros(3)})
    with pytest.raises(UserError, match="cars_annos.mat"):
        load_dataset("cars", "train", root=tmp_path)


def test_sop_lists(tmp_path):
    header = "image_id class_id super_class_id path\n"
    (tmp_path / "Ebay_train.txt").write_text(header + "1 1 1 bicycle_final/1_0.JPG\n2 1 1 bicycle_final/1_1.JPG\n")
    (tmp_path / "Ebay_test.txt").write_text(
        header + "1 11319 2 chair_final/9_0.JPG\n2 11319 2 chair_final/9_1.JPG\n3 11320 2 chair_final/10_0.JPG\n"
    )
    for rel in ["bicycle_final/1_0.JPG", "bicycle_final/1_1.JPG", "chair_final/9_0.JPG", "chair_final/9_1.JPG",
                "chair_final/10_0.JPG"]:  # fmt: skip
        save_image(tmp_path / rel)
    test = load_dataset("sop", "test", root=tmp_path)
    assert test.labels.tolist() == [0, 0, 1] and test.num_classes == 2
    assert test.classes == ["chair #11319", "chair #11320"]  # products are unnamed: category and class id
    assert test.source(2) == str(tmp_path / "chair_final" / "10_0.JPG")
    assert len(load_dataset("sop", "train", root=tmp_path)) == 2


def test_sop_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n1 2 x\n")
    with pytest.raises(UserError, match=r"Ebay_test.txt:2"):
        load_dataset("sop", "test", root=tmp_path)


# --- names -----------------------------------------------------------------------------------------------------


def test_parse_dataset_spec():
    assert parse_dataset_spec("fashion-mnist:test") == ("fashion-mnist", "test")
    assert parse_dataset_spec("sop:train") == ("sop", "train")
    for bad in ["fashion-mnist", "imagenet:test", "cub:val"]:
        with pytest.raises(UserError):
            parse_dataset_spec(bad)


def test_file_datasets_need_a_root_and_mnists_refuse_reshaping():
    assert set(DATASETS) == {"fashion-mnist", "mnist", "folder", "cub", "cars", "sop"}
    with pytest.raises(UserError, match="--data-root"):
        load_dataset("cub", "train")
    with pytest.raises(UserError, match="28x28"):
        load_dataset("mnist", "test", image_size=224)
