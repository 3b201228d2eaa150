"""From a config to everything the stages need, decoded and on the device once:
dataset arrays -> partition (index arrays) -> cohort tensors -> networks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedmoe.data import ArrayDataset, ReadOptions, load_dataset
from fedmoe.data.partition import (
    DirichletSpec,
    IIDSpec,
    MajoritySpec,
    NaturalSpec,
    Partition,
    PartitionSpec,
    ShardsSpec,
    Sizes,
    make_partition,
)
from fedmoe.engine import ClientData, EarlyStopping, OptimizerConfig, TrainConfig, precision
from fedmoe.errors import ConfigError
from fedmoe.experiment import rotation
from fedmoe.experiment.config import (
    ExperimentConfig,
    FederatedSection,
    PartitionConfig,
    PersonaliseSection,
    StoppingConfig,
)
from fedmoe.federation import FederationConfig
from fedmoe.methods.base import ProgressFactory, RunSpec
from fedmoe.models import (
    Model,
    ModuleNetwork,
    build_network,
    default_architecture,
    load_factory,
    registered_model,
)
from fedmoe.models.text import bilstm_factory


def partition_spec(p: PartitionConfig) -> PartitionSpec:
    """The partition spec a configuration section describes (a synthetic scheme; the
    natural scheme needs the data: :func:`partition_of`)."""
    if p.scheme == "natural":
        raise ConfigError(
            "partition.scheme = 'natural' takes its clients from the data; build it with"
            " the dataset (fedmoe run, or prepare.partition_of)"
        )
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


#: A mean or std of the inputs: one number, or one per feature (``(F,)``).
Stat = float | np.ndarray


def is_token_ids(x: np.ndarray) -> bool:
    """Whether inputs are integer token ids (any integer dtype but ``uint8`` pixels)."""
    return x.dtype.kind in "iu" and x.dtype != np.uint8


def to_tensor(
    x: np.ndarray, mean: Stat, std: Stat, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Inputs as floats standardised with the train split's mean and std (one number,
    or one per feature, see :func:`input_stats`); token ids stay ``int64`` as they are."""
    if is_token_ids(x):
        return torch.tensor(x, dtype=torch.int64, device=device)
    t = torch.tensor(x, dtype=torch.float64)
    if x.dtype == np.uint8:
        t = t / 255.0
    if isinstance(mean, np.ndarray) or isinstance(std, np.ndarray):
        mean_t = torch.as_tensor(mean, dtype=torch.float64)
        std_t = torch.as_tensor(std, dtype=torch.float64)
        return ((t - mean_t) / std_t).to(dtype=dtype, device=device)
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
    net: Model
    gate_net: Model
    specialist_net: Model


def torch_dtype(cfg: ExperimentConfig) -> torch.dtype:
    """The floating-point dtype of the parameters and data the config asks for (float32
    for ``bf16-mixed``, whose products compute in bfloat16)."""
    return torch.float64 if cfg.dtype == "float64" else torch.float32


def mixed_precision(cfg: ExperimentConfig, device: torch.device) -> bool:
    """Whether the run computes in bf16 mixed precision (:mod:`fedmoe.engine.precision`);
    a one-line ConfigError where ``device`` has no native bfloat16."""
    if cfg.dtype != "bf16-mixed":
        return False
    why = precision.unsupported(device)
    if why is not None:
        raise ConfigError(f"dtype 'bf16-mixed': {why}; use dtype=float32")
    return True


def input_stats(ds: ArrayDataset) -> tuple[Stat, Stat]:
    """Mean and std of the train split's inputs (``uint8`` scaled to [0, 1]), used to
    standardise every split and every client alike: one number each for images and
    signals; per feature (``float64 (F,)`` arrays, a constant feature's std taken as 1)
    for tabular features (``float (N, F)``); ``(0.0, 1.0)`` for token ids, which are
    not standardised."""
    if is_token_ids(ds.x_train):
        return 0.0, 1.0
    if ds.x_train.dtype.kind == "f" and ds.x_train.ndim == 2:
        means = ds.x_train.mean(axis=0, dtype=np.float64)
        stds = ds.x_train.std(axis=0, dtype=np.float64)
        return means, np.where(stds > 0, stds, 1.0)
    scale = 255.0 if ds.x_train.dtype == np.uint8 else 1.0
    mean = float(ds.x_train.mean()) / scale
    std = float(ds.x_train.std()) / scale or 1.0
    return mean, std


def _network(spec: str, cfg: ExperimentConfig, input_shape: tuple[int, ...], classes: int) -> Model:
    """A built-in architecture (``auto``: the paper's for the data), the paper's AG News
    ``bilstm``, or a user factory ``package.module:function`` (or a registered name)."""
    if spec == "auto" and cfg.dataset.startswith("agnews:"):
        spec = "bilstm"
    shape = tuple(input_shape)
    if spec == "bilstm":
        # Token ids: padding 0, unknown 1, then the vocabulary.
        factory = bilstm_factory(cfg.data.vocab_size + 2)
        return ModuleNetwork(spec, shape, classes, factory, head_name=cfg.head)
    if ":" in spec or registered_model(spec) is not None:
        return ModuleNetwork(spec, shape, classes, load_factory(spec), head_name=cfg.head)
    arch = default_architecture(shape) if spec == "auto" else spec
    return build_network(arch, shape, classes, dropout=cfg.dropout)


def build_networks(
    cfg: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int
) -> tuple[Model, Model, Model]:
    """The classifier, the gate network (the classifier's architecture with one logit)
    and the specialists' network (``specialist_model``; the classifier's by default) the
    config describes for this data."""
    net = _network(cfg.model, cfg, input_shape, num_classes)
    gate_net = net.as_gate(1)
    specialist = cfg.specialist_model
    specialist_net = (
        net
        if specialist in ("", cfg.model)
        else _network(specialist, cfg, input_shape, num_classes)
    )
    return net, gate_net, specialist_net


def read_options(cfg: ExperimentConfig) -> ReadOptions:
    """How the ``[data]`` section says the user's own files are read."""
    d = cfg.data
    return ReadOptions(
        label=d.label,
        client=d.client,
        test_fraction=d.test_fraction,
        seed=d.split_seed,
        vocab_size=d.vocab_size,
        max_length=d.max_length,
    )


def load_data(cfg: ExperimentConfig, data_dir: str = "") -> ArrayDataset:
    """The configured dataset, read as ``[data]`` says (looked up in ``data_dir``, else
    in the config's)."""
    return load_dataset(cfg.dataset, data_dir or cfg.data_dir or None, read_options(cfg))


def natural_spec(cfg: ExperimentConfig, ds: ArrayDataset) -> NaturalSpec:
    """The natural partition of ``ds``: the clients its files name."""
    if ds.clients is None:
        raise ConfigError(
            f"partition.scheme = 'natural' but {ds.name} names no clients: set data.client"
            " to a CSV's client-id column, or use dataset = 'clients:DIR'"
        )
    return NaturalSpec(ds.clients, cfg.data.val_fraction, cfg.partition.clients)


def partition_of(cfg: ExperimentConfig, ds: ArrayDataset) -> Partition:
    """The client partition the config describes for dataset ``ds``."""
    natural = cfg.partition.scheme == "natural"
    spec = natural_spec(cfg, ds) if natural else partition_spec(cfg.partition)
    return make_partition(
        spec,
        ds.y_train,
        ds.y_test,
        ds.num_classes,
        cfg.seed,
        cfg.partition.opt_out,
    )


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Load the dataset, partition it, and build the cohort tensors and networks."""
    ds = load_data(cfg)
    part = partition_of(cfg, ds)
    device = resolve_device(cfg.device)
    dtype = torch_dtype(cfg)
    mean, std = input_stats(ds)
    x_train = to_tensor(ds.x_train, mean, std, dtype, device)
    x_test = to_tensor(ds.x_test, mean, std, dtype, device)
    y_train = torch.from_numpy(ds.y_train.astype(np.int64)).to(device)
    y_test = torch.from_numpy(ds.y_test.astype(np.int64)).to(device)
    net, gate_net, specialist_net = build_networks(cfg, ds.input_shape, ds.num_classes)
    rotations = cfg.partition.rotations
    rotation.check(rotations, ds.input_shape)
    clients = range(part.num_clients)

    def cohort(x: torch.Tensor, y: torch.Tensor, split: str) -> ClientData:
        data = ClientData.from_indices(x, y, part.split(split))
        return rotation.rotate_clients(data, clients, rotations)

    return Prepared(
        dataset=ds,
        partition=part,
        train=cohort(x_train, y_train, "train"),
        val=cohort(x_train, y_train, "val"),
        test=cohort(x_test, y_test, "test"),
        global_test=global_test(cfg, ds, x_test, y_test, part.num_clients),
        net=net,
        gate_net=gate_net,
        specialist_net=specialist_net,
    )


def global_test_rows(cfg: ExperimentConfig, ds: ArrayDataset) -> np.ndarray:
    """The rows of the test split that form the global test set (the first
    ``data.global_test_examples`` of them when that is set)."""
    return ds.global_test[: cfg.data.global_test_examples or None]


def global_test(
    cfg: ExperimentConfig,
    ds: ArrayDataset,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    num_clients: int,
) -> ClientData:
    """The global test set (:func:`global_test_rows` of the test tensors, turned as
    ``partition.rotations`` says) shared by ``num_clients`` clients."""
    rows = global_test_rows(cfg, ds)
    if len(rows) < len(ds.y_test):
        index = torch.tensor(rows, dtype=torch.int64, device=x_test.device)
        x_test, y_test = x_test[index], y_test[index]
    x_test = rotation.rotate_examples(x_test, cfg.partition.rotations)
    return ClientData.common(x_test, y_test, num_clients)


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
    net: Model,
    gate_net: Model,
    input_shape: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    progress: ProgressFactory | None = None,
    specialist_net: Model | None = None,
) -> RunSpec:
    """What every method of the run sees (see :class:`~fedmoe.methods.base.RunSpec`)."""
    extra = {} if progress is None else {"progress": progress}
    return RunSpec(
        seed=cfg.seed,
        net=net,
        gate_net=gate_net,
        specialist_net=specialist_net or net,
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        dropout=cfg.dropout,
        dtype=torch_dtype(cfg),
        device=device,
        federation=federation_config(cfg),
        personalise=personalise_config(cfg),
        **extra,
    )
