"""A SuperNode's own data, as the engine's one-client cohorts (K=1).

Two ways to get it (:class:`~fedmoe.flower.config.NodeOptions`):

- **partition** (default): the node loads the named dataset and computes the run's
  partition with :func:`fedmoe.data.partition.make_partition` (same spec, seed and
  opt-out fraction as ``fedmoe run``), then keeps client ``partition-id``'s rows. Its
  tensors are exactly that client's rows of the embedded simulator's tensors. This
  covers the user's own files (``npz:PATH``, ``csv:PATH``, ... read as the run's
  ``[data]`` section says) and natural partitions (client ``partition-id`` is the
  data's client of that index, in natural order of the client ids).
- **local data** (``local-data=<dir>``): the node's own examples in the dataset's
  standard files (e.g. the four IDX files of Fashion-MNIST): the train files are split
  into train and validation in the run's ``train:val`` proportion (seeded by the run's
  seed and the client id), the test files are the local test set.

Either way, inputs are standardised with the public dataset's train-split statistics
and the global test set is the public dataset's (its test split, or a natural
partition's shared test file), so every node needs the public dataset's files too
(found by the usual lookup: ``data-dir``, ``FEDMOE_DATA``, the system datasets
directory, the cache; a relative ``KIND:PATH`` is relative to ``data-dir``). Nothing
here leaves the node except what :class:`NodeData` describes as metadata (counts,
shapes, majority classes, a digest).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fedmoe import rng
from fedmoe.data import ArrayDataset, get_spec
from fedmoe.data.files import BuiltinSource, FileFormat, FileSpec
from fedmoe.data.partition import Partition
from fedmoe.data.userdata import is_user_name
from fedmoe.engine import ClientData
from fedmoe.errors import DataError
from fedmoe.experiment import rotation
from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.prepare import (
    global_test_rows,
    input_stats,
    load_data,
    partition_of,
    resolve_device,
    to_tensor,
    torch_dtype,
)
from fedmoe.flower.config import NodeOptions

ParamValue = int | float | str


@dataclass(frozen=True)
class NodeData:
    """One client's data as K=1 cohorts, and what the node may say about it.

    ``train``/``val``/``test``: the client's own examples; ``global_test``: the public
    test split (shared). ``majority``: the client's majority classes (partition mode:
    from the partition; local data: its two most frequent training labels).
    ``digest``: SHA-256 of the client's train/val/test index arrays (partition mode;
    lets anyone check a node holds the partition's rows without seeing them), else "".
    """

    client: int
    opt_out: bool
    train: ClientData
    val: ClientData
    test: ClientData
    global_test: ClientData
    input_shape: tuple[int, ...]
    num_classes: int
    majority: tuple[int, ...]
    dataset: str
    source: str
    scheme: str
    partition_params: dict[str, ParamValue] = field(default_factory=dict)
    digest: str = ""


def load_node_data(cfg: ExperimentConfig, node: NodeOptions) -> NodeData:
    """This node's data for run ``cfg`` (cached per process: a simulation actor serves
    many nodes). Raises DataError / PartitionError / ConfigError with a one-line reason."""
    return _node_data(cfg, node)


@lru_cache(maxsize=64)
def _node_data(cfg: ExperimentConfig, node: NodeOptions) -> NodeData:
    node.check(cfg)
    data_dir = node.data_dir or cfg.data_dir
    if node.local_data:
        return _local(cfg, node, data_dir)
    return _partitioned(cfg, node, data_dir)


def _dataset(cfg: ExperimentConfig, data_dir: str) -> ArrayDataset:
    return load_data(cfg, data_dir)


@lru_cache(maxsize=2)
def _partition(cfg: ExperimentConfig, data_dir: str) -> Partition:
    return partition_of(cfg, _dataset(cfg, data_dir))


@lru_cache(maxsize=2)
def _global_test(cfg: ExperimentConfig, data_dir: str) -> ClientData:
    dataset = _dataset(cfg, data_dir)
    mean, std = input_stats(dataset)
    device = resolve_device(cfg.device)
    rows = global_test_rows(cfg, dataset)
    x = to_tensor(dataset.x_test[rows], mean, std, torch_dtype(cfg), device)
    y = torch.from_numpy(dataset.y_test[rows].astype(np.int64)).to(device)
    return ClientData.common(rotation.rotate_examples(x, cfg.partition.rotations), y, 1)


def _cohorts(
    cfg: ExperimentConfig,
    client: int,
    stats: ArrayDataset,
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    n_train: int,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> tuple[ClientData, ClientData, ClientData]:
    """K=1 train / val / test cohorts of ``client``: the pool's first ``n_train`` rows
    train, the rest validate; inputs standardised (and turned, with
    ``partition.rotations``) like every other client's."""
    mean, std = input_stats(stats)
    dtype, device = torch_dtype(cfg), resolve_device(cfg.device)
    x = to_tensor(x_pool, mean, std, dtype, device)
    y = torch.from_numpy(y_pool.astype(np.int64)).to(device)
    xt = to_tensor(x_test, mean, std, dtype, device)
    yt = torch.from_numpy(y_test.astype(np.int64)).to(device)
    rows = np.arange(len(y_pool), dtype=np.int64)
    rotation.check(cfg.partition.rotations, stats.input_shape)
    cohorts = (
        ClientData.from_indices(x, y, [rows[:n_train]]),
        ClientData.from_indices(x, y, [rows[n_train:]]),
        ClientData.from_indices(xt, yt, [np.arange(len(y_test), dtype=np.int64)]),
    )
    a, b, c = (rotation.rotate_clients(d, [client], cfg.partition.rotations) for d in cohorts)
    return a, b, c


def _partitioned(cfg: ExperimentConfig, node: NodeOptions, data_dir: str) -> NodeData:
    ds = _dataset(cfg, data_dir)
    part = _partition(cfg, data_dir)
    cid = node.partition_id
    split = part.clients[cid]
    pool = np.concatenate([split.train, split.val])
    train, val, test = _cohorts(
        cfg,
        cid,
        ds,
        ds.x_train[pool],
        ds.y_train[pool],
        len(split.train),
        ds.x_test[split.test],
        ds.y_test[split.test],
    )
    digest = hashlib.sha256()
    for rows in (split.train, split.val, split.test):
        digest.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    return NodeData(
        client=cid,
        opt_out=node.opt_out or bool(part.opt_out[cid]),
        train=train,
        val=val,
        test=test,
        global_test=_global_test(cfg, data_dir),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        majority=tuple(int(c) for c in split.majority),
        dataset=ds.name,
        source=ds.source,
        scheme=part.scheme,
        partition_params=dict(part.params),
        digest=digest.hexdigest(),
    )


def _unpinned(fmt: FileFormat) -> FileFormat:
    """``fmt`` with every file's checksum and size unpinned."""
    if not dataclasses.is_dataclass(fmt):
        raise DataError(f"local data in the {fmt.kind} format is not supported")
    changes = {
        f.name: FileSpec(value.name)
        for f in dataclasses.fields(fmt)
        if isinstance(value := getattr(fmt, f.name), FileSpec)
    }
    unpinned: FileFormat = dataclasses.replace(fmt, **changes)
    return unpinned


def _local(cfg: ExperimentConfig, node: NodeOptions, data_dir: str) -> NodeData:
    if is_user_name(cfg.dataset):
        raise DataError(
            f"local-data reads a catalogue dataset's standard files, not {cfg.dataset!r};"
            " for your own files give every node the run's files (partition mode, e.g. a"
            " natural partition)"
        )
    ds = _dataset(cfg, data_dir)
    spec = get_spec(cfg.dataset)
    if isinstance(spec.source, BuiltinSource):
        raise DataError(f"{spec.name} is built in: it has no files to read local data from")
    directory = Path(node.local_data)
    # The node's own files hold its own examples: the published checksums do not apply.
    fmt = _unpinned(spec.source)
    found, missing = fmt.locate(directory)
    if missing:
        raise DataError(f"{directory}: local data lacks {', '.join(missing)}")
    x_train, y_train, x_test, y_test = fmt.decode(found).splits
    for x, y, what in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.shape[1:] != ds.input_shape or x.dtype != ds.x_train.dtype:
            raise DataError(
                f"{directory}: local {what} examples are {x.dtype} {x.shape[1:]}, "
                f"{spec.name} has {ds.x_train.dtype} {ds.input_shape}"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= ds.num_classes):
            raise DataError(f"{directory}: local {what} labels outside 0..{ds.num_classes - 1}")
    if len(y_train) < 2 or len(y_test) < 1:
        raise DataError(
            f"{directory}: local data needs at least 2 train and 1 test examples, "
            f"got {len(y_train)} and {len(y_test)}"
        )
    p = cfg.partition
    n_val = min(len(y_train) - 1, max(1, round(len(y_train) * p.val / (p.train + p.val))))
    n_train = len(y_train) - n_val
    key = rng.hash_int(cfg.seed, node.partition_id, rng.phase_id("flower/local-split"))
    order = np.random.default_rng(key).permutation(len(y_train))
    train, val, test = _cohorts(
        cfg, node.partition_id, ds, x_train[order], y_train[order], n_train, x_test, y_test
    )
    counts = np.bincount(y_train[order][:n_train], minlength=ds.num_classes)
    majority = tuple(sorted(int(c) for c in np.argsort(-counts, kind="stable")[:2]))
    return NodeData(
        client=node.partition_id,
        opt_out=node.opt_out,
        train=train,
        val=val,
        test=test,
        global_test=_global_test(cfg, data_dir),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        majority=majority,
        dataset=ds.name,
        source=ds.source,
        scheme="local-data",
        partition_params={"n_train": n_train, "n_val": n_val, "n_test": len(y_test)},
    )
