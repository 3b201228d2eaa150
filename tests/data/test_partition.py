"""Exact properties of the client partitioners (fedmoe.data.partition)."""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmoe.data.partition import (
    SPEC_TYPES,
    SPLITS,
    DirichletSpec,
    IIDSpec,
    MajoritySpec,
    Partition,
    PartitionSpec,
    ShardsSpec,
    Sizes,
    label_counts,
    make_partition,
    opt_out_mask,
    partition_to_json,
)
from fedmoe.data.plot import plot_partition
from fedmoe.errors import PartitionError

IntArray = npt.NDArray[np.int64]
EPS = 1e-9
FASHION = Path("/usr/share/datasets/fashion-mnist")
PROPERTY = settings(max_examples=100, deadline=None)


# --------------------------------------------------------------------------- helpers


def _labels(per_class: list[int], seed: int) -> IntArray:
    """Shuffled labels with ``per_class[c]`` samples of class ``c``."""
    labels = np.repeat(np.arange(len(per_class), dtype=np.int64), per_class)
    return np.random.default_rng(seed).permutation(labels)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _assert_rounded(counts: IntArray, target: npt.NDArray[np.float64]) -> None:
    """Each count is floor or ceil of its real-valued target (so within 1 of it)."""
    assert np.all(counts >= np.floor(target - EPS)), (counts, target)
    assert np.all(counts <= np.ceil(target + EPS)), (counts, target)


def _check_common(
    part: Partition, spec: PartitionSpec, y_train: IntArray, y_test: IntArray, num_classes: int
) -> dict[str, IntArray]:
    """Invariants every scheme guarantees; returns the per-split label counts."""
    sizes = spec.sizes
    n = {"train": sizes.n_train, "val": sizes.n_val, "test": sizes.n_test}
    assert part.num_clients == sizes.num_clients
    assert part.scheme == spec.scheme
    assert part.opt_out.shape == (sizes.num_clients,) and part.opt_out.dtype == np.bool_
    assert part.label_dist.shape == (sizes.num_clients, num_classes)
    assert np.all(part.label_dist >= 0)
    np.testing.assert_allclose(part.label_dist.sum(axis=1), 1.0, atol=1e-9)
    for client in part.clients:
        for split in SPLITS:
            idx = getattr(client, split)
            assert idx.dtype == np.int64 and idx.ndim == 1
            assert idx.size == n[split]  # sizes exact
            assert not idx.flags.writeable
            assert np.all(np.diff(idx) > 0)  # sorted, no duplicates within the array
            bound = y_test.size if split == "test" else y_train.size
            assert idx.size == 0 or (idx.min() >= 0 and idx.max() < bound)
    # No train-split index twice anywhere: across clients, and across train/val.
    used = np.concatenate([a for c in part.clients for a in (c.train, c.val)])
    assert np.unique(used).size == used.size
    counts = label_counts(part, y_train, y_test, num_classes)
    for split in SPLITS:
        assert counts[split].shape == (sizes.num_clients, num_classes)
        assert np.all(counts[split].sum(axis=1) == n[split])
    return counts


def _check_rounded_from_dist(
    part: Partition, spec: PartitionSpec, counts: dict[str, IntArray]
) -> None:
    """Every split's counts are a floor/ceil rounding of n * label_dist (mixes match)."""
    for split, n in zip(SPLITS, spec.sizes.per_split, strict=True):
        _assert_rounded(counts[split], n * part.label_dist)
        assert np.all(counts[split][part.label_dist == 0] == 0)


def _class_uses(groups: list[tuple[int, ...]], num_classes: int) -> IntArray:
    return np.bincount(
        np.array([c for g in groups for c in g], dtype=np.int64), minlength=num_classes
    )


def _check_majority(
    part: Partition, spec: MajoritySpec, counts: dict[str, IntArray], num_classes: int
) -> None:
    groups = [c.majority for c in part.clients]
    assert all(len(g) == 2 and g[0] != g[1] for g in groups)
    uses = _class_uses(groups, num_classes)
    if spec.pairs == "disjoint":
        assert uses.max() <= 1  # no class is a majority class of two clients
    else:
        assert uses.max() - uses.min() <= 1  # spread as evenly as possible
    rows = np.arange(part.num_clients)
    pairs = np.array(groups, dtype=np.int64).reshape(-1, 2)
    for split, n in zip(SPLITS, spec.sizes.per_split, strict=True):
        c = counts[split]
        expected = _round_half_up(spec.p * n)
        assert abs(expected - spec.p * n) <= 0.5 + EPS
        first, second = c[rows, pairs[:, 0]], c[rows, pairs[:, 1]]
        assert np.all(first + second == expected)  # majority count exact
        assert np.all(first == (expected + 1) // 2) and np.all(second == expected // 2)
        # The rest follows the client's minority mix (shared by all splits).
        minority = part.label_dist.copy()
        minority[rows[:, None], pairs] = 0.0
        mass = minority.sum(axis=1, keepdims=True)
        share = np.divide(minority, mass, out=np.zeros_like(minority), where=mass > 0)
        rest = c.copy()
        rest[rows[:, None], pairs] = 0
        _assert_rounded(rest, (n - expected) * share)


# --------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Case:
    spec: PartitionSpec
    y_train: IntArray
    y_test: IntArray
    num_classes: int
    seed: int
    opt_out: float


@st.composite
def _sizes_and_labels(
    draw: st.DrawFn, min_classes: int = 2, max_clients: int = 20
) -> tuple[Sizes, IntArray, IntArray, int]:
    """Small sizes and labels guaranteed to hold enough samples of every class."""
    num_classes = draw(st.integers(min_classes, 12))
    num_clients = draw(st.integers(1, max_clients))
    n_train = draw(st.integers(0, 8))
    n_val = draw(st.integers(0, 7))
    n_test = draw(st.integers(0, 20))
    # Each class can feed every client's whole train+val set: never runs out.
    floor_train = max(1, num_clients * (n_train + n_val))
    per_class_train = draw(
        st.lists(
            st.integers(floor_train, floor_train + 40),
            min_size=num_classes,
            max_size=num_classes,
        )
    )
    per_class_test = draw(
        st.lists(st.integers(n_test, n_test + 20), min_size=num_classes, max_size=num_classes)
    )
    shuffle = draw(st.integers(0, 2**16))
    sizes = Sizes(num_clients, n_train, n_val, n_test)
    return (
        sizes,
        _labels(per_class_train, shuffle),
        _labels(per_class_test, shuffle + 1),
        num_classes,
    )


SEEDS = st.integers(0, 2**32)
FRACTIONS = st.floats(0.0, 1.0, allow_nan=False)


def _run(case: Case) -> tuple[Partition, dict[str, IntArray]]:
    part = make_partition(
        case.spec, case.y_train, case.y_test, case.num_classes, case.seed, case.opt_out
    )
    again = make_partition(
        case.spec, case.y_train, case.y_test, case.num_classes, case.seed, case.opt_out
    )
    assert _fingerprint(part) == _fingerprint(again)  # deterministic
    counts = _check_common(part, case.spec, case.y_train, case.y_test, case.num_classes)
    k = case.spec.sizes.num_clients
    assert part.opt_out.sum() == _round_half_up(case.opt_out * k)
    return part, counts


def _fingerprint(part: Partition) -> tuple[Any, ...]:
    return (
        tuple((*(getattr(c, s).tolist() for s in SPLITS), c.majority) for c in part.clients),
        part.opt_out.tolist(),
        part.label_dist.tolist(),
    )


# --------------------------------------------------------------------------- properties


@PROPERTY
@given(data=_sizes_and_labels(), p=FRACTIONS, seed=SEEDS, opt_out=FRACTIONS)
def test_majority_overlap(
    data: tuple[Sizes, IntArray, IntArray, int], p: float, seed: int, opt_out: float
) -> None:
    sizes, y_train, y_test, num_classes = data
    if num_classes == 2:
        p = 1.0  # two classes leave no other class for the 1-p share
    spec = MajoritySpec(sizes, p, "overlap")
    part, counts = _run(Case(spec, y_train, y_test, num_classes, seed, opt_out))
    _check_majority(part, spec, counts, num_classes)


@PROPERTY
@given(data=_sizes_and_labels(min_classes=2), p=FRACTIONS, seed=SEEDS, opt_out=FRACTIONS)
def test_majority_disjoint(
    data: tuple[Sizes, IntArray, IntArray, int], p: float, seed: int, opt_out: float
) -> None:
    sizes, y_train, y_test, num_classes = data
    clients = min(sizes.num_clients, num_classes // 2)
    sizes = Sizes(clients, sizes.n_train, sizes.n_val, sizes.n_test)
    if num_classes == 2:
        p = 1.0
    spec = MajoritySpec(sizes, p, "disjoint")
    part, counts = _run(Case(spec, y_train, y_test, num_classes, seed, opt_out))
    _check_majority(part, spec, counts, num_classes)


@PROPERTY
@given(
    data=_sizes_and_labels(),
    alpha=st.sampled_from([1e-3, 0.05, 0.3, 1.0, 5.0, 1e4]) | st.floats(0.01, 100.0),
    seed=SEEDS,
    opt_out=FRACTIONS,
)
def test_dirichlet(
    data: tuple[Sizes, IntArray, IntArray, int], alpha: float, seed: int, opt_out: float
) -> None:
    sizes, y_train, y_test, num_classes = data
    spec = DirichletSpec(sizes, alpha)
    part, counts = _run(Case(spec, y_train, y_test, num_classes, seed, opt_out))
    assert all(c.majority == () for c in part.clients)
    _check_rounded_from_dist(part, spec, counts)


@PROPERTY
@given(data=_sizes_and_labels(), seed=SEEDS, opt_out=FRACTIONS)
def test_iid(data: tuple[Sizes, IntArray, IntArray, int], seed: int, opt_out: float) -> None:
    sizes, y_train, y_test, num_classes = data
    spec = IIDSpec(sizes)
    part, counts = _run(Case(spec, y_train, y_test, num_classes, seed, opt_out))
    if y_train.size:
        frequencies = np.bincount(y_train, minlength=num_classes) / y_train.size
        np.testing.assert_allclose(part.label_dist, np.tile(frequencies, (part.num_clients, 1)))
    _check_rounded_from_dist(part, spec, counts)


@PROPERTY
@given(data=_sizes_and_labels(), k_share=st.floats(0.0, 1.0), seed=SEEDS, opt_out=FRACTIONS)
def test_shards(
    data: tuple[Sizes, IntArray, IntArray, int], k_share: float, seed: int, opt_out: float
) -> None:
    sizes, y_train, y_test, num_classes = data
    k = 1 + math.floor(k_share * (num_classes - 1))
    spec = ShardsSpec(sizes, k)
    part, counts = _run(Case(spec, y_train, y_test, num_classes, seed, opt_out))
    groups = [c.majority for c in part.clients]
    assert all(len(set(g)) == k for g in groups)
    uses = _class_uses(groups, num_classes)
    assert uses.max() - uses.min() <= 1
    _check_rounded_from_dist(part, spec, counts)
    for split, n in zip(SPLITS, spec.sizes.per_split, strict=True):
        for client, group in zip(counts[split], groups, strict=True):
            held = client[list(group)]
            assert held.sum() == n and held.min() >= n // k and held.max() <= -(-n // k)


@PROPERTY
@given(clients=st.integers(1, 300), fraction=FRACTIONS, seed=SEEDS)
def test_opt_out_mask_exact_seeded_nested(clients: int, fraction: float, seed: int) -> None:
    mask = opt_out_mask(clients, fraction, seed)
    assert mask.shape == (clients,) and mask.dtype == np.bool_
    assert mask.sum() == _round_half_up(fraction * clients)
    assert abs(mask.sum() - fraction * clients) <= 0.5 + EPS
    assert np.array_equal(mask, opt_out_mask(clients, fraction, seed))
    smaller = opt_out_mask(clients, fraction / 2, seed)
    assert not np.any(smaller & ~mask)  # a larger fraction opts out a superset


# --------------------------------------------------------------------------- fixed cases


def _dataset(
    num_classes: int = 10, per_class: int = 300, per_class_test: int = 60
) -> tuple[IntArray, IntArray]:
    y_train = _labels([per_class] * num_classes, 1)
    y_test = _labels([per_class_test] * num_classes, 2)
    return y_train, y_test


ALL_SPECS: list[PartitionSpec] = [
    MajoritySpec(Sizes(20, 20, 10, 15), 0.8, "overlap"),
    MajoritySpec(Sizes(5, 20, 10, 15), 0.6, "disjoint"),
    DirichletSpec(Sizes(20, 20, 10, 15), 0.5),
    IIDSpec(Sizes(20, 20, 10, 15)),
    ShardsSpec(Sizes(20, 20, 10, 15), 3),
]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.scheme)
def test_different_seeds_give_different_partitions(spec: PartitionSpec) -> None:
    y_train, y_test = _dataset()
    prints = {
        json.dumps(_fingerprint(make_partition(spec, y_train, y_test, 10, seed)))
        for seed in range(8)
    }
    assert len(prints) == 8


def test_streams_are_independent_of_other_parameters() -> None:
    y_train, y_test = _dataset()
    low = make_partition(MajoritySpec(Sizes(30, 20, 10, 10), 0.3), y_train, y_test, 10, 7, 0.2)
    high = make_partition(MajoritySpec(Sizes(30, 20, 10, 10), 0.9), y_train, y_test, 10, 7, 0.5)
    assert [c.majority for c in low.clients] == [c.majority for c in high.clients]
    assert not np.any(low.opt_out & ~high.opt_out)


@pytest.mark.parametrize("num_classes", [3, 5, 7, 10, 11, 100])
def test_overlap_pairs_even_for_many_clients(num_classes: int) -> None:
    clients = 97
    y_train, y_test = _dataset(num_classes, per_class=3 * clients, per_class_test=4)
    part = make_partition(
        MajoritySpec(Sizes(clients, 2, 1, 2), 1.0), y_train, y_test, num_classes, 3
    )
    pairs = [c.majority for c in part.clients]
    assert all(a != b for a, b in pairs)
    uses = _class_uses(pairs, num_classes)
    assert uses.min() == (2 * clients) // num_classes
    assert uses.max() - uses.min() <= 1


def test_read_only_and_json_roundtrip(tmp_path: Path) -> None:
    y_train, y_test = _dataset()
    part = make_partition(ALL_SPECS[0], y_train, y_test, 10, 0, opt_out=0.25)
    with pytest.raises(ValueError):
        part.clients[0].train[0] = 1
    counts = label_counts(part, y_train, y_test, 10)
    doc = json.loads(json.dumps(partition_to_json(part, y_train, y_test, 10, include_indices=True)))
    assert doc["scheme"] == "majority" and doc["num_clients"] == 20 and doc["num_opt_out"] == 5
    assert doc["params"] == {
        "scheme": "majority",
        "num_clients": 20,
        "n_train": 20,
        "n_val": 10,
        "n_test": 15,
        "p": 0.8,
        "pairs": "overlap",
        "seed": 0,
        "opt_out": 0.25,
    }
    for k, entry in enumerate(doc["clients"]):
        assert entry["id"] == k
        assert tuple(entry["majority"]) == part.clients[k].majority
        assert entry["opt_out"] == bool(part.opt_out[k])
        for split in SPLITS:
            assert entry["counts"][split] == counts[split][k].tolist()
            assert entry["indices"][split] == getattr(part.clients[k], split).tolist()
    slim = partition_to_json(part, y_train, y_test, 10, include_indices=False)
    assert all("indices" not in entry for entry in slim["clients"])

    png = plot_partition(part, y_train, 10, tmp_path / "plots" / "partition.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spec_types_registry() -> None:
    expected = {"majority": MajoritySpec, "dirichlet": DirichletSpec, "iid": IIDSpec}
    assert dict(SPEC_TYPES) == expected | {"shards": ShardsSpec}


# --------------------------------------------------------------------------- rejected requests


def _small() -> tuple[IntArray, IntArray]:
    return _dataset(num_classes=4, per_class=10, per_class_test=5)


def _make(spec: PartitionSpec, num_classes: int = 4, **kwargs: Any) -> Partition:
    y_train, y_test = _small()
    return make_partition(spec, y_train, y_test, num_classes, kwargs.pop("seed", 0), **kwargs)


def _exhaust() -> Partition:
    """Shards k=1 on 4 clients: each class feeds one client 5 samples, class 0 has 2."""
    y_train = _labels([2, 20, 20, 20], 0)
    return make_partition(ShardsSpec(Sizes(4, 4, 1, 1), 1), y_train, _labels([5] * 4, 1), 4, 0)


S = Sizes(2, 3, 2, 2)
BAD_REQUESTS: dict[str, Any] = {
    "p below 0": lambda: MajoritySpec(S, -0.1),
    "p above 1": lambda: MajoritySpec(S, 1.1),
    "p nan": lambda: MajoritySpec(S, float("nan")),
    "unknown pairs": lambda: MajoritySpec(S, 0.5, "some"),  # type: ignore[arg-type]
    "alpha zero": lambda: DirichletSpec(S, 0.0),
    "alpha negative": lambda: DirichletSpec(S, -1.0),
    "alpha inf": lambda: DirichletSpec(S, float("inf")),
    "alpha nan": lambda: DirichletSpec(S, float("nan")),
    "k zero": lambda: ShardsSpec(S, 0),
    "k above classes": lambda: _make(ShardsSpec(S, 5)),
    "zero clients": lambda: Sizes(0, 1, 1, 1),
    "negative n_train": lambda: Sizes(2, -1, 1, 1),
    "negative n_val": lambda: Sizes(2, 1, -1, 1),
    "negative n_test": lambda: Sizes(2, 1, 1, -1),
    "fractional size": lambda: Sizes(2, 1.5, 1, 1),  # type: ignore[arg-type]
    "bool size": lambda: Sizes(True, 1, 1, 1),
    "disjoint pairs for too many clients": lambda: _make(
        MajoritySpec(Sizes(3, 1, 1, 1), 1.0, "disjoint")
    ),
    "majority with one class": lambda: make_partition(
        MajoritySpec(S, 1.0), np.zeros(20, np.int64), np.zeros(5, np.int64), 1, 0
    ),
    "majority p<1 with two classes": lambda: make_partition(
        MajoritySpec(S, 0.5), _labels([10, 10], 0), _labels([5, 5], 1), 2, 0
    ),
    "opt-out below 0": lambda: _make(IIDSpec(S), opt_out=-0.1),
    "opt-out above 1": lambda: _make(IIDSpec(S), opt_out=1.5),
    "opt-out mask fraction": lambda: opt_out_mask(10, 2.0, 0),
    "opt-out mask clients": lambda: opt_out_mask(0, 0.5, 0),
    "negative seed": lambda: _make(IIDSpec(S), seed=-1),
    "train split too small": lambda: _make(IIDSpec(Sizes(5, 5, 4, 1))),
    "test split too small": lambda: _make(IIDSpec(Sizes(1, 1, 1, 21))),
    "class pool exhausted": lambda: _exhaust(),
    "test class exhausted": lambda: _make(ShardsSpec(Sizes(1, 1, 1, 6), 1)),
    "label out of range": lambda: _make(IIDSpec(S), num_classes=3),
    "float labels": lambda: make_partition(IIDSpec(S), np.zeros(40), np.zeros(8), 4, 0),
    "2-D labels": lambda: make_partition(
        IIDSpec(S), np.zeros((20, 2), np.int64), np.zeros(8, np.int64), 4, 0
    ),
    "zero classes": lambda: _make(IIDSpec(S), num_classes=0),
    "unknown spec": lambda: _make(S),  # type: ignore[arg-type]
    "sizes not Sizes": lambda: IIDSpec((2, 3, 2, 2)),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("make", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_impossible_requests_raise_one_line(make: Any) -> None:
    with pytest.raises(PartitionError) as info:
        make()
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message


def test_exhaustion_message_names_class_and_counts() -> None:
    with pytest.raises(PartitionError, match=r"^class 0 runs out: 4 clients need 5 .* has 2; use "):
        _exhaust()


def test_majority_minority_mix_is_drawn_per_client() -> None:
    # p=0.2 on 10 classes is near IID: every client sees most classes, mixes differ.
    y_train, y_test = _dataset()
    part = make_partition(MajoritySpec(Sizes(20, 50, 50, 50), 0.2), y_train, y_test, 10, 5)
    counts = label_counts(part, y_train, y_test, 10)["train"]
    assert np.all((counts > 0).sum(axis=1) >= 6)
    assert len({tuple(row) for row in counts.tolist()}) > 1


# --------------------------------------------------------------------------- real labels


def _idx_labels(path: Path) -> IntArray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    assert int.from_bytes(raw[:4], "big") == 2049  # IDX magic for 1-D uint8
    count = int.from_bytes(raw[4:8], "big")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)
    assert labels.size == count
    return labels


@pytest.mark.skipif(
    not (FASHION / "train-labels-idx1-ubyte.gz").exists(), reason="Fashion-MNIST not installed"
)
def test_fashion_mnist_paper_setting() -> None:
    y_train = _idx_labels(FASHION / "train-labels-idx1-ubyte.gz")
    y_test = _idx_labels(FASHION / "t10k-labels-idx1-ubyte.gz")
    spec = MajoritySpec(Sizes(100, 100, 200, 200), 0.8, "overlap")
    case = Case(spec, y_train, y_test, 10, 2021, 0.1)
    part, counts = _run(case)
    _check_majority(part, spec, counts, 10)
    assert part.opt_out.sum() == 10
    rows = np.arange(100)
    pairs = np.array([c.majority for c in part.clients])
    assert np.all(counts["train"][rows[:, None], pairs].sum(axis=1) == 80)
    assert np.all(counts["val"][rows[:, None], pairs].sum(axis=1) == 160)
    assert np.all(counts["test"][rows[:, None], pairs].sum(axis=1) == 160)
    assert np.all(_class_uses([tuple(p) for p in pairs.tolist()], 10) == 20)
