"""Client partitions: pure, seeded functions from labels to per-client index arrays.

A partition gives every client a *train* and a *validation* set drawn from the
dataset's train split and a *local-test* set drawn from its test split, all with the
same label mix, plus the set of clients that opt out of the federation.

Contract of :func:`make_partition` (checked by the tests):

- Sizes are exact: every client gets ``n_train``, ``n_val`` and ``n_test`` samples.
- Train and validation indices are disjoint across *all* clients: a train-split index
  is used at most once overall, in one client's train or validation set. Each class
  pool of the train split is shuffled once and consumed in order.
- Local-test indices are distinct within a client, drawn independently per client
  (two clients may share a test sample).
- Every split's class counts are rounded from one per-client label distribution
  (:attr:`Partition.label_dist`), so the label mixes of train, val and test match.
- Same inputs and seed, same partition. Each random decision (class assignment,
  composition, train pools, test draws, opt-out) has its own stream derived from the
  seed, so e.g. changing ``p`` does not change the majority-class pairs.
- A request that cannot be met raises :class:`~fedmoe.errors.PartitionError` with a
  one-line message saying what to change; nothing is silently shrunk.

That is the contract of the synthetic schemes. The ``natural`` scheme
(:class:`~fedmoe.data.natural.NaturalSpec`) keeps the clients the data comes split
among, with their own sizes and label mixes (contract in :mod:`fedmoe.data.natural`),
and gives the same :class:`Partition`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from fedmoe.data.natural import NaturalSpec, natural_split
from fedmoe.errors import PartitionError

__all__ = [
    "SPEC_TYPES",
    "SPLITS",
    "ClientSplit",
    "DirichletSpec",
    "IIDSpec",
    "MajoritySpec",
    "NaturalSpec",
    "Partition",
    "PartitionSpec",
    "ShardsSpec",
    "Sizes",
    "label_counts",
    "make_partition",
    "opt_out_mask",
    "partition_to_json",
    "split_label_counts",
]

IntArray: TypeAlias = npt.NDArray[np.int64]
FloatArray: TypeAlias = npt.NDArray[np.float64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
ParamValue: TypeAlias = int | float | str

SPLITS: tuple[str, str, str] = ("train", "val", "test")
"""Split names, in the order used by every per-split array."""

# One independent random stream per decision, keyed by a fixed spawn index.
_STREAMS: Mapping[str, int] = MappingProxyType(
    {"classes": 0, "composition": 1, "train_pool": 2, "test_pool": 3, "opt_out": 4}
)


def _rng(seed: int, purpose: str) -> np.random.Generator:
    """The generator for one purpose: child ``_STREAMS[purpose]`` of ``SeedSequence(seed)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS[purpose],)))


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int`` >= ``minimum``, or a PartitionError naming ``name``."""
    if isinstance(value, bool):
        raise PartitionError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise PartitionError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise PartitionError(f"{name} must be >= {minimum}, got {number}")
    return number


def _check_fraction(name: str, value: object, what: str) -> float:
    """``value`` as a finite float in [0, 1], or a PartitionError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise PartitionError(f"{name} must be a number in [0, 1], got {value!r}")
    number = float(value)
    if not (0.0 <= number <= 1.0):
        raise PartitionError(f"{name} must be in [0, 1] ({what}), got {value!r}")
    return number


def _check_labels(name: str, labels: object, num_classes: int) -> IntArray:
    """``labels`` as a 1-D int64 array with values in ``0 .. num_classes - 1``."""
    array = np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise PartitionError(
            f"{name} must be a 1-D integer label array, got dtype {array.dtype} "
            f"and shape {array.shape}"
        )
    if array.size and (int(array.min()) < 0 or int(array.max()) >= num_classes):
        raise PartitionError(
            f"{name} holds labels in [{int(array.min())}, {int(array.max())}] but "
            f"num_classes is {num_classes}; pass the dataset's number of classes"
        )
    return array.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- specs


def _check_sizes(sizes: object) -> None:
    if not isinstance(sizes, Sizes):
        raise PartitionError(f"sizes must be a Sizes value, got {type(sizes).__name__}")


@dataclass(frozen=True)
class Sizes:
    """How many clients, and how many samples each gets per split (exact)."""

    num_clients: int
    n_train: int
    n_val: int
    n_test: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_clients", _check_int("num_clients", self.num_clients, 1))
        for name in ("n_train", "n_val", "n_test"):
            object.__setattr__(self, name, _check_int(name, getattr(self, name), 0))

    @property
    def per_split(self) -> IntArray:
        """``[n_train, n_val, n_test]`` as an int64 array, in :data:`SPLITS` order."""
        return np.array([self.n_train, self.n_val, self.n_test], dtype=np.int64)


@dataclass(frozen=True)
class MajoritySpec:
    """The paper's scheme: each client has 2 majority classes holding a fraction ``p``.

    In each split of ``n`` samples, ``round(p * n)`` (half up) come from the client's
    two majority classes, split between them as evenly as possible (the first class of
    the pair gets the extra sample); the other samples come from the remaining classes,
    in a mix drawn once per client uniformly at random from those classes' train-split
    samples and shared by all three splits.

    ``pairs="disjoint"``: a seeded permutation of the classes cut into pairs, so no
    class is a majority class of two clients (at most ``C // 2`` clients).
    ``pairs="overlap"``: pairs cut from concatenated seeded permutations; over all
    clients, every class is a majority class ``floor`` or ``ceil`` of
    ``2 * num_clients / C`` times.
    """

    sizes: Sizes
    p: float
    pairs: Literal["disjoint", "overlap"] = "overlap"

    scheme: ClassVar[str] = "majority"
    hint: ClassVar[str] = "fewer clients, smaller n_train/n_val, or a lower p"

    def __post_init__(self) -> None:
        _check_sizes(self.sizes)
        object.__setattr__(self, "p", _check_fraction("p", self.p, "the majority-class fraction"))
        if self.pairs not in ("disjoint", "overlap"):
            raise PartitionError(f"pairs must be 'disjoint' or 'overlap', got {self.pairs!r}")


@dataclass(frozen=True)
class DirichletSpec:
    """Label skew: client ``k``'s label distribution is ``q_k ~ Dirichlet(alpha * 1_C)``.

    Each split's class counts are the largest-remainder rounding of ``n * q_k``, so they
    sum exactly to ``n`` and each is within 1 of ``n * q_k[c]``.
    """

    sizes: Sizes
    alpha: float

    scheme: ClassVar[str] = "dirichlet"
    hint: ClassVar[str] = "fewer clients, smaller n_train/n_val, or a larger alpha"

    def __post_init__(self) -> None:
        _check_sizes(self.sizes)
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.number):
            raise PartitionError(f"alpha must be a positive number, got {alpha!r}")
        if not (math.isfinite(float(alpha)) and float(alpha) > 0.0):
            raise PartitionError(f"alpha must be a finite number > 0, got {alpha!r}")
        object.__setattr__(self, "alpha", float(alpha))


@dataclass(frozen=True)
class IIDSpec:
    """No skew: every client's label distribution is the train split's label frequencies.

    Counts are the largest-remainder rounding of ``n * freq`` (a stratified random
    sample), so every client mirrors the dataset's label mix.
    """

    sizes: Sizes

    scheme: ClassVar[str] = "iid"
    hint: ClassVar[str] = "fewer clients or smaller n_train/n_val"

    def __post_init__(self) -> None:
        _check_sizes(self.sizes)


@dataclass(frozen=True)
class ShardsSpec:
    """Each client holds ``k`` classes in equal shares (``floor``/``ceil`` of ``n / k``).

    Classes are assigned like overlapping majority pairs: over all clients every class
    is used ``floor`` or ``ceil`` of ``k * num_clients / C`` times.
    """

    sizes: Sizes
    k: int

    scheme: ClassVar[str] = "shards"
    hint: ClassVar[str] = "fewer clients, smaller n_train/n_val, or more classes per client (k)"

    def __post_init__(self) -> None:
        _check_sizes(self.sizes)
        object.__setattr__(self, "k", _check_int("k (classes per client)", self.k, 1))


PartitionSpec: TypeAlias = MajoritySpec | DirichletSpec | IIDSpec | ShardsSpec | NaturalSpec

SPEC_TYPES: Mapping[str, type[PartitionSpec]] = MappingProxyType(
    {spec.scheme: spec for spec in (MajoritySpec, DirichletSpec, IIDSpec, ShardsSpec)}
)
"""Scheme name -> spec class of the synthetic schemes (built from :class:`Sizes`), for
configuration layers. The ``natural`` scheme (:class:`~fedmoe.data.natural.NaturalSpec`)
is built from the data's clients instead."""


# --------------------------------------------------------------------------- results


def _frozen(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class ClientSplit:
    """One client's data, as sorted, read-only int64 index arrays.

    ``train`` and ``val`` index the dataset's train split, ``test`` its test split.
    ``majority`` lists the client's majority classes (majority and shards schemes; the
    first of a majority pair gets the extra sample of an odd majority count; natural
    scheme: its two most frequent training labels, the more frequent first), else ``()``.
    """

    train: IntArray
    val: IntArray
    test: IntArray
    majority: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Partition:
    """All clients' splits, the opt-out mask and how they were made.

    ``opt_out`` is a bool array of shape ``(num_clients,)``; ``label_dist`` is the
    ``(num_clients, num_classes)`` float64 label distribution (rows sum to 1) that every
    split's class counts were rounded from. ``params`` holds the scheme's parameters,
    sizes, seed and opt-out fraction as JSON-able values. ``names``: the clients' ids
    as the data names them (natural scheme), else ``()``.

    Synthetic schemes give every client the same sizes; in a natural partition sizes
    differ and ``label_dist`` is each client's training-label frequencies.
    """

    clients: tuple[ClientSplit, ...]
    opt_out: BoolArray
    scheme: str
    params: Mapping[str, ParamValue]
    label_dist: FloatArray
    num_classes: int
    names: tuple[str, ...] = ()

    @property
    def num_clients(self) -> int:
        """How many clients the partition has."""
        return len(self.clients)

    def split(self, name: str) -> tuple[IntArray, ...]:
        """Every client's index array for split ``name`` (one of :data:`SPLITS`)."""
        if name not in SPLITS:
            raise PartitionError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return tuple(getattr(client, name) for client in self.clients)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Context:
    """What a planner may look at: sizes, classes, train-split class counts, the seed."""

    sizes: Sizes
    num_classes: int
    train_class_counts: IntArray
    seed: int

    def rng(self, purpose: str) -> np.random.Generator:
        return _rng(self.seed, purpose)


@dataclass(frozen=True)
class _Plan:
    """A scheme's decision: per-client label distribution and exact class counts.

    ``counts`` has shape ``(3, num_clients, num_classes)`` in :data:`SPLITS` order.
    """

    label_dist: FloatArray
    counts: IntArray
    majority: tuple[tuple[int, ...], ...]


def _round_half_up(values: FloatArray) -> IntArray:
    return np.floor(values + 0.5).astype(np.int64)


def _largest_remainder(totals: IntArray, dist: FloatArray, priority: FloatArray) -> IntArray:
    """Integer rows ``counts[r]`` summing exactly to ``totals[r]``, rounded from ``dist``.

    ``dist`` is ``(R, C)`` non-negative with rows summing to 1 (rows with ``totals == 0``
    may be anything non-negative). Each count is ``floor`` or ``ceil`` of
    ``totals[r] * dist[r, c]`` (so within 1 of it) and is 0 where ``dist`` is 0. The
    ``totals[r] - sum(floor)`` extra units go to the largest remainders, ties broken by
    the larger ``priority`` (a random key, so ties do not favour low class ids).
    """
    target = totals[:, None].astype(np.float64) * dist
    base = np.floor(target)
    remainder = np.where(dist > 0, target - base, -1.0)
    extra = totals - base.sum(axis=1).astype(np.int64)
    order = np.lexsort((-priority, -remainder), axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(dist.shape[1])[None, :], axis=-1)
    counts: IntArray = base.astype(np.int64) + (rank < extra[:, None])
    assert np.all(counts[dist <= 0] == 0), "largest remainder left the support"
    return counts


def _counts_from_dist(sizes: Sizes, dist: FloatArray, priority: FloatArray) -> IntArray:
    """``(3, K, C)`` counts: each split's largest-remainder rounding of ``n * dist``."""
    num_clients = dist.shape[0]
    return np.stack(
        [
            _largest_remainder(np.full(num_clients, n, dtype=np.int64), dist, priority)
            for n in sizes.per_split
        ]
    )


def _avoid_in_head(
    perm: IntArray, taken: IntArray, head_len: int, rng: np.random.Generator
) -> IntArray:
    """``perm`` with any of ``taken`` in its first ``head_len`` places swapped out.

    Each offending element swaps with a random later element not in ``taken``; there are
    always enough of those when ``len(taken) + head_len <= len(perm)``.
    """
    bad = np.flatnonzero(np.isin(perm[:head_len], taken))
    if bad.size == 0:
        return perm
    free = head_len + np.flatnonzero(~np.isin(perm[head_len:], taken))
    swap = rng.choice(free, size=bad.size, replace=False)
    result = perm.copy()
    result[bad], result[swap] = perm[swap], perm[bad]
    return result


def _balanced_groups(
    num_groups: int, size: int, num_classes: int, rng: np.random.Generator
) -> IntArray:
    """``(num_groups, size)`` classes, distinct within a group, used evenly overall.

    Groups are consecutive cuts of concatenated random permutations of the classes; a
    group straddling two permutations is repaired by swapping within the later
    permutation. Every class appears ``floor`` or ``ceil`` of
    ``num_groups * size / num_classes`` times. Requires ``size <= num_classes``.
    """
    needed = num_groups * size
    flat = np.empty(0, dtype=np.int64)
    while flat.size < needed:
        perm = rng.permutation(num_classes).astype(np.int64)
        open_len = flat.size % size
        if open_len:
            perm = _avoid_in_head(perm, flat[-open_len:], size - open_len, rng)
        flat = np.concatenate([flat, perm])
    return flat[:needed].reshape(num_groups, size)


def _class_frequencies(ctx: _Context) -> FloatArray:
    """The train split's label frequencies (uniform if it is empty, when nothing is drawn)."""
    counts = ctx.train_class_counts.astype(np.float64)
    total = float(counts.sum())
    if total == 0:
        return np.full(ctx.num_classes, 1.0 / ctx.num_classes)
    frequencies: FloatArray = counts / total
    return frequencies


def _majority_pairs(spec: MajoritySpec, ctx: _Context) -> IntArray:
    """``(num_clients, 2)`` majority classes: disjoint or evenly overlapping pairs."""
    num_clients, num_classes = ctx.sizes.num_clients, ctx.num_classes
    if num_classes < 2:
        raise PartitionError(
            f"the majority scheme needs at least 2 classes, got {num_classes}; "
            "use the iid scheme or a dataset with more classes"
        )
    rng = ctx.rng("classes")
    if spec.pairs == "overlap":
        return _balanced_groups(num_clients, 2, num_classes, rng)
    if num_clients > num_classes // 2:
        raise PartitionError(
            f"disjoint pairs allow at most {num_classes // 2} clients with {num_classes} "
            f"classes, got {num_clients}; use pairs='overlap' or fewer clients"
        )
    return rng.permutation(num_classes)[: 2 * num_clients].reshape(-1, 2).astype(np.int64)


def _minority_mix(
    spec: MajoritySpec, ctx: _Context, pairs: IntArray, total: int, rng: np.random.Generator
) -> FloatArray:
    """Each client's mix of the classes outside its pair (rows sum to 1, or 0 if none).

    One uniform draw of ``total`` samples (the client's non-majority samples over all
    splits) from the pooled train samples of those classes, as proportions.
    """
    rows = np.arange(pairs.shape[0])
    other = np.tile(_class_frequencies(ctx), (pairs.shape[0], 1))
    other[rows[:, None], pairs] = 0.0
    other_total = other.sum(axis=1, keepdims=True)
    if total == 0:
        share: FloatArray = np.divide(
            other, other_total, out=np.zeros_like(other), where=other_total > 0
        )
        return share
    empty = np.flatnonzero(other_total[:, 0] == 0)
    if empty.size:
        raise PartitionError(
            f"p={spec.p} leaves {total} samples per client (all splits) for classes outside "
            f"the majority pair, but client {int(empty[0])} has no such class with train "
            "samples; use p=1.0 or a dataset with more classes"
        )
    mix: FloatArray = rng.multinomial(total, other / other_total) / float(total)
    return mix


def _plan_majority(spec: MajoritySpec, ctx: _Context) -> _Plan:
    num_clients = ctx.sizes.num_clients
    pairs = _majority_pairs(spec, ctx)
    n = ctx.sizes.per_split
    majority_n = _round_half_up(spec.p * n.astype(np.float64))
    minority_n = n - majority_n
    rng = ctx.rng("composition")
    priority = rng.random((num_clients, ctx.num_classes))
    mix = _minority_mix(spec, ctx, pairs, int(minority_n.sum()), rng)

    counts = np.stack(
        [
            _largest_remainder(np.full(num_clients, m, dtype=np.int64), mix, priority)
            for m in minority_n
        ]
    )
    rows = np.arange(num_clients)
    counts[:, rows, pairs[:, 0]] += ((majority_n + 1) // 2)[:, None]
    counts[:, rows, pairs[:, 1]] += (majority_n // 2)[:, None]

    majority_share = np.where(mix.sum(axis=1) > 0, spec.p, 1.0)
    label_dist = mix * (1.0 - majority_share)[:, None]
    label_dist[rows[:, None], pairs] = (majority_share / 2.0)[:, None]
    return _Plan(label_dist, counts, tuple(tuple(int(c) for c in pair) for pair in pairs))


def _plan_dirichlet(spec: DirichletSpec, ctx: _Context) -> _Plan:
    alpha = np.full(ctx.num_classes, float(spec.alpha))
    dist = ctx.rng("classes").dirichlet(alpha, size=ctx.sizes.num_clients)
    dist = dist / dist.sum(axis=1, keepdims=True)
    priority = ctx.rng("composition").random(dist.shape)
    counts = _counts_from_dist(ctx.sizes, dist, priority)
    return _Plan(dist, counts, ((),) * ctx.sizes.num_clients)


def _plan_iid(spec: IIDSpec, ctx: _Context) -> _Plan:
    dist = np.tile(_class_frequencies(ctx), (ctx.sizes.num_clients, 1))
    priority = ctx.rng("composition").random(dist.shape)
    counts = _counts_from_dist(ctx.sizes, dist, priority)
    return _Plan(dist, counts, ((),) * ctx.sizes.num_clients)


def _plan_shards(spec: ShardsSpec, ctx: _Context) -> _Plan:
    num_clients, num_classes = ctx.sizes.num_clients, ctx.num_classes
    if spec.k > num_classes:
        raise PartitionError(
            f"k={spec.k} classes per client exceeds the {num_classes} classes of the dataset; "
            f"use k between 1 and {num_classes}"
        )
    groups = _balanced_groups(num_clients, spec.k, num_classes, ctx.rng("classes"))
    dist = np.zeros((num_clients, num_classes))
    dist[np.arange(num_clients)[:, None], groups] = 1.0 / spec.k
    priority = ctx.rng("composition").random(dist.shape)
    counts = _counts_from_dist(ctx.sizes, dist, priority)
    return _Plan(dist, counts, tuple(tuple(int(c) for c in group) for group in groups))


_PLANNERS: Mapping[type, Callable[[Any, _Context], _Plan]] = MappingProxyType(
    {
        MajoritySpec: _plan_majority,
        DirichletSpec: _plan_dirichlet,
        IIDSpec: _plan_iid,
        ShardsSpec: _plan_shards,
    }
)


# --------------------------------------------------------------------------- sampling


def _concat_ranges(starts: IntArray, lengths: IntArray) -> IntArray:
    """Concatenation of ``arange(s, s + l)`` for each ``(s, l)``, vectorised."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    shift = np.repeat(starts - (ends - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)


def _grouped_by_class(
    labels: IntArray, num_classes: int, order: IntArray
) -> tuple[IntArray, IntArray]:
    """Indices sorted by class (keeping ``order`` within a class), and class start offsets."""
    by_class = order[np.argsort(labels[order], kind="stable")].astype(np.int64)
    sizes = np.bincount(labels, minlength=num_classes).astype(np.int64)
    return by_class, np.cumsum(sizes) - sizes


def _sample_train_val(
    counts: IntArray, y_train: IntArray, num_classes: int, rng: np.random.Generator, hint: str
) -> tuple[list[IntArray], list[IntArray]]:
    """Disjoint train and val index arrays for every client from ``(2, K, C)`` counts.

    Each class pool is shuffled once and consumed in client order (client 0 train,
    client 0 val, client 1 train, ...), so no index is used twice.
    """
    num_clients = counts.shape[1]
    pool, class_start = _grouped_by_class(y_train, num_classes, rng.permutation(y_train.size))
    available = np.bincount(y_train, minlength=num_classes)
    demand = counts.transpose(1, 0, 2).reshape(2 * num_clients, num_classes)
    needed = demand.sum(axis=0)
    short = np.flatnonzero(needed > available)
    if short.size:
        c = int(short[0])
        raise PartitionError(
            f"class {c} runs out: {num_clients} clients need {int(needed[c])} train+val "
            f"samples of it but the train split has {int(available[c])}; use {hint}"
        )
    offsets = np.cumsum(demand, axis=0) - demand
    starts = (class_start[None, :] + offsets).ravel()
    indices = pool[_concat_ranges(starts, demand.ravel())]
    pieces = np.split(indices, np.cumsum(demand.sum(axis=1))[:-1])
    train = [np.sort(piece) for piece in pieces[0::2]]
    val = [np.sort(piece) for piece in pieces[1::2]]
    return train, val


def _sample_test(
    counts: IntArray, y_test: IntArray, num_classes: int, rng: np.random.Generator
) -> list[IntArray]:
    """Local-test index arrays from ``(K, C)`` counts: without replacement within a
    client, independently across clients."""
    num_clients = counts.shape[0]
    pool, class_start = _grouped_by_class(y_test, num_classes, np.arange(y_test.size))
    available = np.bincount(y_test, minlength=num_classes)
    over = np.argwhere(counts > available[None, :])
    if over.size:
        k, c = (int(v) for v in over[0])
        raise PartitionError(
            f"client {k} needs {int(counts[k, c])} local-test samples of class {c} but the "
            f"test split has {int(available[c])}; use a smaller n_test or a less skewed partition"
        )
    client_parts: list[IntArray] = []
    index_parts: list[IntArray] = []
    for c in range(num_classes):
        need = counts[:, c]
        rows = np.flatnonzero(need)
        if rows.size == 0:
            continue
        size = int(available[c])
        ranks = np.argsort(rng.random((rows.size, size)), axis=1)
        chosen = ranks[np.arange(size)[None, :] < need[rows][:, None]]
        index_parts.append(pool[class_start[c] + chosen])
        client_parts.append(np.repeat(rows, need[rows]))
    if not index_parts:
        return [np.empty(0, dtype=np.int64) for _ in range(num_clients)]
    clients = np.concatenate(client_parts)
    indices = np.concatenate(index_parts)
    order = np.lexsort((indices, clients))
    return np.split(indices[order], np.cumsum(counts.sum(axis=1))[:-1])


# --------------------------------------------------------------------------- public API


def opt_out_mask(num_clients: int, fraction: float, seed: int) -> BoolArray:
    """A seeded bool mask of exactly ``round(fraction * num_clients)`` opted-out clients.

    Rounding is half up. The chosen clients are a prefix of one seeded permutation, so
    for a fixed seed a larger fraction opts out a superset of a smaller one's clients.
    The stream is independent of the partition scheme's streams.
    """
    num_clients = _check_int("num_clients", num_clients, 1)
    fraction = _check_fraction("opt-out fraction", fraction, "the share of clients opting out")
    seed = _check_int("seed", seed, 0)
    count = math.floor(fraction * num_clients + 0.5)
    mask = np.zeros(num_clients, dtype=np.bool_)
    mask[_rng(seed, "opt_out").permutation(num_clients)[:count]] = True
    return mask


def _spec_params(spec: PartitionSpec) -> dict[str, ParamValue]:
    params: dict[str, ParamValue] = {"scheme": spec.scheme}
    for key, value in asdict(spec).items():
        if key == "sizes":
            params.update(value)
        else:
            params[key] = value
    return params


def make_partition(
    spec: PartitionSpec,
    y_train: npt.ArrayLike,
    y_test: npt.ArrayLike,
    num_classes: int,
    seed: int,
    opt_out: float = 0.0,
) -> Partition:
    """Partition a dataset's labels among clients as ``spec`` says (see the module doc).

    ``y_train`` and ``y_test`` are 1-D integer labels in ``0 .. num_classes - 1`` of the
    train and test splits; ``seed`` is a non-negative int; ``opt_out`` is the fraction
    of clients opting out (see :func:`opt_out_mask`). Raises PartitionError with a
    one-line reason when the request cannot be met exactly. A
    :class:`~fedmoe.data.natural.NaturalSpec` takes the clients from the data instead
    (see :mod:`fedmoe.data.natural` for its contract; opt-out works alike).
    """
    if isinstance(spec, NaturalSpec):
        return _natural_partition(spec, y_train, y_test, num_classes, seed, opt_out)
    planner = _PLANNERS.get(type(spec))
    if planner is None:
        kinds = ", ".join(sorted(SPEC_TYPES))
        raise PartitionError(f"unknown partition spec {type(spec).__name__}; use one of {kinds}")
    num_classes = _check_int("num_classes", num_classes, 1)
    seed = _check_int("seed", seed, 0)
    train_labels = _check_labels("y_train", y_train, num_classes)
    test_labels = _check_labels("y_test", y_test, num_classes)
    sizes = spec.sizes
    mask = opt_out_mask(sizes.num_clients, opt_out, seed)
    needed = sizes.num_clients * (sizes.n_train + sizes.n_val)
    if needed > train_labels.size:
        raise PartitionError(
            f"{sizes.num_clients} clients x ({sizes.n_train} train + {sizes.n_val} val) = "
            f"{needed} samples exceed the {train_labels.size} of the train split; "
            "use fewer clients or smaller n_train/n_val"
        )
    if sizes.n_test > test_labels.size:
        raise PartitionError(
            f"n_test={sizes.n_test} exceeds the {test_labels.size} samples of the test split; "
            "use a smaller n_test"
        )
    counts_by_class = np.bincount(train_labels, minlength=num_classes).astype(np.int64)
    ctx = _Context(sizes, num_classes, counts_by_class, seed)
    plan = planner(spec, ctx)
    train, val = _sample_train_val(
        plan.counts[:2], train_labels, num_classes, ctx.rng("train_pool"), spec.hint
    )
    test = _sample_test(plan.counts[2], test_labels, num_classes, ctx.rng("test_pool"))
    clients = tuple(
        ClientSplit(_frozen(tr), _frozen(va), _frozen(te), majority)
        for tr, va, te, majority in zip(train, val, test, plan.majority, strict=True)
    )
    params = _spec_params(spec) | {"seed": seed, "opt_out": float(opt_out)}
    return Partition(
        clients=clients,
        opt_out=_frozen(mask),
        scheme=spec.scheme,
        params=MappingProxyType(params),
        label_dist=_frozen(plan.label_dist),
        num_classes=num_classes,
    )


def _natural_partition(
    spec: NaturalSpec,
    y_train: npt.ArrayLike,
    y_test: npt.ArrayLike,
    num_classes: int,
    seed: int,
    opt_out: float,
) -> Partition:
    num_classes = _check_int("num_classes", num_classes, 1)
    seed = _check_int("seed", seed, 0)
    train_labels = _check_labels("y_train", y_train, num_classes)
    test_labels = _check_labels("y_test", y_test, num_classes)
    split = natural_split(spec, train_labels, test_labels, num_classes, seed)
    clients = tuple(
        ClientSplit(_frozen(tr), _frozen(va), _frozen(te), majority)
        for tr, va, te, majority in zip(
            split.train, split.val, split.test, split.majority, strict=True
        )
    )
    params: dict[str, ParamValue] = {
        "scheme": spec.scheme,
        "num_clients": len(clients),
        "val_fraction": spec.val_fraction,
        "seed": seed,
        "opt_out": float(opt_out),
    }
    return Partition(
        clients=clients,
        opt_out=_frozen(opt_out_mask(len(clients), opt_out, seed)),
        scheme=spec.scheme,
        params=MappingProxyType(params),
        label_dist=_frozen(split.label_dist),
        num_classes=num_classes,
        names=spec.rows.names,
    )


def split_label_counts(
    partition: Partition, split: str, labels: npt.ArrayLike, num_classes: int
) -> IntArray:
    """``(num_clients, num_classes)`` int64 label counts of one split of every client.

    ``labels`` are the labels of the dataset split the indices point into (the train
    split for ``"train"`` and ``"val"``, the test split for ``"test"``).
    """
    arrays = partition.split(split)
    label_array = _check_labels(f"{split} labels", labels, num_classes)
    indices = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
    if indices.size and int(indices.max()) >= label_array.size:
        raise PartitionError(
            f"the partition's {split} indices reach {int(indices.max())} but only "
            f"{label_array.size} labels were given; pass the labels it was made from"
        )
    num_clients = partition.num_clients
    owner = np.repeat(np.arange(num_clients), [a.size for a in arrays])
    flat = np.bincount(
        owner * num_classes + label_array[indices], minlength=num_clients * num_classes
    )
    return flat.reshape(num_clients, num_classes).astype(np.int64)


def label_counts(
    partition: Partition, y_train: npt.ArrayLike, y_test: npt.ArrayLike, num_classes: int
) -> dict[str, IntArray]:
    """Per split (``"train"``, ``"val"``, ``"test"``): ``(num_clients, num_classes)`` counts."""
    labels = {"train": y_train, "val": y_train, "test": y_test}
    return {
        split: split_label_counts(partition, split, labels[split], num_classes) for split in SPLITS
    }


def partition_to_json(
    partition: Partition,
    y_train: npt.ArrayLike,
    y_test: npt.ArrayLike,
    num_classes: int,
    include_indices: bool = False,
) -> dict[str, Any]:
    """A JSON-able description: scheme, parameters and, per client, its id (and its
    name, natural partitions), majority classes, opt-out flag, label counts per split,
    label distribution and (with ``include_indices``) its index arrays as lists."""
    counts = label_counts(partition, y_train, y_test, num_classes)
    clients: list[dict[str, Any]] = []
    for k, client in enumerate(partition.clients):
        entry: dict[str, Any] = {
            "id": k,
            **({"name": partition.names[k]} if partition.names else {}),
            "majority": list(client.majority),
            "opt_out": bool(partition.opt_out[k]),
            "counts": {split: counts[split][k].tolist() for split in SPLITS},
            "label_dist": [round(float(v), 6) for v in partition.label_dist[k]],
        }
        if include_indices:
            entry["indices"] = {split: getattr(client, split).tolist() for split in SPLITS}
        clients.append(entry)
    return {
        "scheme": partition.scheme,
        "params": dict(partition.params),
        "num_clients": partition.num_clients,
        "num_classes": num_classes,
        "num_opt_out": int(partition.opt_out.sum()),
        "clients": clients,
    }
