"""Readers of the user's own files (npz, CSV, image folders, AG News CSV, one npz per
client) through ``load_dataset("KIND:PATH")``: what they decode to, and one one-line
DataError naming the file per kind of malformed file."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from userfiles import (
    assert_one_line,
    client_arrays,
    npz_bytes,
    png_bytes,
    write_agnews,
    write_csv,
    write_images,
    write_npz,
)

from fedmoe.data import ReadOptions, clear_cache, dataset_info, load_dataset
from fedmoe.data.holdout import held_out_count
from fedmoe.data.labels import natural_sorted
from fedmoe.data.textcsv import build_vocabulary, encode, tokenize
from fedmoe.data.userdata import is_user_name, parse_name
from fedmoe.errors import DataError


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    clear_cache()
    yield
    clear_cache()


def fails(name: str, *parts: str, **kwargs: Any) -> None:
    """Loading ``name`` fails with a one-line DataError holding ``parts``."""
    with pytest.raises(DataError) as info:
        load_dataset(name, **kwargs)
    assert_one_line(info.value, *parts)


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------


def test_names_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_name("fashion-mnist") is None and parse_name("C:\\data\\x.npz") is None
    assert parse_name(" CSV:a.csv ") == ("csv", "a.csv")
    assert is_user_name("npz:x.npz") and not is_user_name("nope:x") and not is_user_name("mnist")
    fails("nope:x.npz", "unknown data format 'nope'", "npz:PATH")
    fails("csv:  ", "names no path")
    fails("npz:missing.npz", "missing.npz", "no such file")
    fails(f"images:{tmp_path}/missing", "no such folder")
    write_npz(tmp_path / "d.npz", **client_arrays(0, 4, 2))
    fails(f"images:{tmp_path}/d.npz", "names a folder")
    fails(f"npz:{tmp_path}", "names a file")
    # A relative path is relative to data_dir, else to the current directory.
    assert load_dataset("npz:d.npz", tmp_path).source == str(tmp_path / "d.npz")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("npz:d.npz")
    assert ds.name == "npz:d.npz" and ds.source == str(tmp_path / "d.npz")


def test_decoded_datasets_are_cached_read_only_and_reread_when_changed(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", **client_arrays(0, 4, 2))
    first = load_dataset(f"npz:{path}")
    assert load_dataset(f"npz:{path}") is first
    with pytest.raises(ValueError, match="read-only"):
        first.x_train[0, 0] = 1.0
    write_npz(path, **client_arrays(1, 6, 2))
    assert len(load_dataset(f"npz:{path}").y_train) == 6
    # Options are part of the key.
    csv = write_csv(tmp_path / "t.csv", ["a", "label"], [[i, i % 2] for i in range(10)])
    a = load_dataset(f"csv:{csv}", options=ReadOptions(test_fraction=0.2))
    b = load_dataset(f"csv:{csv}", options=ReadOptions(test_fraction=0.5))
    assert (len(a.y_test), len(b.y_test)) == (2, 5)


# --------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------


def test_npz_round_trip_and_label_remapping(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(6, 2, 3)), rng.normal(size=(3, 2, 3))
    path = write_npz(
        tmp_path / "d.npz",
        x_train=x_train,
        y_train=np.array([7, 3, 9, 3, 7, 9]),
        x_test=np.asfortranarray(x_test),
        y_test=np.array([9, 9, 3], dtype=np.uint8),
    )
    ds = load_dataset(f"npz:{path}")
    assert ds.x_train.dtype == np.float32 and ds.input_shape == (2, 3)
    np.testing.assert_allclose(ds.x_train, x_train, rtol=1e-6)
    np.testing.assert_allclose(ds.x_test, x_test, rtol=1e-6)
    assert ds.class_names == ("3", "7", "9") and ds.num_classes == 3
    assert ds.y_train.tolist() == [1, 0, 2, 0, 1, 2] and ds.y_test.tolist() == [2, 2, 0]
    assert ds.y_train.dtype == np.int64 and ds.clients is None and ds.vocabulary == ()
    # Labels already 0..C-1 are kept; uint8 inputs stay uint8; class_names are used.
    pixels = rng.integers(0, 256, size=(4, 1, 2, 2), dtype=np.uint8)
    write_npz(
        path,
        x_train=pixels,
        y_train=np.array([1, 0, 1, 0]),
        x_test=pixels[:2],
        y_test=np.array([0, 2]),
        class_names=np.array(["cat", "dog", "eel"]),
    )
    ds = load_dataset(f"npz:{path}")
    assert ds.x_train.dtype == np.uint8 and (ds.x_train == pixels).all()
    assert ds.y_train.tolist() == [1, 0, 1, 0] and ds.class_names == ("cat", "dog", "eel")


def _npz(tmp_path: Path, **changes: Any) -> str:
    arrays: dict[str, Any] = client_arrays(0, 4, 3) | changes
    arrays = {k: v for k, v in arrays.items() if v is not None}
    return f"npz:{write_npz(tmp_path / 'd.npz', **arrays)}"


def test_npz_errors_are_one_line(tmp_path: Path) -> None:
    path = str(tmp_path / "d.npz")
    fails(_npz(tmp_path, y_test=None), path, "lacks y_test", "holds x_test, x_train, y_train")
    fails(_npz(tmp_path, x_train=np.array([None, 1])), "(x_train)", "Python objects")
    fails(_npz(tmp_path, x_train=np.ones((4, 3), np.int32)), "(x_train)", "float or uint8")
    fails(_npz(tmp_path, y_train=np.ones(4)), "(y_train)", "1-D integer")
    fails(_npz(tmp_path, y_train=np.ones(3, int)), "(y_train)", "holds 3 labels for 4 examples")
    fails(_npz(tmp_path, x_train=np.ones(4)), "(x_train)", "shape (4,)", "(N, F)")
    fails(_npz(tmp_path, x_test=np.ones((3, 5))), "(x_test)", "(5,)", "x_train holds")
    fails(_npz(tmp_path, x_test=np.full((3, 3), np.nan)), "(x_test)", "non-finite")
    fails(_npz(tmp_path, x_train=np.full((4, 3), 1e300)), "(x_train)", "float32's range")
    empty = {"x_train": np.ones((0, 3)), "y_train": np.ones(0, int)}
    fails(_npz(tmp_path, **empty), "(x_train)", "holds no examples")
    fails(_npz(tmp_path, class_names=np.array(["a"])), "(class_names)", "names 1 classes")
    Path(path).write_bytes(b"not a zip file at all")
    fails(f"npz:{path}", path, "not an .npz archive")
    # A member whose header promises more data than it holds.
    good = npz_bytes(**client_arrays(0, 4, 3))
    with (
        zipfile.ZipFile(tmp_path / "cut.npz", "w") as out,
        zipfile.ZipFile(io.BytesIO(good)) as src,
    ):
        for info in src.infolist():
            data = src.read(info)
            out.writestr(info.filename, data[:-8] if info.filename == "x_train.npy" else data)
    fails(f"npz:{tmp_path / 'cut.npz'}", "(x_train)", "truncated", "96 bytes", "holds 88")


# --------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------


def test_csv_with_a_split_column(tmp_path: Path) -> None:
    rows = [
        ["1.5", "cat", "train", "-2"],
        ["2", "dog", "TEST", "0"],
        ["", "", "", ""][:0],  # a blank line is skipped
        ["3e2", "cat", "train ", "7"],
        ["-1", "eel", "test", "1"],
        ["4", "dog", "train", " 8.25 "],
    ]
    path = write_csv(tmp_path / "t.csv", ["a", "label", "split", "b"], rows)
    ds = load_dataset(f"csv:{path}")
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape == (3, 2)
    assert ds.x_train.tolist() == [[1.5, -2.0], [300.0, 7.0], [4.0, 8.25]]
    assert ds.x_test.tolist() == [[2.0, 0.0], [-1.0, 1.0]]
    assert ds.class_names == ("cat", "dog", "eel")
    assert ds.y_train.tolist() == [0, 0, 1] and ds.y_test.tolist() == [1, 2]


def test_csv_label_option_integer_labels_bom_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbfx,"y, the class"\n"1.0",10\n2,-5\n3,10\n4,10\n5,-5\n')
    ds = load_dataset(f"csv:{path}", options=ReadOptions(label="y, the class"))
    assert ds.class_names == ("-5", "10") and ds.num_classes == 2
    assert sorted(ds.x_train[:, 0].tolist() + ds.x_test[:, 0].tolist()) == [1, 2, 3, 4, 5]


def test_csv_test_fraction_is_seeded_and_per_client(tmp_path: Path) -> None:
    rows = [[i, i % 3, f"h{i % 4}"] for i in range(41)]
    plain = write_csv(tmp_path / "p.csv", ["a", "label"], [r[:2] for r in rows])
    whole = load_dataset(f"csv:{plain}", options=ReadOptions(test_fraction=0.25))
    assert len(whole.y_test) == held_out_count(41, 0.25) == 10 and whole.clients is None
    again = load_dataset(f"csv:{plain}", options=ReadOptions(test_fraction=0.25))
    other = load_dataset(f"csv:{plain}", options=ReadOptions(test_fraction=0.25, seed=1))
    assert again is whole
    assert sorted(whole.x_test[:, 0]) != sorted(other.x_test[:, 0])
    # Train rows keep the file's order.
    assert (np.diff(whole.x_train[:, 0]) > 0).all()

    path = write_csv(tmp_path / "t.csv", ["a", "label", "site"], rows)
    fails(f"csv:{path}", "line 2 column 'site': 'h0' is not a number", "client-id")
    ds = load_dataset(f"csv:{path}", options=ReadOptions(client="site", test_fraction=0.25))
    rows_of = ds.clients
    assert rows_of is not None and rows_of.names == ("h0", "h1", "h2", "h3")
    for k in range(4):
        n = sum(1 for r in rows if r[2] == f"h{k}")
        assert (rows_of.test == k).sum() == held_out_count(n, 0.25)
        assert (rows_of.train == k).sum() + (rows_of.test == k).sum() == n
        # Every row of client k is one of its own: a % 4 == k.
        assert (ds.x_train[rows_of.train == k, 0] % 4 == k).all()
        assert (ds.x_test[rows_of.test == k, 0] % 4 == k).all()
    assert rows_of.global_test.tolist() == list(range(len(ds.y_test)))


def test_csv_client_ids_are_in_natural_order(tmp_path: Path) -> None:
    rows = [[i, i % 2, f"site{[10, 2, 1][i % 3]}"] for i in range(30)]
    path = write_csv(tmp_path / "t.csv", ["a", "label", "site"], rows)
    ds = load_dataset(f"csv:{path}", options=ReadOptions(client="site"))
    assert ds.clients is not None and ds.clients.names == ("site1", "site2", "site10")
    assert natural_sorted(["b10", "B2", "a", "b2"]) == ["a", "B2", "b2", "b10"]


@pytest.mark.parametrize(
    ("text", "options", "parts"),
    [
        ("a,label\n1,0\n2\n", {}, ["line 3 has 1 fields but the header has 2"]),
        ("a,label\n1,0\n\n2,1,5\n", {}, ["line 4 has 3 fields"]),
        ("a,b,label\n1,2,0\n3,x,1\n", {}, ["line 3 column 'b': 'x' is not a number"]),
        ("a,label\n,0\n", {}, ["line 2 column 'a': '' is not a number"]),
        ("a,label\nnan,0\n", {}, ["line 2 column 'a': 'nan' is not a finite number"]),
        ("a,label\n1e39,0\n1,1\n", {}, ["line 2 column 'a': beyond float32's range"]),
        ("a,y\n1,0\n", {}, ["no label column 'label'", "'a', 'y'", "data.label"]),
        ("a,label\n1,0\n", {"client": "site"}, ["no client-id column 'site'", "data.client"]),
        ("a,label,site\n1,0,\n", {"client": "site"}, ["line 2 column 'site': empty client id"]),
        ("a,label\n1, \n", {}, ["line 2 column 'label': empty label"]),
        ("a,label,split\n1,0,train\n2,1,val\n", {}, ["line 3 column 'split': 'val'"]),
        ("a,label,split\n1,0,train\n2,1,train\n", {}, ["no test rows"]),
        ("a,a,label\n1,2,0\n", {}, ["column 'a' appears twice"]),
        ("a,,label\n1,2,0\n", {}, ["column 2 of the header has no name"]),
        ("label\n0\n1\n", {}, ["no feature columns besides 'label'"]),
        ("a,label\n", {}, ["no data rows"]),
        ("", {}, ["empty file"]),
        ("a,label\n1,0\n", {}, ["the data has 1 example", "at least 2"]),
        ("a,label,site\n1,0,x\n2,0,y\n3,1,y\n", {"client": "site"}, ["client 'x' has 1 example"]),
        ('a,label\n"1,0\n', {}, ["line 2 has 1 fields"]),
        ('a,label\n1,"' + "x" * 140_000 + '"\n', {}, ["line 2: malformed CSV", "field limit"]),
    ],
)
def test_csv_errors_are_one_line(
    tmp_path: Path, text: str, options: dict[str, Any], parts: list[str]
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    fails(f"csv:{path}", str(path), *parts, options=ReadOptions(**options))


def test_csv_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,label\n1,caf\xe9\n")
    fails(f"csv:{path}", str(path), "not UTF-8 text", "offset 13")


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------


def _pixels(seed: int, n: int, shape: tuple[int, ...] = (5, 4, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


def test_image_folders_with_train_and_test(tmp_path: Path) -> None:
    classes = {"10": _pixels(0, 2), "2": _pixels(1, 3), "cat": _pixels(2, 1)}
    write_images(tmp_path / "train", classes)
    write_images(tmp_path / "test", {"2": _pixels(3, 2), "cat": _pixels(4, 1)})
    (tmp_path / "train" / "2" / "notes.txt").write_text("ignored")
    (tmp_path / "train" / ".hidden").mkdir()
    ds = load_dataset(f"images:{tmp_path}")
    assert ds.class_names == ("2", "10", "cat") and ds.num_classes == 3
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (6, 3, 5, 4)
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 2] and ds.y_test.tolist() == [0, 0, 2]
    expected = [*classes["2"], *classes["10"], *classes["cat"]]
    np.testing.assert_array_equal(ds.x_train, np.stack(expected).transpose(0, 3, 1, 2))


def test_image_folder_without_split_greyscale_bilevel_palette_and_jpeg(tmp_path: Path) -> None:
    grey = _pixels(0, 10, (6, 7))
    write_images(tmp_path / "a", {"x": grey[:5], "y": grey[5:]})
    ds = load_dataset(f"images:{tmp_path / 'a'}", options=ReadOptions(test_fraction=0.3))
    assert ds.x_train.shape == (7, 1, 6, 7) and ds.x_test.shape == (3, 1, 6, 7)
    pool = {p.tobytes() for p in grey}
    assert {x[0].tobytes() for x in (*ds.x_train, *ds.x_test)} == pool

    from PIL import Image

    (tmp_path / "b" / "c").mkdir(parents=True)
    Image.fromarray(grey[0] > 127).save(tmp_path / "b" / "c" / "0.png")
    Image.fromarray(grey[1] > 127).save(tmp_path / "b" / "c" / "1.png")
    ds = load_dataset(f"images:{tmp_path / 'b'}")
    assert set(np.unique(np.concatenate([ds.x_train.ravel(), ds.x_test.ravel()]))) <= {0, 255}
    for kind in ("png", "JPG"):
        (tmp_path / kind / "c").mkdir(parents=True)
        for i, rgb in enumerate(_pixels(5, 2)):
            image = Image.fromarray(rgb)
            (image.convert("P") if kind == "png" else image).save(
                tmp_path / kind / "c" / f"{i}.{kind}"
            )
        ds = load_dataset(f"images:{tmp_path / kind}")
        assert ds.input_shape == (3, 5, 4) and len(ds.y_train) + len(ds.y_test) == 2


def test_image_folder_errors_are_one_line(tmp_path: Path) -> None:
    root = tmp_path / "r"
    written = write_images(root, {"a": _pixels(0, 2), "b": _pixels(1, 2)})
    first = written["a"][0]
    odd = written["b"][1]
    odd.write_bytes(png_bytes(_pixels(2, 1, (5, 5, 3))[0]))
    fails(f"images:{root}", str(odd), "image is 5x5 RGB", f"the first image, {first}, is 4x5 RGB")
    odd.write_bytes(png_bytes(_pixels(2, 1, (5, 4))[0]))
    fails(f"images:{root}", str(odd), "4x5 L", "one size and mode")
    odd.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    fails(f"images:{root}", str(odd), "undecodable image")
    odd.write_bytes(png_bytes(np.zeros((5, 4), np.uint16), "I;16"))
    written["a"][0].write_bytes(png_bytes(np.zeros((5, 4), np.uint16), "I;16"))
    fails(f"images:{root}", str(first), "mode I;16 is not supported")
    (root / "empty").mkdir()
    fails(f"images:{root}", str(root / "empty"), "empty class folder")
    fails(f"images:{tmp_path / 'none'}", "no such folder")
    (tmp_path / "flat").mkdir()
    fails(f"images:{tmp_path / 'flat'}", "no class folders")
    split = tmp_path / "s"
    write_images(split / "train", {"a": _pixels(0, 2)})
    fails(f"images:{split}", "has train/ but no test/")
    write_images(split / "test", {"b": _pixels(0, 1)})
    fails(f"images:{split}", str(split / "test" / "b"), "test class 'b' has no folder")


# --------------------------------------------------------------------------------------
# AG News CSV
# --------------------------------------------------------------------------------------


def test_tokenizer_vocabulary_and_encoding() -> None:
    assert tokenize("Wall St. Bears' claw-back (Reuters)!") == [
        "wall", "st", ".", "bears", "'", "claw", "-", "back", "(", "reuters", ")", "!",
    ]  # fmt: skip
    vocabulary = build_vocabulary(["b a b", "c b a d"], vocab_size=3)
    assert vocabulary == ("<pad>", "<unk>", "b", "a", "c")  # ties alphabetical
    ids = encode(["a z b", "b b b b b"], vocabulary, max_length=4)
    assert ids.dtype == np.int64 and ids.tolist() == [[3, 1, 2, 0], [2, 2, 2, 2]]


def test_agnews_round_trip(tmp_path: Path) -> None:
    train = [(3, "Stocks rally", "Markets up, again."), (1, "Rain", "Rain, rain and rain")]
    test = [(1, "Stocks", "unseen words only"), (3, "x", 'quote "inside"')]
    write_agnews(tmp_path, train, test, classes=["World", "Sports", "Business", "Sci/Tech"])
    ds = load_dataset(f"agnews:{tmp_path}", options=ReadOptions(max_length=5, vocab_size=50))
    assert ds.num_classes == 4 and ds.class_names[2] == "Business"
    assert ds.y_train.tolist() == [2, 0] and ds.y_test.tolist() == [0, 2]
    assert ds.x_train.dtype == np.int64 and ds.x_train.shape == (2, 5) and ds.input_shape == (5,)
    vocab = ds.vocabulary
    assert vocab[:3] == ("<pad>", "<unk>", "rain")  # 4 times in train
    assert "unseen" not in vocab and "inside" not in vocab  # train only
    words = [vocab[i] for i in ds.x_train[1]]
    assert words == ["rain", "rain", ",", "rain", "and"]
    assert ds.x_test[0].tolist() == [vocab.index("stocks"), 1, 1, 1, 0]
    assert len(ds.vocabulary_digest) == 64
    # Without classes.txt, classes are named by their index (unused ones skipped).
    (tmp_path / "classes.txt").unlink()
    clear_cache()
    ds = load_dataset(f"agnews:{tmp_path}")
    assert ds.class_names == ("1", "3") and ds.y_train.tolist() == [1, 0]
    assert ds.x_train.shape == (2, 64)


def test_agnews_errors_are_one_line(tmp_path: Path) -> None:
    write_agnews(tmp_path, [(1, "a", "b")], [(1, "c", "d")], classes=["only"])
    train = tmp_path / "train.csv"
    train.write_text('"1","a","b"\n"1","no description"\n')
    fails(f"agnews:{tmp_path}", str(train), "line 2 has 2 columns", "AG News rows have 3")
    train.write_text('"1","a","b"\n"0","a","b"\n')
    fails(f"agnews:{tmp_path}", "line 2: class index '0' is not an integer in 1..")
    train.write_text('"one","a","b"\n')
    fails(f"agnews:{tmp_path}", "line 1: class index 'one'")
    train.write_text('"2","a","b"\n')
    fails(f"agnews:{tmp_path}", "line 1: class index 2 but classes.txt names 1")
    train.write_text("")
    fails(f"agnews:{tmp_path}", str(train), "holds no examples")
    train.unlink()
    fails(f"agnews:{tmp_path}", str(train), "missing", "train.csv and test.csv")


# --------------------------------------------------------------------------------------
# One npz per client
# --------------------------------------------------------------------------------------


def test_client_files(tmp_path: Path) -> None:
    parts = {"b10": client_arrays(0, 5, 2), "b2": client_arrays(1, 6, None)}
    parts["a"] = client_arrays(2, 4, 3)
    parts["a"]["y_train"] = parts["a"]["y_train"] + 5  # a label only client "a" has
    for name, arrays in parts.items():
        write_npz(tmp_path / "clients" / f"{name}.npz", **arrays)
    (tmp_path / "clients" / "README").write_text("ignored")
    ds = load_dataset(f"clients:{tmp_path}", options=ReadOptions(test_fraction=0.5))
    rows = ds.clients
    assert rows is not None and rows.names == ("a", "b2", "b10")
    assert np.bincount(rows.train).tolist() == [4, 3, 5]  # b2 held out 3 of its 6
    assert np.bincount(rows.test).tolist() == [3, 3, 2]
    assert rows.global_test.tolist() == list(range(8))  # the union of the clients' tests
    np.testing.assert_allclose(ds.x_train[:4], parts["a"]["x_train"], rtol=1e-6)
    np.testing.assert_allclose(ds.x_test[6:], parts["b10"]["x_test"], rtol=1e-6)
    labels = np.concatenate([parts["a"]["y_train"], parts["b10"]["y_train"]])
    assert ds.class_names == tuple(str(v) for v in np.unique(np.concatenate(
        [labels, parts["b2"]["y_train"], parts["a"]["y_test"], parts["b10"]["y_test"]]
    )))  # fmt: skip
    # A shared test file is the global test set and belongs to no client.
    write_npz(tmp_path / "test.npz", **{"x_test": np.ones((7, 3)), "y_test": np.zeros(7, int)})
    ds = load_dataset(f"clients:{tmp_path}", options=ReadOptions(test_fraction=0.5))
    assert ds.clients is not None and ds.clients.global_test.tolist() == list(range(7))
    assert ds.clients.test.tolist() == [-1] * 7 + [0, 0, 0, 1, 1, 1, 2, 2]
    assert ds.global_test.tolist() == list(range(7)) and len(ds.y_test) == 15
    info = dataset_info(f"clients:{tmp_path}", options=ReadOptions(test_fraction=0.5))
    assert info["clients"] == [
        {"name": "a", "train": 4, "test": 3},
        {"name": "b2", "train": 3, "test": 3},
        {"name": "b10", "train": 5, "test": 2},
    ]
    assert info["global_test"] == 7 and info["format"] == "clients"


def test_client_file_errors_are_one_line(tmp_path: Path) -> None:
    fails(f"clients:{tmp_path}", "no clients/ folder")
    (tmp_path / "clients").mkdir()
    fails(f"clients:{tmp_path}", "holds no <id>.npz client files")
    write_npz(tmp_path / "clients" / "1.npz", **client_arrays(0, 4, 2))
    bad = tmp_path / "clients" / "2.npz"
    write_npz(bad, **client_arrays(1, 4, 2, features=5))
    fails(f"clients:{tmp_path}", f"{bad} (x_train)", "(5,)", "1.npz (x_train) holds")
    arrays = client_arrays(1, 4, 2)
    del arrays["y_test"]
    write_npz(bad, **arrays)
    fails(f"clients:{tmp_path}", str(bad), "holds x_test but no y_test")
    write_npz(bad, **client_arrays(1, 1, None))
    fails(f"clients:{tmp_path}", str(bad), "1 example", "at least 2")
    write_npz(bad, **client_arrays(1, 4, 2))
    write_npz(tmp_path / "test.npz", x=np.ones((2, 3)))
    fails(f"clients:{tmp_path}", "test.npz", "lacks x_test, y_test")
