"""The dataset registry (fedmoe.data.registry): specs, lookup order, checks against the
spec, the in-process cache, dataset_info, and the real Fashion-MNIST when installed."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmoe.data import dataset_info, get_spec, load_dataset, registry, sources
from fedmoe.data.catalogue import DATASETS
from fedmoe.data.files import BuiltinSource, CifarFiles, IdxFiles
from fedmoe.errors import DataError

pytestmark = pytest.mark.usefixtures("data_env")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
"""Decompressed contents of Debian's files, as given in the issue."""


def one_line_error(excinfo: pytest.ExceptionInfo[DataError], *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, formats: Any) -> Any:
    """Register the unpinned IDX spec ``tiny-idx`` (shaped like ``random_splits(0)``)."""
    spec = formats.tiny_idx_spec()
    monkeypatch.setitem(DATASETS, spec.name, spec)
    return spec


# --------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert set(DATASETS) == {
        "mnist",
        "fashion-mnist",
        "emnist-digits",
        "emnist-balanced",
        "cifar10",
        "cifar100",
        "mnist1d",
        "digits",
    }


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_spec_is_consistent(name: str) -> None:
    spec = DATASETS[name]
    assert spec.name == name
    assert len(spec.class_names) == spec.num_classes
    assert len(set(spec.class_names)) == spec.num_classes
    assert spec.train_count > 0 and spec.test_count > 0
    assert np.dtype(spec.dtype) in (np.uint8, np.float32)
    assert (
        spec.url_base is not None or spec.manual_download or isinstance(spec.source, BuiltinSource)
    )
    hash(spec)  # specs key the in-process cache


def test_only_verified_checksums_are_pinned() -> None:
    pinned = {
        file.name: file.sha256
        for spec in DATASETS.values()
        if not isinstance(spec.source, BuiltinSource)
        for file in spec.source.downloads().values()
        if file.sha256 is not None
    }
    assert pinned == FASHION_MNIST_SHA256
    fashion = DATASETS["fashion-mnist"].source
    assert isinstance(fashion, IdxFiles)
    assert all(f.sha256 for f in fashion.downloads().values())


def test_emnist_files_are_transposed_and_named_as_published() -> None:
    source = DATASETS["emnist-balanced"].source
    assert isinstance(source, IdxFiles) and source.transpose
    assert source.test_images.name == "emnist-balanced-test-images-idx3-ubyte"
    assert DATASETS["emnist-balanced"].num_classes == 47


@pytest.mark.parametrize(
    ("alias", "name"),
    [("Fashion_MNIST", "fashion-mnist"), ("fmnist", "fashion-mnist"), ("CIFAR-10", "cifar10")],
)
def test_get_spec_normalises_names(alias: str, name: str) -> None:
    assert get_spec(alias).name == name


def test_unknown_dataset() -> None:
    with pytest.raises(DataError) as excinfo:
        get_spec("imagenet")
    one_line_error(excinfo, "unknown dataset 'imagenet'", "fashion-mnist", "mnist1d")


# --------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------


def test_search_dirs_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_env: Any) -> None:
    monkeypatch.setenv("FEDMOE_DATA", str(tmp_path / "env"))
    assert registry.search_dirs("fashion_mnist", tmp_path / "arg") == [
        tmp_path / "arg" / "fashion-mnist",
        tmp_path / "arg",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "env",
        data_env.system / "fashion-mnist",
        data_env.cache / "fashion-mnist",
    ]


def test_default_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEDMOE_SYSTEM_DATA")
    monkeypatch.delenv("FEDMOE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.system_data_root() == Path("/usr/share/datasets")
    assert registry.cache_root() == tmp_path / "xdg" / "fedmoe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.cache_root() == tmp_path / "home" / ".cache" / "fedmoe"


def test_lookup_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_env: Any, formats: Any, tiny: Any
) -> None:
    """data_dir beats FEDMOE_DATA beats the system root beats the cache."""
    places = {
        "arg": tmp_path / "arg" / "tiny-idx",
        "env": tmp_path / "env",  # files directly in $FEDMOE_DATA
        "system": data_env.system / "tiny-idx",
        "cache": data_env.cache / "tiny-idx",
    }
    for seed, directory in enumerate(places.values()):
        formats.write_idx_dataset(directory, formats.random_splits(0 if seed == 0 else seed))
    monkeypatch.setenv("FEDMOE_DATA", str(tmp_path / "env"))

    for winner, directory in places.items():
        args = {"data_dir": tmp_path / "arg"} if winner == "arg" else {}
        ds = load_dataset("tiny-idx", **args)
        assert ds.source == str(directory), winner
        if winner == "arg":
            np.testing.assert_array_equal(ds.x_train, formats.random_splits(0).x_train)
        for file in directory.iterdir():
            file.unlink()  # the next place in line must win now
        if winner == "arg":
            assert load_dataset("tiny-idx").source == str(places["env"])

    with pytest.raises(DataError) as excinfo:
        load_dataset("tiny-idx")
    one_line_error(excinfo, "tiny-idx: data files not found", str(places["cache"]))


@pytest.mark.parametrize("gz", [True, False])
def test_data_dir_accepts_files_directly_or_in_a_named_subdir(
    tmp_path: Path, formats: Any, tiny: Any, gz: bool
) -> None:
    formats.write_idx_dataset(tmp_path / "flat", formats.random_splits(0), gz=gz)
    formats.write_idx_dataset(tmp_path / "nested" / "tiny-idx", formats.random_splits(0), gz=gz)
    assert load_dataset("tiny-idx", tmp_path / "flat").source == str(tmp_path / "flat")
    nested = load_dataset("tiny-idx", str(tmp_path / "nested"))
    assert nested.source == str(tmp_path / "nested" / "tiny-idx")


def test_mixed_raw_and_gzipped_files(tmp_path: Path, formats: Any, tiny: Any) -> None:
    paths = formats.write_idx_dataset(tmp_path, formats.random_splits(0), gz=True)
    raw = paths["train-images-idx3-ubyte"]
    Path(str(raw).removesuffix(".gz")).write_bytes(gzip.decompress(raw.read_bytes()))
    raw.unlink()
    ds = load_dataset("tiny-idx", tmp_path)
    np.testing.assert_array_equal(ds.x_train, formats.random_splits(0).x_train)
    files = {f["role"]: f["path"] for f in dataset_info("tiny-idx", tmp_path)["files"]}
    assert files["train_images"] == str(tmp_path / "train-images-idx3-ubyte")
    assert files["test_images"] == str(tmp_path / "t10k-images-idx3-ubyte.gz")


def test_missing_fashion_mnist_says_how_to_get_it(data_env: Any) -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist")
    one_line_error(
        excinfo,
        "fashion-mnist: data files not found",
        "train-images-idx3-ubyte[.gz]",
        str(data_env.system / "fashion-mnist"),
        str(data_env.cache / "fashion-mnist"),
        "`fedmoe data fetch fashion-mnist`",
        "`apt-get install dataset-fashion-mnist`",
    )


def test_missing_emnist_says_it_is_a_manual_download() -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("emnist-digits")
    one_line_error(excinfo, "emnist-digits-train-images-idx3-ubyte[.gz]", "gzip.zip")


def test_partial_directory_is_reported(tmp_path: Path, formats: Any, tiny: Any) -> None:
    paths = formats.write_idx_dataset(tmp_path, formats.random_splits(0))
    paths["t10k-labels-idx1-ubyte"].unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("tiny-idx", tmp_path)
    one_line_error(excinfo, f"{tmp_path} lacks t10k-labels-idx1-ubyte[.gz]")


# --------------------------------------------------------------------------------------
# Checks against the spec
# --------------------------------------------------------------------------------------


def test_wrong_count_vs_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, formats: Any, tiny: Any
) -> None:
    monkeypatch.setitem(DATASETS, "tiny-idx", dataclasses.replace(tiny, train_count=21))
    formats.write_idx_dataset(tmp_path, formats.random_splits(0))
    with pytest.raises(DataError) as excinfo:
        load_dataset("tiny-idx", tmp_path)
    one_line_error(excinfo, "train-images-idx3-ubyte.gz", "(20, 1, 4, 3)", "(21, 1, 4, 3)")


def test_wrong_image_shape_vs_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, formats: Any, tiny: Any
) -> None:
    monkeypatch.setitem(DATASETS, "tiny-idx", dataclasses.replace(tiny, example_shape=(1, 3, 4)))
    formats.write_idx_dataset(tmp_path, formats.random_splits(0))
    with pytest.raises(DataError) as excinfo:
        load_dataset("tiny-idx", tmp_path)
    one_line_error(excinfo, "train-images-idx3-ubyte.gz", "tiny-idx has uint8 (20, 1, 3, 4)")


def test_label_out_of_range(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, formats: Any, tiny: Any
) -> None:
    monkeypatch.setitem(DATASETS, "tiny-idx", dataclasses.replace(tiny, num_classes=2))
    formats.write_idx_dataset(tmp_path, formats.random_splits(0))
    with pytest.raises(DataError) as excinfo:
        load_dataset("tiny-idx", tmp_path)
    one_line_error(excinfo, "train-labels-idx1-ubyte.gz", "label 2 out of range 0..1")


def test_image_label_count_mismatch(tmp_path: Path, formats: Any, tiny: Any) -> None:
    formats.write_idx_dataset(tmp_path, formats.random_splits(0))
    labels = formats.idx_bytes(np.zeros(9, np.uint8))
    formats.write_file(tmp_path / "t10k-labels-idx1-ubyte", labels, gz=True)
    with pytest.raises(DataError) as excinfo:
        load_dataset("tiny-idx", tmp_path)
    one_line_error(excinfo, "t10k-images-idx3-ubyte.gz: holds 10 images but", "9 labels")


def test_malformed_file_error_comes_through(tmp_path: Path, formats: Any, tiny: Any) -> None:
    paths = formats.write_idx_dataset(tmp_path, formats.random_splits(0))
    paths["train-labels-idx1-ubyte"].write_bytes(b"garbage")
    with pytest.raises(DataError) as excinfo:
        load_dataset("tiny-idx", tmp_path)
    one_line_error(excinfo, str(paths["train-labels-idx1-ubyte"]), "invalid or truncated gzip data")


def test_pinned_checksums_verified_and_mismatch_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, formats: Any
) -> None:
    splits = formats.random_splits(0)
    spec = formats.tiny_idx_spec(splits=splits, pinned=True)
    monkeypatch.setitem(DATASETS, spec.name, spec)
    formats.write_idx_dataset(tmp_path / "good", splits, gz=False)
    info = dataset_info("tiny-idx", tmp_path / "good")
    assert info["checksum"] == "verified"
    assert {f["checksum"] for f in info["files"]} == {"verified"}

    flipped = splits.x_test.copy()
    flipped[0, 0, 0, 0] ^= 1  # same shape, one pixel off: only the checksum can tell
    formats.write_idx_dataset(tmp_path / "bad", splits._replace(x_test=flipped), gz=True)
    with pytest.raises(DataError) as excinfo:
        load_dataset("tiny-idx", tmp_path / "bad")
    one_line_error(
        excinfo, "t10k-images-idx3-ubyte.gz", "checksum mismatch", spec.source.test_images.sha256
    )


# --------------------------------------------------------------------------------------
# Cache, info, read-only arrays
# --------------------------------------------------------------------------------------


def test_decoded_once_and_refreshed_when_a_file_is_replaced(
    tmp_path: Path, formats: Any, tiny: Any
) -> None:
    formats.write_idx_dataset(tmp_path / "a", formats.random_splits(0))
    first = load_dataset("tiny-idx", tmp_path / "a")
    assert load_dataset("tiny-idx", tmp_path / "a") is first
    assert not first.x_train.flags.writeable and not first.y_train.flags.writeable

    formats.write_idx_dataset(tmp_path / "b", formats.random_splits(5))
    for file in (tmp_path / "b").iterdir():
        os.replace(file, tmp_path / "a" / file.name)
    second = load_dataset("tiny-idx", tmp_path / "a")
    assert second is not first
    np.testing.assert_array_equal(second.x_train, formats.random_splits(5).x_train)


def test_dataset_info_is_json_and_complete(tmp_path: Path, formats: Any, tiny: Any) -> None:
    splits = formats.random_splits(0)
    formats.write_idx_dataset(tmp_path, splits)
    info = json.loads(json.dumps(dataset_info("tiny-idx", tmp_path)))
    assert info["name"] == "tiny-idx" and info["format"] == "idx"
    assert info["directory"] == str(tmp_path)
    assert [f["role"] for f in info["files"]] == [
        "train_images",
        "train_labels",
        "test_images",
        "test_labels",
    ]
    assert info["files"][0]["path"] == str(tmp_path / "train-images-idx3-ubyte.gz")
    assert info["shapes"] == {
        "x_train": [20, 1, 4, 3],
        "y_train": [20],
        "x_test": [10, 1, 4, 3],
        "y_test": [10],
    }
    assert info["num_classes"] == 3 and info["dtype"] == "uint8"
    assert info["class_counts"]["train"] == np.bincount(splits.y_train, minlength=3).tolist()
    assert info["class_counts"]["test"] == np.bincount(splits.y_test, minlength=3).tolist()
    assert info["checksum"] == "not pinned"


@pytest.mark.parametrize("kind", ["tarball", "folder"])
@pytest.mark.parametrize("base", ["cifar10", "cifar100"])
def test_cifar_through_the_registry(
    monkeypatch: pytest.MonkeyPatch, data_env: Any, formats: Any, base: str, kind: str
) -> None:
    spec = DATASETS[base]
    assert isinstance(spec.source, CifarFiles)
    splits = formats.cifar_splits(1, spec.num_classes)
    monkeypatch.setitem(DATASETS, base, formats.tiny_cifar_spec(base, splits))
    directory = data_env.cache / base
    if kind == "folder":
        formats.write_cifar_folder(directory, spec.source.layout, splits)
    else:
        directory.mkdir(parents=True)
        tarball = directory / spec.source.archive.download_name
        tarball.write_bytes(formats.cifar_tar_bytes(spec.source.layout, splits))

    ds = load_dataset(base)

    assert ds.source == str(directory) and ds.num_classes == spec.num_classes
    np.testing.assert_array_equal(ds.x_train, splits.x_train)
    np.testing.assert_array_equal(ds.y_test, splits.y_test)
    info = dataset_info(base)
    assert info["checksum"] == "not pinned" and info["format"] == "cifar-python"
    assert info["files"][0]["role"] == ("folder" if kind == "folder" else "archive")


def test_builtins_load_with_their_shapes() -> None:
    mnist1d = load_dataset("mnist1d")
    assert mnist1d.x_train.shape == (4000, 1, 40) and mnist1d.x_test.shape == (1000, 1, 40)
    assert mnist1d.x_train.dtype == np.float32 and mnist1d.source == "built-in"
    digits = load_dataset("digits")
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.input_shape == (1, 8, 8) and digits.class_names[3] == "3"
    info = dataset_info("digits")
    assert info["directory"] is None and info["files"] == []
    assert info["checksum"].startswith("built-in")
    assert sum(info["class_counts"]["train"]) == 1437


def test_builtin_checked_against_its_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(DATASETS["digits"], num_classes=5, class_names=("a",) * 5)
    monkeypatch.setitem(DATASETS, "digits", spec)
    with pytest.raises(DataError) as excinfo:
        load_dataset("digits")
    one_line_error(excinfo, "built-in digits", "out of range 0..4")


# --------------------------------------------------------------------------------------
# The real Fashion-MNIST (Debian's dataset-fashion-mnist)
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (/usr/share/datasets/fashion-mnist)",
)
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDMOE_SYSTEM_DATA")  # the real Debian location
    ds = load_dataset("fashion-mnist")
    assert ds.source == str(DEBIAN_FASHION_MNIST)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.num_classes == 10 and ds.class_names[0] == "T-shirt/top"
    info = dataset_info("fashion-mnist")
    assert info["checksum"] == "verified"
    assert info["class_counts"]["train"] == [6000] * 10
    assert info["class_counts"]["test"] == [1000] * 10
    assert ds.x_train.max() == 255  # real images, not blank
    sources.read_idx_labels(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
