"""From a config to everything the stages need, decoded and on the device once:
dataset arrays -> partition (index arrays) -> cohort tensors -> networks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedmoe.data import ArrayDataset, load_dataset
from fedmoe.data.partition import (
    DirichletSpec,
    IIDSpec,
    MajoritySpec,
    Partition,
    PartitionSpec,
    ShardsSpec,
    Sizes,
    make_partition,
)
from fedmoe.engine import ClientData, EarlyStopping, OptimizerConfig, TrainConfig
from fedmoe.errors import ConfigError
from fedmoe.experiment.config import (
    ExperimentConfig,
    FederatedSection,
    PartitionConfig,
    PersonaliseSection,
    StoppingConfig,
)
from fedmoe.federation import FederationConfig
from fedmoe.methods.base import ProgressFactory, RunSpec
from fedmoe.models import Network, build_network, default_architecture


def partition_spec(p: PartitionConfig) -> PartitionSpec:
    """The partition spec a configuration section describes."""
    sizes = Sizes(p.clients, p.train, p.val, p.test)
    if p.scheme == "majority":
        return MajoritySpec(sizes, p.p, "overlap" if p.overlap else "disjoint")
    if p.scheme == "dirichlet":
        return DirichletSpec(sizes, p.alpha)
    if p.scheme == "shards":
        return ShardsSpec(sizes, p.classes_per_client)
    return IIDSpec(sizes)


def resolve_device(name: str) -> torch.device:
    """The torch device named in the config; an unavailable accelerator is an error."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available; use device=cpu")
    return torch.device(name)


def to_tensor(
    x: np.ndarray, mean: float, std: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Inputs as floats standardised with the train split's mean and std."""
    t = torch.tensor(x, dtype=torch.float64)
    if x.dtype == np.uint8:
        t = t / 255.0
    return ((t - mean) / std).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class Prepared:
    """Everything the phases need, decoded and on the device once."""

    dataset: ArrayDataset
    partition: Partition
    train: ClientData
    val: ClientData
    test: ClientData
    global_test: ClientData
    net: Network
    gate_net: Network


def torch_dtype(cfg: ExperimentConfig) -> torch.dtype:
    """The floating-point dtype the config asks for."""
    return torch.float64 if cfg.dtype == "float64" else torch.float32


def input_stats(ds: ArrayDataset) -> tuple[float, float]:
    """Mean and std of the train split's inputs (``uint8`` scaled to [0, 1]), used to
    standardise every split and every client alike."""
    scale = 255.0 if ds.x_train.dtype == np.uint8 else 1.0
    mean = float(ds.x_train.mean()) / scale
    std = float(ds.x_train.std()) / scale or 1.0
    return mean, std


def build_networks(
    cfg: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int
) -> tuple[Network, Network]:
    """The classifier and the gate network the config describes for this data."""
    arch = default_architecture(input_shape) if cfg.model == "auto" else cfg.model
    net = build_network(arch, input_shape, num_classes, dropout=cfg.dropout)
    gate_net = build_network(arch, input_shape, num_classes, gate=True, dropout=cfg.dropout)
    return net, gate_net


def partition_of(cfg: ExperimentConfig, ds: ArrayDataset) -> Partition:
    """The client partition the config describes for dataset ``ds``."""
    return make_partition(
        partition_spec(cfg.partition),
        ds.y_train,
        ds.y_test,
        ds.num_classes,
        cfg.seed,
        cfg.partition.opt_out,
    )


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Load the dataset, partition it, and build the cohort tensors and networks."""
    ds = load_dataset(cfg.dataset, cfg.data_dir or None)
    part = partition_of(cfg, ds)
    device = resolve_device(cfg.device)
    dtype = torch_dtype(cfg)
    mean, std = input_stats(ds)
    x_train = to_tensor(ds.x_train, mean, std, dtype, device)
    x_test = to_tensor(ds.x_test, mean, std, dtype, device)
    y_train = torch.from_numpy(ds.y_train.astype(np.int64)).to(device)
    y_test = torch.from_numpy(ds.y_test.astype(np.int64)).to(device)
    net, gate_net = build_networks(cfg, ds.input_shape, ds.num_classes)
    return Prepared(
        dataset=ds,
        partition=part,
        train=ClientData.from_indices(x_train, y_train, part.split("train")),
        val=ClientData.from_indices(x_train, y_train, part.split("val")),
        test=ClientData.from_indices(x_test, y_test, part.split("test")),
        global_test=ClientData.common(x_test, y_test, part.num_clients),
        net=net,
        gate_net=gate_net,
    )


def _stopping(s: StoppingConfig) -> EarlyStopping:
    return EarlyStopping(s.check_every, s.patience, s.min_delta)


def _optimizer(section: FederatedSection | PersonaliseSection) -> OptimizerConfig:
    return OptimizerConfig(
        section.optimizer,
        lr=section.lr,
        momentum=section.momentum,
        weight_decay=section.weight_decay,
    )


def federation_config(cfg: ExperimentConfig) -> FederationConfig:
    """The shared federated phase the ``[federated]`` section describes."""
    f = cfg.federated
    local = TrainConfig(f.local_epochs, f.batch_size, _optimizer(f), max_cohort=cfg.max_cohort)
    stopping = _stopping(f.stopping) if f.early_stopping else None
    return FederationConfig(f.rounds, f.clients_per_round, local, stopping)


def personalise_config(cfg: ExperimentConfig) -> TrainConfig:
    """The shared personalisation settings the ``[personalise]`` section describes."""
    p = cfg.personalise
    return TrainConfig(p.epochs, p.batch_size, _optimizer(p), _stopping(p.stopping), cfg.max_cohort)


def run_spec(
    cfg: ExperimentConfig,
    net: Network,
    gate_net: Network,
    input_shape: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    progress: ProgressFactory | None = None,
) -> RunSpec:
    """What every method of the run sees (see :class:`~fedmoe.methods.base.RunSpec`)."""
    extra = {} if progress is None else {"progress": progress}
    return RunSpec(
        seed=cfg.seed,
        net=net,
        gate_net=gate_net,
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        dropout=cfg.dropout,
        dtype=torch_dtype(cfg),
        device=device,
        federation=federation_config(cfg),
        personalise=personalise_config(cfg),
        **extra,
    )
