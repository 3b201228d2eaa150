"""What the pFL method tests share: toy problems (a float64 MLP on random (1, 8, 8)
inputs, clients of unequal sizes), the pieces of the plain PyTorch loops they compare
the methods with (the engine's batch order, one nn.Module per client), and the Flower
parity run (the app on a FakeGrid against the simulator, opt-out nodes audited)."""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe.engine import ClientData, OptimizerConfig, batch_order
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.federate import federate
from fedmoe.experiment.prepare import run_spec
from fedmoe.experiment.run import run_experiment
from fedmoe.federation import Clients, FederationServer, State
from fedmoe.methods.base import Federated, RunSpec
from fedmoe.models import Model, Params, build_network

Tensors = dict[str, torch.Tensor]

SHAPE = (1, 8, 8)
#: The toy problems' classifier: an MLP on (1, 8, 8) inputs, 10 classes, no dropout.
NET = build_network("mlp", SHAPE, 10, dropout=0.0)

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
#: The Flower parity runs read Fashion-MNIST.
needs_fashion = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")


# Configs.


def federated_section(
    rounds: int,
    clients_per_round: int,
    local_epochs: int,
    batch_size: int,
    lr: float,
    **more: Any,
) -> dict[str, Any]:
    """A ``federated`` config section without early stopping, ``more`` keys added."""
    return {
        "rounds": rounds,
        "clients_per_round": clients_per_round,
        "local_epochs": local_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "early_stopping": False,
        **more,
    }


def personalise_section(epochs: int, batch_size: int, patience: int, **more: Any) -> dict[str, Any]:
    """A ``personalise`` config section checking validation every epoch, ``more`` keys
    added."""
    stopping = {"check_every": 1, "patience": patience, "min_delta": 0.0}
    return {"epochs": epochs, "batch_size": batch_size, "stopping": stopping, **more}


def toy_run(settings: dict[str, Any]) -> RunSpec:
    """The float64 run of the config sections ``settings`` (``federated``,
    ``personalise``) with ``NET`` and its one-output gate, on the CPU."""
    cfg = config.from_dict({"dtype": "float64", **settings})
    return run_spec(cfg, NET, NET.as_gate(1), SHAPE, 10, torch.device("cpu"))


def sgd_run(
    rounds: int, clients_per_round: int, personal_lr: float, federated: dict[str, Any]
) -> RunSpec:
    """A run federating by SGD with momentum (2 local epochs, batches of 5; the keys of
    ``federated`` override these) and personalising by Adam at ``personal_lr`` (6
    epochs, batches of 4, patience 2)."""
    settings = federated_section(
        rounds, clients_per_round, 2, 5, 5e-2, optimizer="sgd", momentum=0.5
    )
    personalise = personalise_section(6, 4, 2, optimizer="adam", lr=personal_lr)
    return toy_run({"federated": settings | federated, "personalise": personalise})


def assert_one_line_config_error(data: dict[str, Any], match: str | None = None) -> None:
    """The config ``data`` is refused with a one-line ConfigError (matching ``match``)."""
    with pytest.raises(ConfigError, match=match) as err:
        config.from_dict(data)
    assert "\n" not in str(err.value)


# Toy data.


def toy_examples(
    total: int, teacher: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``total`` random float64 (1, 8, 8) inputs (seed 0), labelled at random over 10
    classes or, with ``teacher`` = (pixels, classes), by the argmax of a random linear
    map of the first ``pixels`` pixels onto ``classes`` classes (learnable: validation
    can improve)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(total, *SHAPE, generator=gen, dtype=torch.float64)
    if teacher is None:
        return x, torch.randint(0, 10, (total,), generator=gen)
    pixels, classes = teacher
    weights = torch.randn(pixels, classes, generator=gen, dtype=torch.float64)
    return x, (x.flatten(1)[:, :pixels] @ weights).argmax(1)


def blocks(sizes: Sequence[int], start: int = 0) -> list[np.ndarray]:
    """Consecutive blocks of rows of the given ``sizes``, the first at row ``start``."""
    starts = start + np.cumsum([0, *sizes])
    return [np.arange(starts[i], starts[i + 1]) for i in range(len(sizes))]


def toy_clients(
    x: torch.Tensor,
    y: torch.Tensor,
    train: list[np.ndarray],
    val: list[np.ndarray],
    opt_out: list[bool] | None = None,
) -> Clients:
    """Clients 0..K-1 training on rows ``train[i]`` of (x, y) and validating on rows
    ``val[i]``; none opts out unless ``opt_out`` says so."""
    k = len(train)
    return Clients(
        torch.arange(k),
        ClientData.from_indices(x, y, train),
        ClientData.from_indices(x, y, val),
        torch.tensor(opt_out or [False] * k),
    )


def toy_problem(
    sizes: Sequence[int],
    val: int,
    settings: dict[str, Any],
    opt_out: list[bool] | None = None,
    teacher: tuple[int, int] | None = None,
) -> tuple[RunSpec, Clients]:
    """``toy_run(settings)`` and clients of ``sizes`` training rows then ``val``
    validation rows each of ``toy_examples`` (labelled by the ``teacher``)."""
    x, y = toy_examples(sum(sizes) + val * len(sizes), teacher)
    val_rows = blocks([val] * len(sizes), sum(sizes))
    return toy_run(settings), toy_clients(x, y, blocks(sizes), val_rows, opt_out)


def client_index(data: ClientData, i: int) -> torch.Tensor:
    """Client i's rows of ``data.x`` and ``data.y``."""
    return data.index[i, : int(data.n[i])]


def client_rows(data: ClientData, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Client i's examples in ``data``."""
    rows = client_index(data, i)
    return data.x[rows], data.y[rows]


# Federations through a method's hooks.


def hook_rounds(
    run: RunSpec, hooks: Federated, options: Any, clients: Clients
) -> list[tuple[Params, State]]:
    """The server model and the clients' state after each round, through the hooks."""
    server = hooks.init(run, options, clients.device)
    state: State = hooks.init_client_state(run, options, clients)
    history = []
    for r in range(run.federation.rounds):
        update = hooks.client_update(run, options, server, clients, r, state)
        server = hooks.aggregate(server, update, clients.train.n)
        state = update.state
        history.append((server, state))
    return history


def federate_saving(
    run: RunSpec, hooks: Federated, options: Any, clients: Clients
) -> tuple[FederationServer, State, list[dict[str, Any]]]:
    """``federate`` and what it saved after each round (deep copies: federate goes on
    updating its tensors)."""
    saved: list[dict[str, Any]] = []

    def keep(server: FederationServer, progress: dict[str, Any]) -> None:
        saved.append(copy.deepcopy(progress))

    server, state = federate(run, hooks, options, clients, "rounds", None, keep)
    return server, state, saved


def assert_same_models(whole: FederationServer, resumed: FederationServer) -> None:
    """The same summary, final and best models, bit for bit."""
    assert resumed.summary() == whole.summary()
    for name, p in whole.params.items():
        assert torch.equal(resumed.params[name], p)
        assert torch.equal(resumed.best_params[name], whole.best_params[name])


def assert_same_state(whole: State, resumed: State) -> None:
    """Every tensor of ``whole`` in ``resumed``, bit for bit."""
    for k, v in whole.items():
        assert torch.equal(resumed[k], v), k


# Plain PyTorch: one nn.Module per client, torch.optim, the engine's batch order.


def load(net: Model, params: Tensors) -> torch.nn.Module:
    """A float64 nn.Module of ``net`` holding ``params``."""
    module = net.module().double()
    module.load_state_dict(params)
    return module


def _module_nll(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.nll_loss(module(x), y))


def nll(net: Model, params: Tensors, x: torch.Tensor, y: torch.Tensor) -> float:
    """The mean NLL of the model ``params`` on (x, y)."""
    return _module_nll(load(net, params), x, y)


def nll_grad(net: Model, params: Tensors, x: torch.Tensor, y: torch.Tensor) -> Tensors:
    """The gradient of the mean NLL of the model ``params`` on (x, y)."""
    module = load(net, params)
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(F.nll_loss(module(x), y), list(module.parameters()))
    return dict(zip(names, grads, strict=True))


def batches(key: torch.Tensor, epoch: int, n: int, batch_size: int) -> list[torch.Tensor]:
    """One client's batches of one epoch (positions in its ``n`` examples) in the
    engine's order; ``key``: the client's key (one element)."""
    order = batch_order(key.reshape(1), epoch, torch.tensor([n]), n)[0]
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(math.ceil(n / batch_size))]


def _optimizer(params: Iterable[torch.nn.Parameter], o: OptimizerConfig) -> torch.optim.Optimizer:
    """torch.optim's Adam or SGD with the settings of ``o``."""
    if o.name == "adam":
        return torch.optim.Adam(
            params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def plain_train(
    start: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
    key: torch.Tensor,
    epochs: int,
    batch_size: int,
    o: OptimizerConfig,
    trainable: set[str] | None = None,
    anchor: Tensors | None = None,
    lam: float = 0.0,
    val: tuple[torch.Tensor, torch.Tensor, int, int] | None = None,
) -> Tensors:
    """Minimise the mean NLL (+ lam/2 ||theta - anchor||^2 with an ``anchor``) of
    ``NET`` from ``start`` over the ``trainable`` parameters (all by default; the others
    frozen) with a fresh optimiser, in the engine's batch order; ``val`` (x, y,
    check_every, patience) early-stops on the validation NLL and returns the best
    parameters."""
    module = load(NET, start)
    if trainable is not None:
        for name, p in module.named_parameters():
            p.requires_grad_(name in trainable)
    opt = _optimizer(
        [p for n, p in module.named_parameters() if trainable is None or n in trainable], o
    )
    best, best_loss, wait = copy.deepcopy(module.state_dict()), math.inf, 0
    if val is not None:
        best_loss = _module_nll(module, val[0], val[1])
    for epoch in range(epochs):
        for idx in batches(key, epoch, len(y), batch_size):
            opt.zero_grad()
            loss = F.nll_loss(module(x[idx]), y[idx])
            if anchor is not None:
                loss = loss + lam / 2 * sum(
                    ((p - anchor[name]) ** 2).sum() for name, p in module.named_parameters()
                )
            loss.backward()
            opt.step()
        if val is not None and ((epoch + 1) % val[2] == 0 or epoch + 1 == epochs):
            loss_now = _module_nll(module, val[0], val[1])
            if loss_now < best_loss:
                best, best_loss, wait = copy.deepcopy(module.state_dict()), loss_now, 0
            else:
                wait += 1
                if wait >= val[3]:
                    break
    chosen = best if val is not None else module.state_dict()
    return {n: p.detach().clone() for n, p in chosen.items()}


def weighted_mean(models: list[Tensors], sizes: Sequence[int]) -> Tensors:
    """The mean of the clients' ``models`` weighted by their ``sizes``."""
    return {
        n: torch.stack([s * m[n] for s, m in zip(sizes, models, strict=True)]).sum(0) / sum(sizes)
        for n in models[0]
    }


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """``a`` equals ``b`` to 1e-9 (float64 rounding apart)."""
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


# Flower parity: the app on an in-process grid against the simulator.


@dataclass(frozen=True)
class FlowerParity:
    """One config's results on the Flower app and in the simulator."""

    cfg: ExperimentConfig
    flower: dict[str, Any]
    embedded: dict[str, Any]

    @property
    def opted_out(self) -> set[int]:
        """The clients the partition opted out."""
        return {c for c, o in enumerate(self.embedded["partition"]["opt_out"]) if o}

    def assert_opt_out_nodes_send_nothing(self) -> None:
        """The opt-out clients' nodes answered, never with an array."""
        rows = [r for r in self.flower["flower"]["audit"] if r["client"] in self.opted_out]
        assert rows and all(r["arrays"] == 0 and r["array_bytes"] == 0 for r in rows)


def flower_parity(settings: dict[str, Any], restore_threads: bool = False) -> FlowerParity:
    """The config ``settings`` run on the Flower app (a FakeGrid, one node per client,
    short timeouts), then in the simulator; skips without flwr. ``restore_threads``:
    set torch's thread count back after the app (which sets it to 1)."""
    pytest.importorskip("flwr")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flower"))
    from fakegrid import FakeGrid

    from fedmoe.flower.config import FlowerOptions, run_config
    from fedmoe.flower.server_app import run_federation

    options = FlowerOptions(
        round_timeout=1.0, personalise_timeout=1.0, join_timeout=1.0, poll_interval=0.01
    )
    cfg = config.from_dict(settings)
    grid = FakeGrid(run_config(cfg, options))
    threads = torch.get_num_threads()
    try:
        for i in range(cfg.partition.clients):
            grid.add_node({"partition-id": i, "num-partitions": cfg.partition.clients})
        flower = run_federation(grid, cfg, options)
    finally:
        grid.close()
        if restore_threads:
            torch.set_num_threads(threads)
    return FlowerParity(cfg, flower, run_experiment(cfg))
