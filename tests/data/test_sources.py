"""The format readers (fedmoe.data.sources): round trips on tiny files in the published
formats, one clear DataError per kind of malformed file, and property tests that throw
corrupted and truncated files at every reader."""

from __future__ import annotations

import gzip
import os
import pickle
import random
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmoe.data import sources
from fedmoe.data.sources import CIFAR10, CIFAR100, CifarLayout
from fedmoe.errors import DataError


def assert_one_line_error(excinfo: pytest.ExceptionInfo[DataError], *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# --------------------------------------------------------------------------------------
# IDX round trips
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_round_trip(tmp_path: Path, formats: Any, gz: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    image_path = formats.write_file(tmp_path / "img", formats.idx_bytes(images), gz=gz)
    label_path = formats.write_file(tmp_path / "lab", formats.idx_bytes(labels), gz=gz)

    x = sources.read_idx_images(image_path)
    y = sources.read_idx_labels(label_path)

    assert x.dtype == np.uint8 and x.shape == (7, 1, 5, 3)
    np.testing.assert_array_equal(x[:, 0], images)
    assert y.dtype == np.int64 and y.shape == (7,)
    np.testing.assert_array_equal(y, labels)


def test_idx_transpose_swaps_height_and_width(tmp_path: Path, formats: Any) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = formats.write_file(tmp_path / "img", formats.idx_bytes(images), gz=True)

    x = sources.read_idx_images(path, transpose=True)

    assert x.shape == (2, 1, 4, 3)
    np.testing.assert_array_equal(x[:, 0], images.transpose(0, 2, 1))
    assert x.flags.c_contiguous


def test_idx_empty_file_is_allowed(tmp_path: Path, formats: Any) -> None:
    path = formats.write_file(tmp_path / "lab", formats.idx_bytes(np.zeros(0, np.uint8)), gz=False)
    assert sources.read_idx_labels(path).shape == (0,)


# --------------------------------------------------------------------------------------
# IDX errors
# --------------------------------------------------------------------------------------


def test_idx_wrong_magic(tmp_path: Path, formats: Any) -> None:
    path = formats.write_file(tmp_path / "lab", formats.idx_bytes(np.zeros(3, np.uint8)), gz=False)
    with pytest.raises(DataError) as excinfo:
        sources.read_idx_images(path)
    assert_one_line_error(excinfo, str(path), "wrong IDX magic number 0x00000801", "0x00000803")


def test_idx_truncated_payload(tmp_path: Path, formats: Any) -> None:
    data = formats.idx_bytes(np.zeros((4, 2, 2), np.uint8))[:-3]
    path = formats.write_file(tmp_path / "img", data, gz=True)
    with pytest.raises(DataError) as excinfo:
        sources.read_idx_images(path)
    assert_one_line_error(excinfo, str(path), "truncated", "4x2x2", "16 bytes", "holds 13")


def test_idx_truncated_header(tmp_path: Path, formats: Any) -> None:
    data = formats.idx_bytes(np.zeros((4, 2, 2), np.uint8))[:9]
    path = formats.write_file(tmp_path / "img", data, gz=False)
    with pytest.raises(DataError) as excinfo:
        sources.read_idx_images(path)
    assert_one_line_error(excinfo, str(path), "truncated IDX header")


def test_idx_trailing_bytes(tmp_path: Path, formats: Any) -> None:
    data = formats.idx_bytes(np.zeros(5, np.uint8)) + b"\x00\x00"
    path = formats.write_file(tmp_path / "lab", data, gz=False)
    with pytest.raises(DataError) as excinfo:
        sources.read_idx_labels(path)
    assert_one_line_error(excinfo, str(path), "too long", "holds 7")


def test_idx_bad_gzip(tmp_path: Path) -> None:
    path = tmp_path / "lab.gz"
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError) as excinfo:
        sources.read_idx_labels(path)
    assert_one_line_error(excinfo, str(path), "invalid or truncated gzip data")


def test_idx_truncated_gzip(tmp_path: Path, formats: Any) -> None:
    compressed = gzip.compress(formats.idx_bytes(np.arange(200, dtype=np.uint8)))
    path = tmp_path / "lab.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError) as excinfo:
        sources.read_idx_labels(path)
    assert_one_line_error(excinfo, str(path), "invalid or truncated gzip data")


def test_idx_gzip_data_under_a_raw_name_gets_a_hint(tmp_path: Path, formats: Any) -> None:
    path = tmp_path / "lab"
    path.write_bytes(gzip.compress(formats.idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(DataError) as excinfo:
        sources.read_idx_labels(path)
    assert_one_line_error(excinfo, str(path), "wrong IDX magic number", "not named .gz")


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_file(tmp_path: Path, make: str) -> None:
    path = tmp_path / "lab.gz"
    if make == "directory":
        path.mkdir()
    with pytest.raises(DataError) as excinfo:
        sources.read_idx_labels(path)
    assert_one_line_error(excinfo, str(path), "cannot read file")


def test_image_label_count_mismatch_names_both_files() -> None:
    with pytest.raises(DataError) as excinfo:
        sources.check_pair(np.zeros((3, 1, 2, 2)), np.zeros(2), "a/images", "a/labels")
    assert_one_line_error(excinfo, "a/images", "3 images", "a/labels", "2 labels")


def test_content_digest_is_of_decompressed_contents(tmp_path: Path) -> None:
    data = b"contents" * 100
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "f.gz").write_bytes(gzip.compress(data))
    (tmp_path / "f.part").write_bytes(gzip.compress(data))
    raw = sources.content_digest(tmp_path / "f")
    assert raw[1] == len(data)
    assert sources.content_digest(tmp_path / "f.gz") == raw
    assert sources.content_digest(tmp_path / "f.part", gzipped=True) == raw
    with pytest.raises(DataError) as excinfo:
        sources.content_digest(tmp_path / "missing.gz")
    assert_one_line_error(excinfo, "missing.gz: cannot read file")
    assert sources.content_digest(tmp_path / "f.gz", gzipped=False)[1] != len(data)
    with pytest.raises(DataError) as excinfo:
        sources.content_digest(tmp_path / "f", gzipped=True)
    assert_one_line_error(excinfo, "invalid or truncated gzip data")


# --------------------------------------------------------------------------------------
# CIFAR round trips
# --------------------------------------------------------------------------------------

LAYOUTS = {"cifar10": (CIFAR10, 10), "cifar100": (CIFAR100, 100)}


def write_cifar(formats: Any, tmp_path: Path, layout: CifarLayout, splits: Any, kind: str) -> Path:
    if kind == "folder":
        return formats.write_cifar_folder(tmp_path, layout, splits)  # type: ignore[no-any-return]
    name = "release.tar.gz" if kind == "tar.gz" else "release.tar"
    path = tmp_path / name
    path.write_bytes(formats.cifar_tar_bytes(layout, splits, gz=kind == "tar.gz"))
    return path


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "folder"])
@pytest.mark.parametrize("variant", sorted(LAYOUTS))
def test_cifar_round_trip(tmp_path: Path, formats: Any, variant: str, kind: str) -> None:
    layout, num_classes = LAYOUTS[variant]
    splits = formats.cifar_splits(3, num_classes)
    path = write_cifar(formats, tmp_path, layout, splits, kind)

    decoded = sources.read_cifar(path, layout)

    for got, want in zip(decoded, splits, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_cifar_pixel_layout_is_channel_planes(tmp_path: Path, formats: Any) -> None:
    """Row i of b'data' is 1024 red, 1024 green, 1024 blue values, each 32x32 row-major."""
    row = np.concatenate([np.full(1024, c, np.uint8) for c in (10, 20, 30)])
    row[1] = 99  # red, row 0, column 1
    data = formats.cifar_batch_bytes(row[None, :], np.array([4]), b"labels")
    path = tmp_path / "b"
    path.write_bytes(data)
    images, labels = sources.decode_cifar_batch(data, str(path), b"labels")
    assert images.shape == (1, 3, 32, 32) and labels.tolist() == [4]
    assert images[0, 0, 0, 1] == 99 and images[0, 0, 0, 0] == 10
    assert images[0, 1].min() == 20 and images[0, 2].max() == 30


# --------------------------------------------------------------------------------------
# CIFAR errors
# --------------------------------------------------------------------------------------


def test_cifar_tarball_missing_member(tmp_path: Path, formats: Any) -> None:
    splits = formats.cifar_splits(0, 100)
    path = tmp_path / "release.tar.gz"
    path.write_bytes(formats.cifar_tar_bytes(CIFAR100, splits))
    wrong = CifarLayout(CIFAR100.folder, ("train",), ("test", "extra"), b"fine_labels")
    with pytest.raises(DataError) as excinfo:
        sources.read_cifar(path, wrong)
    assert_one_line_error(excinfo, str(path), "lacks cifar-100-python/extra")


def test_cifar_folder_missing_member(tmp_path: Path, formats: Any) -> None:
    folder = formats.write_cifar_folder(tmp_path, CIFAR10, formats.cifar_splits(0, 10))
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as excinfo:
        sources.read_cifar(folder, CIFAR10)
    assert_one_line_error(excinfo, str(folder / "data_batch_3"), "missing")


def test_cifar_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        sources.read_cifar(tmp_path / "cifar-10-python.tar.gz", CIFAR10)
    assert_one_line_error(excinfo, "cifar-10-python.tar.gz: no such file or directory")


def test_cifar_corrupt_tarball(tmp_path: Path) -> None:
    path = tmp_path / "release.tar.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(300))
    with pytest.raises(DataError) as excinfo:
        sources.read_cifar(path, CIFAR10)
    assert_one_line_error(excinfo, str(path), "corrupt tarball")


def batch_error(data: bytes) -> pytest.ExceptionInfo[DataError]:
    with pytest.raises(DataError) as excinfo:
        sources.decode_cifar_batch(data, "dir/data_batch_1", b"labels")
    return excinfo


def pickled(obj: object) -> bytes:
    return pickle.dumps(obj)


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ([1, 2], "expected a dict"),
        ({b"labels": [1]}, "no b'data' entry"),
        ({b"data": np.zeros((1, 3072), np.uint8)}, "no b'labels' entry"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [1]}, "expected uint8 (N, 3072)"),
        ({b"data": np.zeros((1, 100), np.uint8), b"labels": [1]}, "expected uint8 (N, 3072)"),
        ({b"data": b"raw bytes", b"labels": [1]}, "expected uint8 (N, 3072)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "2 images but 1 labels"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1.5]}, "not a flat list of ints"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["a"]}, "not a flat list of ints"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [2**70]}, "b'labels'"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [[1, 2]]}, "not a flat list"),
    ],
)
def test_cifar_batch_with_wrong_contents(obj: object, problem: str) -> None:
    assert_one_line_error(batch_error(pickled(obj)), "dir/data_batch_1", problem)


def test_cifar_batch_not_a_pickle() -> None:
    assert_one_line_error(batch_error(b"not a pickle"), "dir/data_batch_1", "corrupt pickle")


def test_cifar_batch_refuses_arbitrary_globals(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    excinfo = batch_error(pickle.dumps({b"data": Exploit(), b"labels": []}))
    assert_one_line_error(excinfo, "corrupt pickle", "refusing to load global")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batch_any_pickle_protocol(protocol: int) -> None:
    batch = {b"data": np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072), b"labels": [3, 1]}
    images, labels = sources.decode_cifar_batch(
        pickle.dumps(batch, protocol=protocol), "b", b"labels"
    )
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 1]


def test_cifar_batch_with_str_keys_is_accepted() -> None:
    batch = {"data": np.zeros((1, 3072), np.uint8), "fine_labels": np.array([7])}
    _, labels = sources.decode_cifar_batch(pickle.dumps(batch), "b", b"fine_labels")
    assert labels.dtype == np.int64 and labels.tolist() == [7]


# --------------------------------------------------------------------------------------
# Built-ins
# --------------------------------------------------------------------------------------


def test_mnist1d_is_deterministic_and_leaves_global_rngs_alone() -> None:
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)

    first = sources.generate_mnist1d()

    assert (np.random.random(), random.random()) == (expected_np, expected_py)
    assert first.x_train.shape == (4000, 1, 40) and first.x_train.dtype == np.float32
    assert first.x_test.shape == (1000, 1, 40)
    assert first.y_train.dtype == np.int64 and set(np.unique(first.y_train)) == set(range(10))
    second = sources.generate_mnist1d()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mnist1d_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(DataError) as excinfo:
        sources.generate_mnist1d()
    assert_one_line_error(excinfo, "pip install 'fedmoe[datasets]'")


def test_digits_split_and_scaling() -> None:
    splits = sources.load_sklearn_digits()
    assert splits.x_train.shape == (1437, 1, 8, 8) and splits.x_test.shape == (360, 1, 8, 8)
    assert splits.x_train.dtype == np.uint8 and splits.y_train.dtype == np.int64
    assert splits.x_train.max() == 255 and splits.x_train.min() == 0
    assert set(np.unique(splits.y_test)) == set(range(10))
    from sklearn.datasets import load_digits

    bunch = load_digits()
    np.testing.assert_array_equal(splits.y_test, bunch.target[1437:])
    np.testing.assert_array_equal(
        splits.x_train[:, 0], np.rint(bunch.images[:1437] * 255 / 16).astype(np.uint8)
    )


def test_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError) as excinfo:
        sources.load_sklearn_digits()
    assert_one_line_error(excinfo, "pip install 'fedmoe[datasets]'")


# --------------------------------------------------------------------------------------
# Property tests: corrupted and truncated files give DataError or a valid result
# --------------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def corrupted(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with random byte flips, truncated, extended, or replaced by noise."""
    how = draw(st.sampled_from(["flip", "truncate", "extend", "noise", "flip+truncate"]))
    data = bytearray(original)
    if "flip" in how:
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= draw(st.integers(1, 255))
    if "truncate" in how:
        data = data[: draw(st.integers(0, len(data) - 1))]
    if how == "extend":
        data += draw(st.binary(min_size=1, max_size=16))
    if how == "noise":
        data = bytearray(draw(st.binary(max_size=256)))
    return bytes(data)


def idx_sample(formats: Any, images: bool) -> bytes:
    rng = np.random.default_rng(7)
    if images:
        return formats.idx_bytes(rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8))  # type: ignore[no-any-return]
    return formats.idx_bytes(rng.integers(0, 10, size=3).astype(np.uint8))  # type: ignore[no-any-return]


def read_or_data_error(read: Any, path: Path, **kwargs: Any) -> Any:
    """Run a reader; the only failure allowed is a one-line DataError naming the file."""
    try:
        return read(path, **kwargs)
    except DataError as exc:
        message = str(exc)
        assert "\n" not in message and str(path) in message
        return None


@FUZZ
@given(data=st.data(), gz=st.booleans(), images=st.booleans())
def test_idx_readers_only_raise_data_error(
    tmp_path_factory: pytest.TempPathFactory,
    formats: Any,
    data: st.DataObject,
    gz: bool,
    images: bool,
) -> None:
    original = idx_sample(formats, images)
    directory = tmp_path_factory.mktemp("idx")
    if gz:
        compressed = gzip.compress(original, mtime=0)
        corrupt_compressed = data.draw(st.booleans())
        if corrupt_compressed:
            payload = data.draw(corrupted(compressed))
        else:
            payload = gzip.compress(data.draw(corrupted(original)), mtime=0)
        path = directory / "file.gz"
    else:
        payload = data.draw(corrupted(original))
        path = directory / "file"
    path.write_bytes(payload)
    reader = sources.read_idx_images if images else sources.read_idx_labels
    result = read_or_data_error(reader, path)
    if result is not None:
        assert result.dtype == (np.uint8 if images else np.int64)
        assert result.ndim == (4 if images else 1)


@FUZZ
@given(
    header=st.sampled_from([0x801, 0x803]),
    dims=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=3),
    payload=st.binary(max_size=64),
)
def test_idx_reader_survives_any_header(
    tmp_path_factory: pytest.TempPathFactory, header: int, dims: list[int], payload: bytes
) -> None:
    """Valid magic, random dimensions (up to 4 GiB each) and payload: no huge allocation."""
    path = tmp_path_factory.mktemp("idxh") / "file"
    path.write_bytes(struct.pack(f">I{len(dims)}I", header, *dims) + payload)
    reader = sources.read_idx_images if header == 0x803 else sources.read_idx_labels
    read_or_data_error(reader, path)


def cifar_sample(formats: Any, gz: bool) -> bytes:
    splits = formats.cifar_splits(11, 100, n_train=2, n_test=1)
    return formats.cifar_tar_bytes(CIFAR100, splits, gz=gz)  # type: ignore[no-any-return]


def _check_cifar_result(result: Any) -> None:
    if result is not None:
        x_train, y_train, x_test, y_test = result
        assert x_train.dtype == np.uint8 and x_train.shape[1:] == (3, 32, 32)
        assert y_train.dtype == np.int64 and len(y_train) == len(x_train)
        assert len(y_test) == len(x_test)


@FUZZ
@given(data=st.data(), gz=st.booleans())
def test_cifar_tarball_reader_only_raises_data_error(
    tmp_path_factory: pytest.TempPathFactory, formats: Any, data: st.DataObject, gz: bool
) -> None:
    path = tmp_path_factory.mktemp("tar") / ("release.tar.gz" if gz else "release.tar")
    path.write_bytes(data.draw(corrupted(cifar_sample(formats, gz))))
    _check_cifar_result(read_or_data_error(sources.read_cifar, path, layout=CIFAR100))


_CIFAR_MEMBER = pickle.dumps(
    {b"data": np.arange(3072, dtype=np.uint8)[None, :], b"fine_labels": [3], b"filenames": [b"x"]}
)
_CIFAR_MEMBER_PROTOCOL_2 = pickle.dumps(
    {b"data": np.arange(3072, dtype=np.uint8)[None, :], b"fine_labels": [3]}, protocol=2
)


@FUZZ
@given(data=st.data(), protocol_2=st.booleans())
def test_cifar_folder_reader_only_raises_data_error(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, protocol_2: bool
) -> None:
    folder = tmp_path_factory.mktemp("folder")
    original = _CIFAR_MEMBER_PROTOCOL_2 if protocol_2 else _CIFAR_MEMBER
    (folder / "train").write_bytes(data.draw(corrupted(original)))
    (folder / "test").write_bytes(original)
    try:
        result = sources.read_cifar(folder, CIFAR100)
    except DataError as exc:
        assert "\n" not in str(exc) and str(folder) in str(exc)
        result = None
    _check_cifar_result(result)
