"""Natural partitions (clients from a CSV's client-id column or from one npz per client):
the partition's contract, its one-line errors, the [data] config section, and whole runs
through the embedded simulator and the Flower app (in-process)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from userfiles import (
    PAPER,
    SITES,
    client_arrays,
    natural_config,
    write_csv,
    write_npz,
    write_sites_csv,
)

from fedmoe.data import (
    ClientRows,
    NaturalSpec,
    ReadOptions,
    clear_cache,
    load_dataset,
    make_partition,
    partition_to_json,
)
from fedmoe.data.partition import split_label_counts
from fedmoe.errors import ConfigError, PartitionError
from fedmoe.experiment import config
from fedmoe.experiment.prepare import partition_of, partition_spec, prepare, read_options
from fedmoe.experiment.run import run_experiment


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def sites_csv(tmp_path: Path) -> Path:
    return write_sites_csv(tmp_path)


# --------------------------------------------------------------------------------------
# The partition
# --------------------------------------------------------------------------------------


def test_a_client_column_gives_one_client_per_site(sites_csv: Path) -> None:
    cfg = natural_config(
        f"csv:{sites_csv}",
        data={"client": "site", "val_fraction": 0.25, "test_fraction": 0.2},
        partition={"opt_out": 0.25},
    )
    ds = load_dataset(cfg.dataset, options=read_options(cfg))
    part = partition_of(cfg, ds)
    rows = ds.clients
    assert rows is not None
    assert part.scheme == "natural" and part.names == ("east", "north", "south", "west")
    assert part.num_clients == 4 and int(part.opt_out.sum()) == 1
    assert dict(part.params) == {
        "scheme": "natural",
        "num_clients": 4,
        "val_fraction": 0.25,
        "seed": 0,
        "opt_out": 0.25,
    }
    for k, (name, client) in enumerate(zip(part.names, part.clients, strict=True)):
        pool = np.flatnonzero(rows.train == k)
        n = SITES[name]
        n_test = max(1, math.floor(0.2 * n + 0.5))
        assert len(pool) == n - n_test
        # Train and validation split the client's own train-split rows, nothing else.
        assert np.intersect1d(client.train, client.val).size == 0
        np.testing.assert_array_equal(np.union1d(client.train, client.val), pool)
        assert len(client.val) == math.floor(0.25 * len(pool) + 0.5)
        np.testing.assert_array_equal(client.test, np.flatnonzero(rows.test == k))
        for split in (client.train, client.val, client.test):
            assert split.dtype == np.int64 and (np.diff(split) > 0).all()
            assert not split.flags.writeable
        # Majority classes: the two most frequent training labels, most frequent first.
        counts = np.bincount(ds.y_train[client.train], minlength=ds.num_classes)
        assert counts[list(client.majority)].tolist() == sorted(counts, reverse=True)[:2]
        np.testing.assert_allclose(
            part.label_dist[k], np.bincount(ds.y_train[pool], minlength=3) / len(pool)
        )
    assert len({len(c.train) for c in part.clients}) == 4  # clients keep their own sizes
    # The same seed gives the same partition; another seed another validation draw.
    again = partition_of(cfg, ds)
    other = partition_of(dataclasses.replace(cfg, seed=1), ds)
    assert all((a.val == b.val).all() for a, b in zip(part.clients, again.clients, strict=True))
    assert any(
        not np.array_equal(a.val, b.val) for a, b in zip(part.clients, other.clients, strict=True)
    )
    summary = partition_to_json(part, ds.y_train, ds.y_test, ds.num_classes)
    assert [c["name"] for c in summary["clients"]] == list(part.names)
    test_counts = split_label_counts(part, "test", ds.y_test, ds.num_classes)
    assert test_counts.sum() == len(ds.y_test)  # every test row is some client's


def test_a_clients_validation_draw_does_not_depend_on_the_others() -> None:
    def partition(sizes: list[int]) -> Any:
        clients = np.repeat(np.arange(len(sizes)), sizes)
        rows = ClientRows(("a", "b")[: len(sizes)], clients, np.arange(len(sizes)), np.arange(2))
        y = np.zeros(len(clients), dtype=np.int64)
        return make_partition(NaturalSpec(rows, 0.3), y, np.zeros(len(sizes), np.int64), 1, 5)

    alone, beside_15, beside_8 = partition([15]), partition([15, 15]), partition([15, 8])
    assert len(alone.clients[0].val) == 5  # round(0.3 * 15), half up
    for other in (beside_15, beside_8):
        assert other.clients[0].val.tolist() == alone.clients[0].val.tolist()
    assert len(beside_8.clients[1].val) == 2 and (beside_8.clients[1].val >= 15).all()


def test_the_number_of_clients_must_match_the_data(sites_csv: Path) -> None:
    cfg = natural_config(f"csv:{sites_csv}", data={"client": "site"})
    ds = load_dataset(cfg.dataset, options=read_options(cfg))
    assert ds.clients is not None
    for asked in (0, 4):
        assert partition_of(natural_config(cfg.dataset, **_with(cfg, asked)), ds).num_clients == 4
    with pytest.raises(PartitionError) as info:
        partition_of(natural_config(cfg.dataset, **_with(cfg, 3)), ds)
    assert_partition_error(
        info.value,
        "3 clients asked for but the data holds 4 (east, north, south, west)",
        "set partition.clients = 4, or 0",
    )
    with pytest.raises(ConfigError, match="natural' takes its clients from the data"):
        partition_spec(cfg.partition)


def _with(cfg: config.ExperimentConfig, clients: int) -> dict[str, Any]:
    return {"data": {"client": "site"}, "partition": {"clients": clients}}


def assert_partition_error(exc: BaseException, *parts: str) -> None:
    message = str(exc)
    assert isinstance(exc, PartitionError) and "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_clients_too_small_to_split_are_named(tmp_path: Path) -> None:
    rows = [[i, i % 2, "big", "train"] for i in range(6)]
    rows += [[9, 0, "tiny", "train"], [9, 1, "tiny", "test"], [1, 1, "big", "test"]]
    path = write_csv(tmp_path / "t.csv", ["a", "label", "site", "split"], rows)
    cfg = natural_config(f"csv:{path}", data={"client": "site"})
    with pytest.raises(PartitionError) as info:
        prepare(cfg)
    assert_partition_error(info.value, "client 'tiny' has 1 training example", "at least 2")
    rows[-2] = [9, 1, "tiny", "train"]  # now "tiny" has no test row
    write_csv(path, ["a", "label", "site", "split"], rows)
    with pytest.raises(PartitionError) as info:
        prepare(cfg)
    assert_partition_error(info.value, "client 'tiny' has no test examples")


def test_bad_natural_specs_are_refused() -> None:
    rows = ClientRows(("a",), np.zeros(4, np.int64), np.zeros(1, np.int64), np.arange(1))
    for fraction in (0.0, 1.0, True, "0.2"):
        with pytest.raises(PartitionError, match="val_fraction"):
            NaturalSpec(rows, fraction)  # type: ignore[arg-type]
    with pytest.raises(PartitionError, match="cover 4 train"):
        make_partition(NaturalSpec(rows, 0.5), np.zeros(3, np.int64), np.zeros(1, np.int64), 1, 0)


# --------------------------------------------------------------------------------------
# The [data] section
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"data": {"test_fraction": 1.0}}, r"data.test_fraction must be in \(0, 1\), got 1.0"),
        ({"data": {"val_fraction": 0}}, r"data.val_fraction must be in \(0, 1\)"),
        ({"data": {"vocab_size": 0}}, "data.vocab_size must be at least 1"),
        ({"data": {"max_length": 0}}, "data.max_length must be at least 1"),
        ({"data": {"split_seed": -1}}, "data.split_seed must be >= 0"),
        ({"data": {"label": " "}}, "data.label must name the label column"),
        ({"data": {"labels": "y"}}, "unknown key 'data.labels'; known keys here: label, client"),
        ({"data": {"client": "site"}}, "data.client names a CSV column but dataset 'fashion"),
        (
            {"dataset": "csv:x.csv", "data": {"client": "label"}},
            "data.client and data.label both name column 'label'",
        ),
        ({"partition": {"scheme": "natural"}}, "takes the clients from the data, but dataset"),
        (
            {"dataset": "csv:x.csv", "partition": {"scheme": "natural"}},
            "with data.client set to its client-id column",
        ),
        ({"dataset": "npz:x.npz", "partition": {"scheme": "natural"}}, "or dataset = 'clients:"),
        ({"partition": {"clients": 0}}, "partition.clients must be at least 1, got 0"),
        (
            {"dataset": "clients:d", "partition": {"scheme": "natural", "clients": -1}},
            "partition.clients must be >= 0",
        ),
        ({"dataset": "parquet:x"}, "dataset: unknown data format 'parquet'"),
    ],
)
def test_data_section_errors_are_one_line(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        config.from_dict(data)
    assert "\n" not in str(info.value)


def test_data_section_defaults_and_round_trip() -> None:
    cfg = config.from_dict({})
    assert read_options(cfg) == ReadOptions()
    cfg = config.from_dict(
        {
            "dataset": "csv:sites.csv",
            "data": {"client": "site", "label": "y", "test_fraction": 0.3, "split_seed": 2},
            "partition": {"scheme": "natural", "clients": 4},
        }
    )
    assert read_options(cfg) == ReadOptions(label="y", client="site", test_fraction=0.3, seed=2)
    text = config.dumps_toml(config.to_dict(cfg))
    assert "[data]" in text
    import tomllib

    assert config.from_dict(tomllib.loads(text)) == cfg


# --------------------------------------------------------------------------------------
# Whole runs
# --------------------------------------------------------------------------------------


def _check_results(results: dict[str, Any], names: tuple[str, ...], opt_out: list[bool]) -> None:
    assert results["partition"]["scheme"] == "natural"
    assert results["partition"]["opt_out"] == opt_out
    assert results["clients"] == list(range(len(names)))
    assert list(results["methods"]) == PAPER
    for entry in results["methods"].values():
        for split in ("local_test", "global_test"):
            per_client = entry[split]["per_client"]
            assert len(per_client) == len(names)
            assert all(0.0 <= a <= 1.0 for a in per_client)
    # Opt-out clients never took part in a federated round.
    out = {k for k, flag in enumerate(opt_out) if flag}
    for record in results["methods"]["fedavg"]["federation"]["history"]:
        assert out.isdisjoint(record["clients"])


def test_a_run_on_a_client_column(sites_csv: Path) -> None:
    cfg = natural_config(f"csv:{sites_csv}", data={"client": "site"}, partition={"opt_out": 0.25})
    prep = prepare(cfg)
    part = prep.partition
    assert prep.train.n.tolist() == [len(c.train) for c in part.clients]
    assert prep.test.n.tolist() == [len(c.test) for c in part.clients]
    assert prep.global_test.n.tolist() == [len(prep.dataset.y_test)] * 4
    results = run_experiment(cfg)
    _check_results(results, part.names, [bool(v) for v in part.opt_out])
    assert run_experiment(cfg)["methods"] == results["methods"]  # same seed, same results


def test_a_run_on_one_file_per_client_with_a_shared_test_set(tmp_path: Path) -> None:
    sizes = {"c1": (20, 6), "c2": (14, None), "c10": (30, 8)}
    for k, (name, (n_train, n_test)) in enumerate(sizes.items()):
        write_npz(tmp_path / "clients" / f"{name}.npz", **client_arrays(k, n_train, n_test))
    shared = client_arrays(9, 25, None)
    write_npz(tmp_path / "test.npz", x_test=shared["x_train"], y_test=shared["y_train"])
    cfg = natural_config(f"clients:{tmp_path}", partition={"clients": 3})
    prep = prepare(cfg)
    assert prep.partition.names == ("c1", "c2", "c10")
    assert prep.test.n.tolist() == [6, 3, 8]  # c2 held out round(0.2 * 14) of its own
    assert prep.global_test.n.tolist() == [25, 25, 25]  # test.npz, not the clients' tests
    np.testing.assert_array_equal(prep.global_test.y.cpu().numpy(), shared["y_train"])
    results = run_experiment(cfg)
    _check_results(results, prep.partition.names, [False, False, False])
