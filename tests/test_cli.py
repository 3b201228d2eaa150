"""The ``fedmoe`` command line (fedmoe.cli): partitions of the real Fashion-MNIST meet
their contract, ``data info`` reports what it found, and every bad input ends as one
``fedmoe: error: ...`` line on stderr with a non-zero status, never a traceback.

Most tests call ``main([...])`` in-process (the decoded dataset stays cached between
them); a few run ``python -m fedmoe`` for real to see exactly what a user sees.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pytest

from fedmoe.cli import main
from fedmoe.data import DATASETS, DatasetSpec, FileSpec, load_dataset, registry
from fedmoe.data.files import IdxFiles
from fedmoe.errors import ConfigError

PREFIX = "fedmoe: error: "
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_ENV_VARS = ("FEDMOE_DATA", "FEDMOE_MIRROR", "FEDMOE_CACHE", "FEDMOE_SYSTEM_DATA")

needs_fashion_mnist = pytest.mark.skipif(
    not all((FASHION_MNIST_DIR / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES),
    reason="Fashion-MNIST is not installed in /usr/share/datasets (dataset-fashion-mnist)",
)


# --------------------------------------------------------------------------------------
# Running the CLI
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one command did: exit status, stdout and stderr."""

    code: int
    out: str
    err: str


Cli: TypeAlias = Callable[..., Outcome]


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``main(args)`` in-process; an exception other than SystemExit propagates."""

    def run(*args: str | Path) -> Outcome:
        capsys.readouterr()
        try:
            main([str(arg) for arg in args])
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def assert_user_error(result: Outcome, *parts: str, code: int = 1) -> str:
    """The one stderr line of a failed command (checked for ``parts``), nothing else."""
    assert "Traceback" not in result.out + result.err
    assert result.code == code, result
    assert result.out == "", "an error must not leave partial output"
    lines = result.err.splitlines()
    assert len(lines) == 1 and result.err.endswith("\n"), repr(result.err)
    line = lines[0]
    assert line.startswith(PREFIX) and line[len(PREFIX) :].strip(), line
    for part in parts:
        assert part in line, f"{part!r} not in {line!r}"
    return line


def assert_ok(result: Outcome) -> None:
    assert result.code == 0 and result.err == "", result


# --------------------------------------------------------------------------------------
# Lookup environments
# --------------------------------------------------------------------------------------


@pytest.fixture
def system_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real lookup (system datasets root), but an empty cache and no overrides.

    The in-process cache of decoded datasets is kept, so Fashion-MNIST decodes once.
    """
    for variable in _ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("FEDMOE_CACHE", str(tmp_path / "cache"))


@dataclasses.dataclass(frozen=True)
class IsolatedEnv:
    """Empty system root and cache: nothing is found unless a test puts it there."""

    system: Path
    cache: Path


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[IsolatedEnv]:
    for variable in _ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    env = IsolatedEnv(system=tmp_path / "system", cache=tmp_path / "cache")
    env.system.mkdir()
    env.cache.mkdir()
    monkeypatch.setenv("FEDMOE_SYSTEM_DATA", str(env.system))
    monkeypatch.setenv("FEDMOE_CACHE", str(env.cache))
    registry.clear_cache()
    yield env
    registry.clear_cache()


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """os.environ without FEDMOE_* but with an empty system root and cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMOE_")}
    env["FEDMOE_WORKERS"] = "1"  # no worker processes for these small runs
    for name, variable in (("system", "FEDMOE_SYSTEM_DATA"), ("cache", "FEDMOE_CACHE")):
        (tmp_path / name).mkdir(exist_ok=True)
        env[variable] = str(tmp_path / name)
    return env


# --------------------------------------------------------------------------------------
# A tiny IDX dataset written by the tests (10 classes, 100 train, 40 test, 4x3 images)
# --------------------------------------------------------------------------------------

TINY = "tiny-cli"
TINY_TRAIN, TINY_TEST, TINY_CLASSES = 100, 40, 10
TINY_SHAPE = (4, 3)


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8 labels or images) in the IDX format."""
    header = struct.pack(f">I{array.ndim}I", 0x00000800 | array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def tiny_contents() -> dict[str, bytes]:
    """The four IDX files' decompressed contents, by file name (every class in train)."""
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, size=(TINY_TRAIN, *TINY_SHAPE), dtype=np.uint8),
        rng.permutation(np.arange(TINY_TRAIN) % TINY_CLASSES).astype(np.uint8),
        rng.integers(0, 256, size=(TINY_TEST, *TINY_SHAPE), dtype=np.uint8),
        (np.arange(TINY_TEST) % TINY_CLASSES).astype(np.uint8),
    )
    return {name: idx_bytes(a) for name, a in zip(FASHION_MNIST_FILES, arrays, strict=True)}


def tiny_spec(sha256: Mapping[str, str] | None = None) -> DatasetSpec:
    """The tiny dataset's spec; ``sha256`` pins files (by name) to a digest."""
    pins = sha256 or {}
    train_images, train_labels, test_images, test_labels = (
        FileSpec(name, pins.get(name)) for name in FASHION_MNIST_FILES
    )
    return DatasetSpec(
        name=TINY,
        title="tiny CLI test dataset",
        source=IdxFiles(train_images, train_labels, test_images, test_labels),
        train_count=TINY_TRAIN,
        test_count=TINY_TEST,
        example_shape=(1, *TINY_SHAPE),
        num_classes=TINY_CLASSES,
        class_names=tuple(f"class{c}" for c in range(TINY_CLASSES)),
    )


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.fixture
def tiny(isolated_env: IsolatedEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Register ``tiny-cli`` and write its files (gzipped) to a directory; that directory."""
    monkeypatch.setitem(DATASETS, TINY, tiny_spec())
    directory = tmp_path / "tiny"
    directory.mkdir()
    for name, data in tiny_contents().items():
        (directory / f"{name}.gz").write_bytes(gz(data))
    return directory


# --------------------------------------------------------------------------------------
# fedmoe partition on the real Fashion-MNIST
# --------------------------------------------------------------------------------------


def argv(text: str) -> tuple[str, ...]:
    """Command-line words from one string (no quoting needed in these tests)."""
    return tuple(text.split())


@dataclasses.dataclass(frozen=True)
class PartitionCase:
    """A partition command and what it must produce."""

    args: tuple[str, ...]
    clients: int
    sizes: tuple[int, int, int]  # train, val, test per client
    opt_out: int  # exact number of opted-out clients
    majority: tuple[int, int, int] | None = None  # majority samples per split (majority)


PARTITION_CASES = [
    pytest.param(
        PartitionCase(
            argv(
                "--disjoint --clients 5 --train 50 --val 30 --test 25 --p 0.75 "
                "--opt-out 0.5 --seed 3"
            ),
            clients=5,
            sizes=(50, 30, 25),
            opt_out=3,  # 2.5 rounds half up
            majority=(38, 23, 19),  # 37.5, 22.5, 18.75 rounded half up
        ),
        id="majority-disjoint",
    ),
    pytest.param(
        PartitionCase(
            argv("--overlap --clients 100 --train 100 --val 200 --test 200 --p 0.8"),
            clients=100,
            sizes=(100, 200, 200),
            opt_out=0,
            majority=(80, 160, 160),
        ),
        id="majority-overlap",
    ),
    pytest.param(
        PartitionCase(
            argv(
                "--scheme dirichlet --alpha 0.5 --clients 25 --train 60 --val 40 --test "
                "50 --opt-out 0.5"
            ),
            clients=25,
            sizes=(60, 40, 50),
            opt_out=13,
        ),
        id="dirichlet",
    ),
    pytest.param(
        PartitionCase(
            argv(
                "--scheme iid --clients 30 --train 100 --val 200 --test 50 --opt-out 0.5 --seed 7"
            ),
            clients=30,
            sizes=(100, 200, 50),
            opt_out=15,
        ),
        id="iid",
    ),
    pytest.param(
        PartitionCase(
            argv(
                "--scheme shards --classes-per-client 3 --clients 25 --train 60 --val "
                "31 --test 45 --opt-out 0.5"
            ),
            clients=25,
            sizes=(60, 31, 45),
            opt_out=13,
        ),
        id="shards",
    ),
]


def check_common(summary: dict[str, Any], case: PartitionCase) -> None:
    """Sizes, disjointness, index ranges, label counts and opt-out, from indices alone."""
    ds = load_dataset("fashion-mnist")
    labels = {"train": ds.y_train, "val": ds.y_train, "test": ds.y_test}
    clients = summary["clients"]
    assert summary["num_clients"] == case.clients == len(clients)
    assert summary["num_classes"] == 10
    assert [c["id"] for c in clients] == list(range(case.clients))
    params = summary["params"]
    assert (params["num_clients"], params["n_train"], params["n_val"], params["n_test"]) == (
        case.clients,
        *case.sizes,
    )

    used: list[np.ndarray] = []
    for client in clients:
        for split, size in zip(("train", "val", "test"), case.sizes, strict=True):
            index = np.asarray(client["indices"][split], dtype=np.int64)
            assert index.shape == (size,), (client["id"], split)
            assert np.unique(index).size == size, "an index repeats within a client's split"
            assert index.min(initial=0) >= 0 and index.max(initial=0) < labels[split].size
            counts = np.bincount(labels[split][index], minlength=10)
            assert client["counts"][split] == counts.tolist(), (client["id"], split)
            if split != "test":
                used.append(index)
        assert math.isclose(sum(client["label_dist"]), 1.0, abs_tol=1e-4)
    train_val = np.concatenate(used)
    assert np.unique(train_val).size == train_val.size, "a train-split index is used twice"

    flags = [c["opt_out"] for c in clients]
    assert summary["num_opt_out"] == sum(flags) == case.opt_out


def check_majority(summary: dict[str, Any], case: PartitionCase) -> None:
    assert case.majority is not None
    pairs = [tuple(c["majority"]) for c in summary["clients"]]
    assert all(len(pair) == 2 and pair[0] != pair[1] for pair in pairs)
    for client, pair in zip(summary["clients"], pairs, strict=True):
        for split, wanted in zip(("train", "val", "test"), case.majority, strict=True):
            counts = client["counts"][split]
            assert counts[pair[0]] + counts[pair[1]] == wanted, (client["id"], split)
            assert (counts[pair[0]], counts[pair[1]]) == ((wanted + 1) // 2, wanted // 2)
    uses = Counter(c for pair in pairs for c in pair)
    if summary["params"]["pairs"] == "disjoint":
        assert sum(uses.values()) == len(uses), "a class is a majority class of two clients"
    else:
        assert uses == Counter({c: 2 * case.clients // 10 for c in range(10)})


def check_dirichlet(summary: dict[str, Any], case: PartitionCase) -> None:
    assert summary["params"]["alpha"] == 0.5
    for client in summary["clients"]:
        assert client["majority"] == []
        q = np.asarray(client["label_dist"])
        for split, n in zip(("train", "val", "test"), case.sizes, strict=True):
            counts = np.asarray(client["counts"][split])
            assert np.all(np.abs(counts - n * q) < 1 + 1e-3), (client["id"], split)


def check_iid(summary: dict[str, Any], case: PartitionCase) -> None:
    # Fashion-MNIST is balanced (6000 / 1000 per class), so every count is n / 10.
    for client in summary["clients"]:
        for split, n in zip(("train", "val", "test"), case.sizes, strict=True):
            assert client["counts"][split] == [n // 10] * 10, (client["id"], split)


def check_shards(summary: dict[str, Any], case: PartitionCase) -> None:
    uses: Counter[int] = Counter()
    for client in summary["clients"]:
        classes = client["majority"]
        assert len(classes) == len(set(classes)) == 3
        uses.update(classes)
        for split, n in zip(("train", "val", "test"), case.sizes, strict=True):
            counts = client["counts"][split]
            assert {c for c, v in enumerate(counts) if v} <= set(classes)
            assert all(counts[c] in (n // 3, -(-n // 3)) for c in classes), (client["id"], split)
    share = 3 * case.clients / 10
    assert set(uses.values()) <= {math.floor(share), math.ceil(share)}
    assert sum(uses.values()) == 3 * case.clients


SCHEME_CHECKS: dict[str, Callable[[dict[str, Any], PartitionCase], None]] = {
    "majority": check_majority,
    "dirichlet": check_dirichlet,
    "iid": check_iid,
    "shards": check_shards,
}


@needs_fashion_mnist
@pytest.mark.usefixtures("system_env")
@pytest.mark.parametrize("case", PARTITION_CASES)
def test_partition_json_meets_its_contract(cli: Cli, case: PartitionCase) -> None:
    result = cli("partition", "--dataset", "fashion-mnist", *case.args, "--json", "--indices")
    assert_ok(result)
    summary = json.loads(result.out)
    check_common(summary, case)
    SCHEME_CHECKS[summary["scheme"]](summary, case)


@needs_fashion_mnist
@pytest.mark.usefixtures("system_env")
def test_partition_is_reproducible(cli: Cli) -> None:
    args = ("partition", "--scheme", "dirichlet", "--clients", "4", "--json", "--indices")
    first, second = cli(*args, "--seed", "5"), cli(*args, "--seed", "5")
    other = cli(*args, "--seed", "6")
    assert_ok(first)
    assert first.out == second.out
    assert json.loads(first.out)["clients"] != json.loads(other.out)["clients"]


@needs_fashion_mnist
@pytest.mark.usefixtures("system_env")
def test_partition_table_lists_every_client(cli: Cli) -> None:
    result = cli(
        "partition",
        *("--overlap", "--clients", "12", "--train", "10", "--val", "10", "--test", "10"),
        *("--opt-out", "0.5"),
    )
    assert_ok(result)
    ids = [int(m) for m in re.findall(r"^│\s*(\d+)\s*│", result.out, flags=re.MULTILINE)]
    assert ids == list(range(12))
    assert len(re.findall(r"│\s*yes\s*│", result.out)) == 6
    assert "fashion-mnist" in result.out and "majority" in result.out


@needs_fashion_mnist
@pytest.mark.usefixtures("system_env")
def test_partition_defaults_work(cli: Cli) -> None:
    assert_ok(cli("partition", "--json"))


# --------------------------------------------------------------------------------------
# fedmoe data info
# --------------------------------------------------------------------------------------


@needs_fashion_mnist
@pytest.mark.usefixtures("system_env")
def test_data_info_fashion_mnist(cli: Cli) -> None:
    result = cli("data", "info", "fashion-mnist", "--json")
    assert_ok(result)
    info = json.loads(result.out)
    assert info["name"] == "fashion-mnist"
    assert info["directory"] == str(FASHION_MNIST_DIR)
    assert info["shapes"] == {
        "x_train": [60000, 1, 28, 28],
        "y_train": [60000],
        "x_test": [10000, 1, 28, 28],
        "y_test": [10000],
    }
    assert info["dtype"] == "uint8"
    assert info["num_classes"] == 10 == len(info["class_names"])
    assert info["class_counts"] == {"train": [6000] * 10, "test": [1000] * 10}
    assert info["checksum"] == "verified"
    assert [f["checksum"] for f in info["files"]] == ["verified"] * 4

    table = cli("data", "info", "fmnist")
    assert_ok(table)
    assert "verified" in table.out and "Ankle boot" in table.out and "6000" in table.out


def test_data_info_on_generated_files(cli: Cli, tiny: Path) -> None:
    result = cli("data", "info", TINY, "--data-dir", tiny, "--json")
    assert_ok(result)
    info = json.loads(result.out)
    assert info["directory"] == str(tiny)
    assert info["shapes"]["x_train"] == [TINY_TRAIN, 1, *TINY_SHAPE]
    assert info["shapes"]["y_test"] == [TINY_TEST]
    assert info["class_counts"]["train"] == [TINY_TRAIN // TINY_CLASSES] * TINY_CLASSES
    assert info["checksum"] == "not pinned"
    assert {Path(f["path"]).name for f in info["files"]} == {
        f"{name}.gz" for name in FASHION_MNIST_FILES
    }

    table = cli("data", "info", TINY, "--data-dir", tiny)
    assert_ok(table)
    assert "tiny CLI test dataset" in table.out and "not pinned" in table.out
    assert "class9" in table.out


def test_data_info_verifies_pinned_checksums(
    cli: Cli, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pins = {name: hashlib.sha256(data).hexdigest() for name, data in tiny_contents().items()}
    monkeypatch.setitem(DATASETS, TINY, tiny_spec(pins))
    result = cli("data", "info", TINY, "--data-dir", tiny, "--json")
    assert_ok(result)
    assert json.loads(result.out)["checksum"] == "verified"


# --------------------------------------------------------------------------------------
# --plot
# --------------------------------------------------------------------------------------


def test_partition_plot_writes_a_png(cli: Cli, tiny: Path, tmp_path: Path) -> None:
    target = tmp_path / "plots" / "nested" / "partition.png"
    result = cli(
        "partition",
        *("--dataset", TINY, "--data-dir", tiny, "--clients", "4", "--train", "5"),
        *("--val", "5", "--test", "5", "--opt-out", "0.5", "--json", "--plot", target),
    )
    assert_ok(result)
    assert json.loads(result.out)["num_opt_out"] == 2  # stdout is pure JSON
    assert target.read_bytes().startswith(PNG_SIGNATURE)

    table_target = tmp_path / "table.png"
    table = cli(
        *("partition", "--dataset", TINY, "--data-dir", tiny, "--clients", "2"),
        *("--train", "5", "--val", "5", "--test", "5", "--plot", table_target),
    )
    assert_ok(table)
    assert "plot written to" in table.out
    assert table_target.read_bytes().startswith(PNG_SIGNATURE)


def test_partition_plot_to_a_directory_is_a_user_error(
    cli: Cli, tiny: Path, tmp_path: Path
) -> None:
    result = cli(
        *("partition", "--dataset", TINY, "--data-dir", tiny, "--clients", "2"),
        *("--train", "5", "--val", "5", "--test", "5", "--plot", tmp_path),
    )
    assert_user_error(result, str(tmp_path))


# --------------------------------------------------------------------------------------
# Bad input: one line, non-zero status
# --------------------------------------------------------------------------------------


BAD_PARTITIONS = [
    pytest.param(("--p", "1.5"), ("p must be in [0, 1]",), 1, id="p-above-1"),
    pytest.param(("--p", "-0.1"), ("p must be in [0, 1]",), 1, id="p-below-0"),
    pytest.param(("--p", "nan"), ("p must be in [0, 1]",), 1, id="p-nan"),
    pytest.param(("--clients", "3", "--train", "-1"), ("n_train must be >= 0",), 1, id="neg-train"),
    pytest.param(("--clients", "3", "--val", "-2"), ("n_val must be >= 0",), 1, id="neg-val"),
    pytest.param(("--clients", "3", "--test", "-3"), ("n_test must be >= 0",), 1, id="neg-test"),
    pytest.param(("--clients", "-4"), ("num_clients must be >= 1",), 1, id="neg-clients"),
    pytest.param(("--clients", "0"), ("num_clients must be >= 1",), 1, id="zero-clients"),
    pytest.param(
        ("--disjoint", "--clients", "6", "--train", "2", "--val", "2", "--test", "2"),
        ("disjoint pairs allow at most 5 clients", "got 6"),
        1,
        id="disjoint-too-many-clients",
    ),
    pytest.param(
        ("--clients", "10", "--train", "6", "--val", "5", "--test", "2", "--overlap"),
        ("110 samples exceed the 100 of the train split",),
        1,
        id="train-split-too-small",
    ),
    pytest.param(
        ("--clients", "2", "--train", "2", "--val", "2", "--test", "41"),
        ("n_test=41 exceeds the 40 samples of the test split",),
        1,
        id="test-split-too-small",
    ),
    pytest.param(
        argv("--scheme shards --classes-per-client 1 --clients 9 --train 6 --val 5 --test 2"),
        ("runs out", "has 10"),
        1,
        id="class-runs-out",
    ),
    pytest.param(
        ("--scheme", "shards", "--classes-per-client", "11", "--clients", "2"),
        ("k=11 classes per client exceeds the 10 classes",),
        1,
        id="too-many-classes-per-client",
    ),
    pytest.param(
        ("--scheme", "dirichlet", "--alpha", "0", "--clients", "2"),
        ("alpha must be a finite number > 0",),
        1,
        id="alpha-zero",
    ),
    pytest.param(
        ("--clients", "2", "--train", "2", "--val", "2", "--test", "2", "--opt-out", "1.5"),
        ("opt-out fraction must be in [0, 1]",),
        1,
        id="opt-out-above-1",
    ),
    pytest.param(("--clients", "2", "--seed", "-1"), ("seed must be >= 0",), 1, id="negative-seed"),
    pytest.param(
        ("--scheme", "nope"),
        ("--scheme must be one of majority, dirichlet, iid, shards", "'nope'"),
        1,
        id="unknown-scheme",
    ),
    pytest.param(("--bogus",), ("No such option: --bogus",), 2, id="unknown-option"),
    pytest.param(
        ("--clients", "many"), ("Invalid value for '--clients'",), 2, id="clients-not-int"
    ),
    pytest.param(("--p", "high"), ("Invalid value for '--p'",), 2, id="p-not-a-number"),
    pytest.param(("--clients",), ("--clients",), 2, id="missing-option-value"),
]


@pytest.mark.parametrize(("args", "parts", "code"), BAD_PARTITIONS)
def test_bad_partition_request(
    cli: Cli, tiny: Path, args: tuple[str, ...], parts: tuple[str, ...], code: int
) -> None:
    # Small sizes that fit the tiny dataset, then the case's options (the last value of a
    # repeated option wins; a bare trailing option stays bare).
    sizes = ("--clients", "2", "--train", "2", "--val", "2", "--test", "2")
    result = cli("partition", "--dataset", TINY, "--data-dir", tiny, *sizes, *args)
    assert_user_error(result, *parts, code=code)


@pytest.mark.parametrize(
    "command",
    [("data", "info", "nope"), ("partition", "--dataset", "nope"), ("data", "fetch", "nope")],
    ids=["info", "partition", "fetch"],
)
@pytest.mark.usefixtures("isolated_env")
def test_unknown_dataset(cli: Cli, command: tuple[str, ...]) -> None:
    assert_user_error(cli(*command), "unknown dataset 'nope'", "fashion-mnist")


@pytest.mark.parametrize(
    "command", [("data", "info", "fashion-mnist"), ("partition", "--clients", "2")]
)
def test_missing_files_say_how_to_get_them(
    cli: Cli, isolated_env: IsolatedEnv, tmp_path: Path, command: tuple[str, ...]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(*command, "--data-dir", empty)
    assert_user_error(
        result,
        "fashion-mnist: data files not found",
        "train-images-idx3-ubyte[.gz]",
        str(empty),
        str(isolated_env.system / "fashion-mnist"),
        str(isolated_env.cache / "fashion-mnist"),
        "fedmoe data fetch fashion-mnist",
    )


def _with_magic(data: bytes, magic: int) -> bytes:
    return struct.pack(">I", magic) + data[4:]


def _drop_last_label(data: bytes) -> bytes:
    (count,) = struct.unpack(">I", data[4:8])
    return struct.pack(">II", 0x00000801, count - 1) + data[8:-1]


CORRUPTIONS = [
    pytest.param(
        "train-labels-idx1-ubyte.gz",
        lambda c: gz(_with_magic(c["train-labels-idx1-ubyte"], 0x00000803)),
        ("wrong IDX magic number 0x00000803, expected 0x00000801",),
        id="wrong-magic",
    ),
    pytest.param(
        "t10k-images-idx3-ubyte.gz",
        lambda c: gz(c["t10k-images-idx3-ubyte"][:-5]),
        ("truncated IDX file", f"{TINY_TEST}x4x3"),
        id="truncated",
    ),
    pytest.param(
        "t10k-labels-idx1-ubyte.gz",
        lambda c: gz(c["t10k-labels-idx1-ubyte"][:6]),
        ("truncated IDX header",),
        id="truncated-header",
    ),
    pytest.param(
        "train-images-idx3-ubyte.gz",
        lambda c: b"this is not gzip data",
        ("invalid or truncated gzip data",),
        id="bad-gzip",
    ),
    pytest.param(
        "train-images-idx3-ubyte.gz",
        lambda c: gz(c["train-images-idx3-ubyte"])[:40],
        ("invalid or truncated gzip data",),
        id="truncated-gzip",
    ),
    pytest.param(
        "train-labels-idx1-ubyte.gz",
        lambda c: gz(_drop_last_label(c["train-labels-idx1-ubyte"])),
        (f"holds {TINY_TRAIN} images but", f"holds {TINY_TRAIN - 1} labels"),
        id="image-label-count-mismatch",
    ),
]


@pytest.mark.parametrize("command", ["info", "partition"])
@pytest.mark.parametrize(("file_name", "corrupt", "parts"), CORRUPTIONS)
def test_malformed_file(
    cli: Cli,
    tiny: Path,
    command: str,
    file_name: str,
    corrupt: Callable[[dict[str, bytes]], bytes],
    parts: tuple[str, ...],
) -> None:
    (tiny / file_name).write_bytes(corrupt(tiny_contents()))
    if command == "info":
        result = cli("data", "info", TINY, "--data-dir", tiny)
    else:
        result = cli("partition", "--dataset", TINY, "--data-dir", tiny, "--clients", "2")
    line = assert_user_error(result, *parts)
    named = file_name if "count-mismatch" not in line else "train-images-idx3-ubyte.gz"
    assert named in line, "the message must name the file at fault"


def test_checksum_mismatch(cli: Cli, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pins = {name: hashlib.sha256(data).hexdigest() for name, data in tiny_contents().items()}
    pins["t10k-labels-idx1-ubyte"] = "0" * 64
    monkeypatch.setitem(DATASETS, TINY, tiny_spec(pins))
    result = cli("data", "info", TINY, "--data-dir", tiny)
    assert_user_error(
        result, "t10k-labels-idx1-ubyte.gz", "checksum mismatch", f"expected {'0' * 64}"
    )


# --------------------------------------------------------------------------------------
# fedmoe run: bad configs never start an experiment
# --------------------------------------------------------------------------------------


#: Where ``fedmoe run`` starts an experiment: the driver itself (no ``--out``) and the
#: run directory's own reference to it (``--out`` / ``--resume``).
RUN_EXPERIMENT = ("fedmoe.experiment.run.run_experiment", "fedmoe.experiment.rundir.run_experiment")


def patch_driver(monkeypatch: pytest.MonkeyPatch, driver: Callable[..., None]) -> None:
    """Replace every :data:`RUN_EXPERIMENT` target by ``driver``. rundir is imported
    first: imported while ``run``'s driver is already patched, it would bind the patch
    as its own, and monkeypatch would "restore" the patch for every later test."""
    import fedmoe.experiment.rundir  # noqa: F401

    for target in RUN_EXPERIMENT:
        monkeypatch.setattr(target, driver)


@pytest.fixture
def no_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly (instead of training for hours) if a bad config reaches the driver."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad configuration started an experiment")

    patch_driver(monkeypatch, refuse)


@pytest.mark.parametrize("out", [False, True], ids=["no-out", "out"])
def test_a_good_config_reaches_the_patched_driver(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: bool
) -> None:
    """The targets :func:`no_experiment` patches are what ``fedmoe run`` calls."""
    started: list[object] = []

    def record(cfg: object, *args: object, **kwargs: object) -> None:
        started.append(cfg)
        raise ConfigError("stopped before training")

    patch_driver(monkeypatch, record)
    where = ("--out", tmp_path / "run") if out else ()
    args = ("--preset", "quick", "--set", "methods=fedavg,local,finetune,moe", *where)
    assert_user_error(cli("run", *args, "--quiet"), "stopped before training")
    assert len(started) == 1
    assert getattr(started[0], "methods", None) == ("fedavg", "local", "finetune", "moe")


BAD_CONFIGS = [
    pytest.param(
        "[partition]\nclientz = 3\n",
        ("unknown key", "clientz", "known keys here: scheme, clients,"),
        id="unknown-key",
    ),
    pytest.param("colour = 'red'\n", ("unknown key 'colour'",), id="unknown-top-level-key"),
    pytest.param(
        '[partition]\nclients = "many"\n',
        ("partition.clients must be of type int", "'many'"),
        id="wrong-type",
    ),
    pytest.param("partition = 3\n", ("partition must be a table",), id="section-not-a-table"),
    pytest.param("[partition]\np = 1.5\n", ("partition.p must be in [0, 1]", "1.5"), id="p-range"),
    pytest.param(
        "[federated]\nlr = -1.0\n",
        ("federated.lr must be positive",),
        id="negative-learning-rate",
    ),
    pytest.param(
        "[fedavg]\nlr = 1e-3\n",
        ("[fedavg] is from an older fedmoe config", "[federated]"),
        id="format-1-section",
    ),
    pytest.param(
        "[moe_plus]\nenabled = true\n",
        ("[moe_plus] is from an older fedmoe config", '"moe-plus"', "[method.moe-plus]"),
        id="format-1-enabled",
    ),
    pytest.param(
        "[personalise]\nmoe_lr = 1e-5\n",
        ("personalise.moe_lr is from an older fedmoe config", "method.moe.lr"),
        id="format-1-key",
    ),
    pytest.param(
        'methods = ["fedavg", "nope"]\n',
        ("unknown method 'nope'", "known methods: "),
        id="unknown-method",
    ),
    pytest.param(
        'methods = ["moe", "fedavg", "finetune"]\n',
        ("method 'moe' needs 'fedavg', 'finetune'",),
        id="method-before-its-needs",
    ),
    pytest.param(
        'methods = ["fedavg"]\n[method.ifca]\nmodels = 2\n',
        ("[method.ifca] configures a method that is not in methods",),
        id="section-of-unlisted-method",
    ),
    pytest.param(
        'plugins = ["fedmoe_no_such_plugin"]\n',
        ("plugins: cannot import 'fedmoe_no_such_plugin'",),
        id="missing-plugin",
    ),
    pytest.param("[partition\nclients = 3\n", ("invalid TOML",), id="invalid-toml"),
]


@pytest.mark.usefixtures("no_experiment")
@pytest.mark.parametrize(("text", "parts"), BAD_CONFIGS)
def test_bad_config_file(cli: Cli, tmp_path: Path, text: str, parts: tuple[str, ...]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert_user_error(cli("run", "--config", path, "--quiet"), *parts)


@pytest.mark.usefixtures("no_experiment")
@pytest.mark.parametrize(
    ("args", "parts"),
    [
        pytest.param(
            ("--config", "missing.toml"),
            ("missing.toml: config file not found",),
            id="missing-config",
        ),
        pytest.param(
            ("--set", "partition.p"), ("'partition.p' must look like key=value",), id="set-no-eq"
        ),
        pytest.param(
            ("--preset", "quick", "--set", "partition.p=1.5"),
            ("partition.p must be in [0, 1]",),
            id="set-out-of-range",
        ),
        pytest.param(
            ("--preset", "quick", "--set", "partition.clients=many"),
            ("partition.clients must be of type int",),
            id="set-wrong-type",
        ),
        pytest.param(
            ("--preset", "nope"), ("unknown preset 'nope'", "quick", "paper"), id="preset"
        ),
        pytest.param(
            ("--set", "methods=fedavg,nope"), ("unknown method 'nope'",), id="set-methods"
        ),
        pytest.param(
            ("--set", "methods=finetune,fedavg"),
            ("method 'finetune' needs 'fedavg'",),
            id="set-methods-order",
        ),
        pytest.param(
            ("--set", "fedavg.lr=1e-3"),
            ("[fedavg] is from an older fedmoe config",),
            id="set-format-1",
        ),
    ],
)
def test_bad_run_arguments(
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    parts: tuple[str, ...],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert_user_error(cli("run", *args, "--quiet"), *parts)


def test_bf16_mixed_on_a_cpu_without_native_bfloat16_is_one_line(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedmoe.engine import precision

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    result = cli("run", "--set", "dtype=bf16-mixed", "--out", tmp_path / "out", "--quiet")
    assert_user_error(result, "dtype 'bf16-mixed'", "avx512_bf16", "use dtype=float32")


# --------------------------------------------------------------------------------------
# fedmoe data fetch from an unreachable mirror
# --------------------------------------------------------------------------------------


def test_fetch_from_refused_port_fails_cleanly(cli: Cli, isolated_env: IsolatedEnv) -> None:
    result = cli("data", "fetch", "fashion-mnist", "--url-base", "http://127.0.0.1:9/")
    assert_user_error(result, "http://127.0.0.1:9/train-images-idx3-ubyte.gz", "download failed")
    leftovers = [p for p in isolated_env.cache.rglob("*") if p.is_file()]
    assert leftovers == [], "a failed download must leave no files in the cache"


# --------------------------------------------------------------------------------------
# Real processes: what a user sees
# --------------------------------------------------------------------------------------


def _bad_fashion_mnist_dir(tmp: Path) -> Path:
    """Fashion-MNIST-named files whose train images carry the labels' magic number."""
    directory = tmp / "bad-fmnist"
    directory.mkdir()
    for name, data in tiny_contents().items():
        if name.startswith("train-images"):
            data = _with_magic(data, 0x00000801)
        (directory / f"{name}.gz").write_bytes(gz(data))
    return directory


def _empty_dir(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


SUBPROCESS_CASES = [
    pytest.param(
        lambda tmp: ["data", "info", "nope"], 1, ("unknown dataset 'nope'",), id="unknown-dataset"
    ),
    pytest.param(
        lambda tmp: ["partition", "--clients", "2", "--data-dir", str(_empty_dir(tmp))],
        1,
        ("data files not found", "fedmoe data fetch fashion-mnist"),
        id="missing-files",
    ),
    pytest.param(
        lambda tmp: [
            "data",
            "info",
            "fashion-mnist",
            "--data-dir",
            str(_bad_fashion_mnist_dir(tmp)),
        ],
        1,
        ("train-images-idx3-ubyte.gz", "wrong IDX magic number"),
        id="wrong-magic",
    ),
    pytest.param(
        lambda tmp: ["partition", "--clients", "many"],
        2,
        ("Invalid value for '--clients'",),
        id="clients-not-int",
    ),
    pytest.param(
        lambda tmp: ["partition", "--bogus"], 2, ("No such option: --bogus",), id="unknown-option"
    ),
    pytest.param(
        lambda tmp: ["run", "--config", str(tmp / "missing.toml")],
        1,
        ("config file not found",),
        id="missing-config",
    ),
    pytest.param(
        lambda tmp: ["data", "fetch", "fashion-mnist", "--url-base", "http://127.0.0.1:9/"],
        1,
        ("http://127.0.0.1:9/train-images-idx3-ubyte.gz", "download failed"),
        id="fetch-refused",
    ),
]


@pytest.mark.parametrize(("make_args", "code", "parts"), SUBPROCESS_CASES)
def test_real_process_reports_one_line(
    tmp_path: Path,
    make_args: Callable[[Path], list[str]],
    code: int,
    parts: tuple[str, ...],
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedmoe", *make_args(tmp_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert_user_error(Outcome(proc.returncode, proc.stdout, proc.stderr), *parts, code=code)
