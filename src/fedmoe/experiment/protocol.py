"""The paper's protocol: federate, personalise every client, evaluate every method.

config -> dataset arrays -> partition -> tensors on the device (once) -> FedAvg over
opt-in clients -> FT, Local and MoE for every client (opt-out included) -> accuracy of
FedAvg, Local, FT and MoE on each client's local test set and on the global test set.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fedmoe
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
from fedmoe.engine import (
    Classifier,
    ClientData,
    EarlyStopping,
    Objective,
    OptimizerConfig,
    TrainConfig,
    evaluate,
)
from fedmoe.engine.evaluate import Evaluation, Tally, batches
from fedmoe.engine.train import ProgressFn
from fedmoe.errors import ConfigError
from fedmoe.experiment import extras
from fedmoe.experiment.checkpoint import Checkpoints
from fedmoe.experiment.config import ExperimentConfig, PartitionConfig, StoppingConfig, to_dict
from fedmoe.experiment.summary import gate_summary, majority_mask, summarise
from fedmoe.experiment.sweep_format import METHOD_LABELS as METHOD_LABELS
from fedmoe.methods import (
    FedAvgConfig,
    FedAvgResult,
    FedAvgServer,
    MixtureConfig,
    PersonalisationResult,
    federate,
    finetune,
    local,
    moe,
)
from fedmoe.methods.fedavg import RoundRecord
from fedmoe.methods.mixture import Mixture, combine
from fedmoe.models import Network, Params, build_network, default_architecture

#: The paper's methods, run in every experiment; ``moe-staged``, ``moe-plus``, ``ifca``,
#: ``moe-ifca`` and ``centralised`` are added when the config enables them.
METHODS = ("fedavg", "local", "finetune", "moe")

#: ``progress(description, total)`` returns the callback a phase reports to.
ProgressFactory = Callable[[str, int], ProgressFn]


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


def global_init(cfg: ExperimentConfig, net: Network, device: torch.device) -> Params:
    """The initial global model (client axis of length 1)."""
    return net.init(cfg.seed, torch.tensor([0]), "global/init", torch_dtype(cfg), device)


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


def _optimizer(section: Any, lr: float) -> OptimizerConfig:
    return OptimizerConfig(
        section.optimizer, lr=lr, momentum=section.momentum, weight_decay=section.weight_decay
    )


def fedavg_config(cfg: ExperimentConfig) -> FedAvgConfig:
    f = cfg.fedavg
    local_cfg = TrainConfig(
        f.local_epochs, f.batch_size, _optimizer(f, f.lr), max_cohort=cfg.max_cohort
    )
    stopping = _stopping(f.stopping) if f.early_stopping else None
    return FedAvgConfig(f.rounds, f.clients_per_round, local_cfg, stopping)


def personalise_config(cfg: ExperimentConfig, lr: float) -> TrainConfig:
    p = cfg.personalise
    return TrainConfig(
        p.epochs, p.batch_size, _optimizer(p, lr), _stopping(p.stopping), cfg.max_cohort
    )


def mixture_config(cfg: ExperimentConfig) -> MixtureConfig:
    """How the MoE personalisation mixes its experts."""
    p = cfg.personalise
    return MixtureConfig(p.pool, p.train_specialist, p.gate_bias, p.moe_schedule)


@torch.no_grad()
def evaluate_mixture(
    mixture: Mixture, params: Params, data: ClientData, majority: torch.Tensor
) -> tuple[Evaluation, dict[str, Any]]:
    """The mixture's evaluation (as :func:`~fedmoe.engine.evaluate`) and, from the same
    forward passes, its mean gate weight on the specialist per client: overall, on
    samples of the client's majority classes (``majority``: bool ``(K, C)``) and on its
    other samples."""
    tally = Tally.zeros(data.num_clients, data.index.device)
    parts = []
    for x, y, valid in batches(data):
        log_ps, log_pg, logit = mixture.parts(params, x, None)
        tally.add(combine(log_ps, log_pg, logit, mixture.pool), y, valid)
        parts.append((torch.sigmoid(logit), y, valid))
    g, y, valid = (torch.cat(t, 1) for t in zip(*parts, strict=True))
    return tally.result(data.n), gate_summary(g, y, valid, majority)


def _evaluate_moe(
    mix: PersonalisationResult, test: ClientData, global_test: ClientData, majority: torch.Tensor
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trained MoE's accuracies and gate statistics on the local and global test sets."""
    assert isinstance(mix.objective, Mixture)
    accuracy, gate = {}, {}
    for split, data in (("local_test", test), ("global_test", global_test)):
        ev, gate[split] = evaluate_mixture(mix.objective, mix.params, data, majority)
        accuracy[split] = summarise(ev.accuracy)
    return accuracy, gate


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def _noop(done: int, active: int) -> None:
    del done, active


def _federate(
    cfg: ExperimentConfig,
    prep: Prepared,
    store: Checkpoints,
    bar: Callable[[str, int], ProgressFn],
    on_round: Callable[[RoundRecord], None] | None,
    models: int = 1,
) -> FedAvgResult:
    """The federated phase (with ``models`` > 1: IFCA's clustered global models, stored
    as ``clustered``), resumed from and checkpointed into ``store``."""
    name = "federate" if models == 1 else "clustered"
    done = store.load(name)
    if done is not None:
        return FedAvgResult(
            done["params"], done["best_round"], [RoundRecord(**r) for r in done["history"]]
        )
    fcfg = fedavg_config(cfg)
    every = cfg.fedavg.checkpoint_every

    def checkpoint(server: FedAvgServer) -> None:
        if on_round is not None:
            on_round(server.history[-1])
        if server.finished or server.next_round % every == 0:
            store.save(f"{name}-progress", server.state_dict())

    opt_in = np.flatnonzero(~prep.partition.opt_out)
    if models == 1:
        init = global_init(cfg, prep.net, prep.train.x.device)
    else:
        x = prep.train.x
        init = prep.net.init(cfg.seed, torch.arange(models), "clustered/init", x.dtype, x.device)
    fed = federate(
        prep.net,
        init,
        prep.train,
        prep.val,
        opt_in,
        fcfg,
        cfg.seed,
        bar("FedAvg rounds" if models == 1 else "IFCA rounds", fcfg.rounds),
        state=store.load(f"{name}-progress"),
        on_round=checkpoint,
    )
    store.save(
        name,
        {
            "params": fed.params,
            "best_round": fed.best_round,
            "history": [r.to_dict() for r in fed.history],
        },
    )
    return fed


def _stage(
    store: Checkpoints,
    name: str,
    objective: Objective,
    compute: Callable[[], PersonalisationResult],
) -> PersonalisationResult:
    """A personalisation stage, loaded from ``store`` if it finished before, else run and
    saved."""
    saved = store.load(name)
    if saved is not None:
        return PersonalisationResult(
            saved["params"], objective, saved["epochs"], saved["best_loss"]
        )
    result = compute()
    store.save(
        name, {"params": result.params, "epochs": result.epochs, "best_loss": result.best_loss}
    )
    return result


def run_experiment(
    cfg: ExperimentConfig,
    progress: ProgressFactory | None = None,
    checkpoints: Path | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> dict[str, Any]:
    """Run the whole protocol and return the results as a JSON-able dict.

    With ``checkpoints`` (a directory), the federated phase is checkpointed every
    ``fedavg.checkpoint_every`` rounds and each personalisation stage when it ends; a
    later call with the same config and directory resumes from there and returns the
    same results (up to ``timing_s``) as an uninterrupted run. ``on_round`` sees every
    FedAvg round's record as it happens (rounds restored from a checkpoint excepted).
    """

    def bar(name: str, total: int) -> ProgressFn:
        return progress(name, total) if progress is not None else _noop

    store = Checkpoints(checkpoints)
    timer = _Timer()
    with timer.phase("prepare"):
        prep = prepare(cfg)
    part, net = prep.partition, prep.net
    k = part.num_clients
    device = prep.train.x.device
    clients = torch.arange(k)
    with timer.phase("federate"):
        fed = _federate(cfg, prep, store, bar, on_round)
    pcfg = personalise_config(cfg, cfg.personalise.lr)
    epochs = cfg.personalise.epochs
    classifier = Classifier(net)
    with timer.phase("finetune"):
        ft = _stage(
            store,
            "finetune",
            classifier,
            lambda: finetune(
                net,
                fed.params,
                prep.train,
                prep.val,
                clients,
                pcfg,
                cfg.seed,
                bar("FT epochs", epochs),
            ),
        )
    with timer.phase("local"):
        loc = _stage(
            store,
            "local",
            classifier,
            lambda: local(
                net, prep.train, prep.val, clients, pcfg, cfg.seed, bar("Local epochs", epochs)
            ),
        )
    mcfg = mixture_config(cfg)
    mixture = Mixture(net, prep.gate_net, fed.params, mcfg.pool)

    def train_moe(stage: str, how: MixtureConfig, label: str) -> PersonalisationResult:
        """The paper's MoE mixing ``how`` (FT's specialists, a fresh gate), as ``stage``."""
        stages = 2 if how.schedule == "staged" else 1
        return _stage(
            store,
            stage,
            mixture,
            lambda: moe(
                net,
                prep.gate_net,
                fed.params,
                ft.params,
                prep.train,
                prep.val,
                clients,
                personalise_config(cfg, cfg.personalise.moe_lr),
                how,
                cfg.seed,
                bar(label, stages * epochs),
            ),
        )

    with timer.phase("moe"):
        mix = train_moe("moe", mcfg, "MoE epochs")
    models: dict[str, tuple[Objective, Params]] = {
        "fedavg": (Classifier(net), fed.params),
        "local": (loc.objective, loc.params),
        "finetune": (ft.objective, ft.params),
    }
    methods: dict[str, Any] = {}
    gate: dict[str, Any] = {}
    with timer.phase("evaluate"):
        for name, (objective, params) in models.items():
            methods[name] = {
                "local_test": summarise(evaluate(objective, params, prep.test).accuracy),
                "global_test": summarise(evaluate(objective, params, prep.global_test).accuracy),
            }
        majority = majority_mask(part, prep.dataset.num_classes, device)
        methods["moe"], gate = _evaluate_moe(mix, prep.test, prep.global_test, majority)
    epochs_run = {
        "finetune": ft.epochs.tolist(),
        "local": loc.epochs.tolist(),
        "moe": mix.epochs.tolist(),
    }
    extra: dict[str, Any] = {}
    if cfg.moe_staged.enabled:
        with timer.phase("moe-staged"):
            staged_cfg = replace(mcfg, schedule="staged")
            staged = train_moe("moe-staged", staged_cfg, "MoE (staged) epochs")
            methods["moe-staged"], extra["gate_staged"] = _evaluate_moe(
                staged, prep.test, prep.global_test, majority
            )
        epochs_run["moe-staged"] = staged.epochs.tolist()
    clustered = None
    if cfg.clustered.enabled:
        with timer.phase("clustered"):
            clustered = _federate(cfg, prep, store, bar, None, cfg.clustered.models)
    if cfg.moe_plus.enabled or clustered is not None:
        with timer.phase("cache-experts"):
            splits = extras.cache_splits(
                prep, fed.params, ft.params, None if clustered is None else clustered.params
            )
        gate_cfg = personalise_config(cfg, cfg.moe_plus.lr)
    if cfg.moe_plus.enabled:
        with timer.phase("moe-plus"):
            plus = extras.run_moe_plus(cfg, prep, splits, gate_cfg, store, bar)
        methods["moe-plus"] = plus["method"]
        epochs_run["moe-plus"] = plus["epochs"]
        extra["gate_plus"] = plus["gate"]
        if "ablation" in plus:
            extra["ablation"] = plus["ablation"]
    if clustered is not None:
        with timer.phase("moe-ifca"):
            ifca = extras.run_moe_ifca(cfg, prep, splits, clustered, gate_cfg, store, bar)
        methods["ifca"] = ifca["ifca"]
        methods["moe-ifca"] = ifca["method"]
        epochs_run["moe-ifca"] = ifca["epochs"]
        extra["gate_ifca"] = ifca["gate"]
        extra["clustered"] = ifca["clustered"]
    if cfg.centralised.enabled:
        with timer.phase("centralised"):
            central = extras.run_centralised(cfg, prep, store, bar)
        methods["centralised"] = {s: central[s] for s in ("local_test", "global_test")}
        epochs_run["centralised"] = [central["epochs"]]
    return {
        "fedmoe_version": fedmoe.__version__,
        "config": to_dict(cfg),
        "dataset": {
            "name": prep.dataset.name,
            "source": prep.dataset.source,
            "num_classes": prep.dataset.num_classes,
            "model": net.name,
            "model_params": net.num_params(),
        },
        "partition": {
            "scheme": part.scheme,
            "params": dict(part.params),
            "opt_out": [bool(v) for v in part.opt_out],
            "majority": [list(c.majority) for c in part.clients],
        },
        "moe_pool": cfg.personalise.pool,
        "methods": methods,
        "gate": gate,
        "fedavg": {
            "best_round": fed.best_round,
            "rounds_run": len(fed.history),
            "history": [r.to_dict() for r in fed.history],
        },
        "epochs": epochs_run,
        **extra,
        "timing_s": timer.seconds,
        "versions": {
            "fedmoe": fedmoe.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
