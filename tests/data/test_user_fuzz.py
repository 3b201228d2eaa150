"""Property tests of the readers of the user's own files: corrupted, truncated, extended
and random files give a valid dataset or a one-line DataError naming the file, never
another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from userfiles import agnews_text, client_arrays, csv_text, npz_bytes, png_bytes, write_npz

from fedmoe.data import ArrayDataset, ReadOptions, clear_cache, load_dataset
from fedmoe.errors import DataError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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


#: Text that looks like CSV: separators, quotes, line breaks, numbers and words.
CSVISH = st.text(
    alphabet=st.sampled_from(list(',,,\n\n"" 0123456789.-+eEnaifbl\r\t;')), max_size=200
)


def check_dataset(ds: ArrayDataset) -> None:
    """The ArrayDataset contract."""
    assert ds.x_train.dtype in (np.uint8, np.float32, np.int64)
    assert ds.x_test.dtype == ds.x_train.dtype and ds.x_test.shape[1:] == ds.x_train.shape[1:]
    assert len(ds.x_train) == len(ds.y_train) >= 1 and len(ds.x_test) == len(ds.y_test) >= 1
    for y in (ds.y_train, ds.y_test):
        assert y.dtype == np.int64 and y.ndim == 1
        assert int(y.min()) >= 0 and int(y.max()) < ds.num_classes
    assert len(ds.class_names) == ds.num_classes
    if ds.x_train.dtype == np.float32:
        assert np.isfinite(ds.x_train).all() and np.isfinite(ds.x_test).all()
    if ds.clients is not None:
        rows = ds.clients
        assert len(rows.train) == len(ds.y_train) and len(rows.test) == len(ds.y_test)
        assert rows.train.min() >= 0 and rows.train.max() < rows.num_clients
        assert rows.test.min() >= -1 and rows.test.max() < rows.num_clients


def load_or_error(name: str, path: Path, options: ReadOptions | None = None) -> None:
    """Load ``name``; the only failure allowed is a one-line DataError naming ``path``."""
    clear_cache()
    try:
        ds = load_dataset(name, options=options)
    except DataError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert str(path) in message, message
        return
    check_dataset(ds)


def _npz_sample() -> bytes:
    arrays: dict[str, Any] = client_arrays(3, 3, 2)
    arrays["x_test"] = arrays["x_test"].astype(np.float32)
    return npz_bytes(**arrays)


@FUZZ
@given(data=st.data())
def test_npz_reader(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    path.write_bytes(data.draw(corrupted(_npz_sample())))
    load_or_error(f"npz:{path}", path)


_CSV_ROWS = [
    [1.5, "x", -2, "h1", "train"],
    [2, "y", 3, "h2", "test"],
    [3, "x", 0.5, "h1", "test"],
    [4, "y", 1, "h2", "train"],
]
_CSV_SAMPLE = csv_text(["a", "label", "b", "site", "split"], _CSV_ROWS).encode()


@FUZZ
@given(data=st.data(), client=st.booleans(), text=st.booleans())
def test_csv_reader(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, client: bool, text: bool
) -> None:
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    if text:
        path.write_text("a,label\n" + data.draw(CSVISH), newline="")
    else:
        path.write_bytes(data.draw(corrupted(_CSV_SAMPLE)))
    load_or_error(f"csv:{path}", path, ReadOptions(client="site" if client else ""))


_PNG = png_bytes(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))


@FUZZ
@given(data=st.data())
def test_image_folder_reader(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("img")
    for name in ("a", "b"):
        (root / name).mkdir()
        (root / name / "0.png").write_bytes(_PNG)
    (root / "b" / "1.png").write_bytes(data.draw(corrupted(_PNG)))
    load_or_error(f"images:{root}", root)


_AGNEWS = agnews_text([(1, "Stocks rally", "Markets up."), (2, "Rain", "Rain, rain")]).encode()


@FUZZ
@given(data=st.data())
def test_agnews_reader(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("ag")
    (root / "train.csv").write_bytes(data.draw(corrupted(_AGNEWS)))
    (root / "test.csv").write_bytes(_AGNEWS)
    if data.draw(st.booleans()):
        (root / "classes.txt").write_bytes(data.draw(corrupted(b"World\nSports\n")))
    load_or_error(f"agnews:{root}", root, ReadOptions(vocab_size=5, max_length=4))


@FUZZ
@given(data=st.data(), shared=st.booleans())
def test_client_files_reader(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, shared: bool
) -> None:
    root = tmp_path_factory.mktemp("clients")
    write_npz(root / "clients" / "1.npz", **client_arrays(0, 4, None))
    sample = npz_bytes(**client_arrays(1, 3, 2))
    target = root / ("test.npz" if shared else "clients/2.npz")
    if shared:
        sample = npz_bytes(x_test=np.ones((2, 3)), y_test=np.array([0, 1]))
        write_npz(root / "clients" / "2.npz", **client_arrays(1, 3, 2))
    target.write_bytes(data.draw(corrupted(sample)))
    load_or_error(f"clients:{root}", root)
