"""Ditto: its hooks train what a plain loop written from the paper's Algorithm 1 trains
(global and personal models), clients whose personal model never trained get one from
the final global model, lambda matters while the global model stays FedAvg's, the
personal models survive rounds and a resume, the Flower app gives the simulator's
results with opt-out nodes sending nothing, bad options fail in one line."""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe import rng
from fedmoe.engine import Classifier, ClientData, OptimizerConfig, batch_order, evaluate
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.federate import federate
from fedmoe.experiment.prepare import run_spec
from fedmoe.experiment.run import run_experiment
from fedmoe.federation import Clients, FederationServer, State
from fedmoe.methods import RunSpec
from fedmoe.methods.base import Federated, federated_output, global_model
from fedmoe.methods.ditto import PERSONAL, ROUNDS, Ditto, DittoOptions, personal_config
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.params import unprefixed
from fedmoe.methods.personal import personal_model
from fedmoe.models import Params, build_network

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
SHAPE = (1, 8, 8)
NET = build_network("mlp", SHAPE, 10, dropout=0.0)
SIZES = [12, 17, 9, 15]
HOOKS = Ditto.federated
assert HOOKS is not None


def _problem(
    opt_out: list[bool] | None = None, val_is_train: bool = False
) -> tuple[Clients, torch.Tensor, torch.Tensor]:
    """Four clients of unequal sizes on random (1, 8, 8) inputs (training rows first,
    then the same number of validation rows per client, or the training rows again with
    ``val_is_train``: a validation loss that keeps improving); returns the clients and
    the raw examples."""
    g = torch.Generator().manual_seed(0)
    total = 2 * sum(SIZES)
    x = torch.randn(total, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (total,), generator=g)
    starts = np.cumsum([0, *SIZES])
    train = [np.arange(starts[i], starts[i + 1]) for i in range(len(SIZES))]
    val = train if val_is_train else [t + sum(SIZES) for t in train]
    clients = Clients(
        torch.arange(len(SIZES)),
        ClientData.from_indices(x, y, train),
        ClientData.from_indices(x, y, val),
        torch.tensor(opt_out or [False] * len(SIZES)),
    )
    return clients, x, y


def _rows(k: int) -> np.ndarray:
    """Client k's training rows."""
    start = int(np.sum(SIZES[:k]))
    return np.arange(start, start + SIZES[k])


def _run(**federated: Any) -> RunSpec:
    settings = {
        "rounds": 3,
        "clients_per_round": len(SIZES),
        "local_epochs": 2,
        "batch_size": 5,
        "optimizer": "sgd",
        "lr": 5e-2,
        "momentum": 0.5,
        "early_stopping": False,
    }
    personalise = {
        "epochs": 6,
        "batch_size": 4,
        "optimizer": "adam",
        "lr": 1e-2,
        "stopping": {"check_every": 1, "patience": 2, "min_delta": 0.0},
    }
    data = {"dtype": "float64", "federated": settings | federated, "personalise": personalise}
    gate = build_network("mlp", SHAPE, 10, gate=True, dropout=0.0)
    return run_spec(config.from_dict(data), NET, gate, SHAPE, 10, torch.device("cpu"))


def _rounds(
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


def _optimizer(module: torch.nn.Module, o: OptimizerConfig) -> torch.optim.Optimizer:
    if o.name == "adam":
        return torch.optim.Adam(
            module.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
    return torch.optim.SGD(
        module.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )


def _val_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.nll_loss(module(x), y))


def _solve(
    start: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor] | None,
    lam: float,
    x: torch.Tensor,
    y: torch.Tensor,
    key: torch.Tensor,
    epochs: int,
    batch_size: int,
    o: OptimizerConfig,
    val: tuple[torch.Tensor, torch.Tensor, int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Minimise mean NLL (+ lam/2 ||theta - anchor||^2 if ``anchor``) from ``start``
    with a fresh optimiser, in the engine's batch order; ``val`` (x, y, check_every,
    patience) early-stops on the validation NLL and returns the best parameters."""
    module = NET.module().double()
    module.load_state_dict(start)
    opt = _optimizer(module, o)
    n = len(y)
    best, best_loss, wait = copy.deepcopy(module.state_dict()), math.inf, 0
    if val is not None:
        best_loss = _val_loss(module, val[0], val[1])
    for epoch in range(epochs):
        order = batch_order(key.reshape(1), epoch, torch.tensor([n]), n)[0]
        for s in range(math.ceil(n / batch_size)):
            idx = order[s * batch_size : (s + 1) * batch_size]
            opt.zero_grad()
            loss = F.nll_loss(module(x[idx]), y[idx])
            if anchor is not None:
                loss = loss + lam / 2 * sum(
                    ((p - anchor[name]) ** 2).sum() for name, p in module.named_parameters()
                )
            loss.backward()
            opt.step()
        if val is not None and ((epoch + 1) % val[2] == 0 or epoch + 1 == epochs):
            loss_now = _val_loss(module, val[0], val[1])
            if loss_now < best_loss:
                best, best_loss, wait = copy.deepcopy(module.state_dict()), loss_now, 0
            else:
                wait += 1
                if wait >= val[3]:
                    break
    if val is not None:
        return best
    return {n: p.detach().clone() for n, p in module.state_dict().items()}


def _paper_ditto(
    run: RunSpec,
    init: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    personal_epochs: int,
) -> list[tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]]:
    """Ditto's Algorithm 1 with every client sampled: client k trains w^t on F_k for the
    local epochs (FedAvg's solver) and its own v_k on F_k(v) + lam/2 ||v - w^t||^2 for
    ``personal_epochs``; w^{t+1} is the sample-weighted mean of the w_k. v_k starts at
    the initial global model."""
    local = run.federation.local
    ids = torch.arange(len(SIZES))
    w = {n: t.clone() for n, t in init.items()}
    v = [copy.deepcopy(w) for _ in SIZES]
    history = []
    for r in range(run.federation.rounds):
        w_keys = rng.client_keys(run.seed, ids, f"fedavg/round/{r}")
        v_keys = rng.client_keys(run.seed, ids, f"ditto/personal/round/{r}")
        trained = []
        for k in range(len(SIZES)):
            xk, yk = x[_rows(k)], y[_rows(k)]
            o, b = local.optimizer, local.batch_size
            trained.append(_solve(w, None, 0.0, xk, yk, w_keys[k], local.epochs, b, o))
            v[k] = _solve(v[k], w, lam, xk, yk, v_keys[k], personal_epochs, b, o)
        w = {
            n: torch.stack([s * t[n] for s, t in zip(SIZES, trained, strict=True)]).sum(0)
            / sum(SIZES)
            for n in w
        }
        history.append((w, copy.deepcopy(v)))
    return history


def test_ditto_equals_the_papers_algorithm_written_as_a_plain_loop() -> None:
    clients, x, y = _problem()
    run = _run()
    options = DittoOptions(lam=0.5, personal_epochs=3)
    init = {n: p[0] for n, p in HOOKS.init(run, options, clients.device).items()}
    expected = _paper_ditto(run, init, x, y, options.lam, options.personal_epochs)
    got = _rounds(run, HOOKS, options, clients)
    for r, ((server, state), (w, v)) in enumerate(zip(got, expected, strict=True)):
        personal = unprefixed(state, PERSONAL)
        assert state[ROUNDS].tolist() == [r + 1] * len(SIZES)
        for name in w:
            torch.testing.assert_close(server[name][0], w[name], rtol=0, atol=1e-9)
            for k in range(len(SIZES)):
                torch.testing.assert_close(personal[name][k], v[k][name], rtol=0, atol=1e-9)
    # personal_epochs = 0 means the federated local epochs.
    assert personal_config(run, DittoOptions()).epochs == run.federation.local.epochs == 2


def test_clients_whose_personal_model_never_trained_get_one_from_the_final_global_model() -> None:
    # Client 1 opts out; one round of 2 of the 3 opt-in clients leaves another untrained.
    clients, x, y = _problem([False, True, False, False], val_is_train=True)
    run = _run(rounds=1, clients_per_round=2)
    options = DittoOptions(lam=0.3)
    server, best = federate(run, HOOKS, options, clients, "rounds")
    rounds = best[ROUNDS].tolist()
    assert rounds[1] == 0 and sorted(rounds) == [0, 0, 1, 1]
    untrained = [k for k, r in enumerate(rounds) if r == 0]
    # Validation scores v where it trained, else the global model.
    personal = unprefixed(best, PERSONAL)
    opt_in = torch.tensor([0, 2, 3])
    scored = {
        n: torch.stack([personal[n][k] if rounds[k] else server.params[n][0] for k in [0, 2, 3]])
        for n in personal
    }
    checked = {k: v[opt_in] for k, v in best.items()}  # the opt-in clients' rows
    ev = HOOKS.validate(run, options, server.params, clients.select(opt_in), checked)
    expected_ev = evaluate(Classifier(NET), scored, clients.val.select(opt_in))
    torch.testing.assert_close(ev.loss, expected_ev.loss, rtol=0, atol=0)

    fed = federated_output(server.best_params, server.summary(), best)
    out = Ditto().personalise(run, options, clients, {}, fed)
    assert out.epochs is not None and out.epochs.tolist().count(0) == 2
    assert all(out.epochs[k] > 0 for k in untrained)
    for name, p in global_model(out).items():
        assert torch.equal(p, server.best_params[name])
    w = {n: p[0] for n, p in server.best_params.items()}
    keys = rng.client_keys(run.seed, torch.arange(4), "ditto/personalise")
    settings = run.personalise
    assert settings.early_stopping is not None
    models = personal_model(out)
    for k in range(4):
        if k not in untrained:  # v from federation, untouched
            for name in w:
                assert torch.equal(models[name][k], personal[name][k])
            continue
        val = (x[_rows(k)], y[_rows(k)], 1, settings.early_stopping.patience)
        xk, yk = x[_rows(k)], y[_rows(k)]
        v = _solve(
            w,
            w,
            options.lam,
            xk,
            yk,
            keys[k],
            settings.epochs,
            settings.batch_size,
            settings.optimizer,
            val,
        )
        for name, tensor in v.items():
            torch.testing.assert_close(models[name][k], tensor, rtol=0, atol=1e-9)
        assert not torch.allclose(models["fc1.weight"][k], w["fc1.weight"], rtol=0, atol=1e-6)
    # Evaluation predicts with each client's v; details say who trained when.
    ev_out = Ditto().evaluate(run, options, out, {}, clients.val)
    torch.testing.assert_close(
        ev_out.accuracy, evaluate(Classifier(NET), models, clients.val).accuracy
    )
    details = Ditto().details(options, {ROUNDS: [float(r) for r in rounds]})
    assert details["personalised_after_federation"] == untrained


def test_lambda_moves_the_personal_models_while_the_global_model_stays_fedavgs() -> None:
    clients, *_ = _problem()
    run = _run(rounds=2)
    fedavg = FedAvg.federated
    assert fedavg is not None
    plain = _rounds(run, fedavg, None, clients)[-1][0]
    free_server, free = _rounds(run, HOOKS, DittoOptions(lam=0.0), clients)[-1]
    held_server, held = _rounds(run, HOOKS, DittoOptions(lam=2.0), clients)[-1]
    for name in plain:
        assert torch.equal(free_server[name], plain[name])
        assert torch.equal(held_server[name], plain[name])
    v_free, v_held = unprefixed(free, PERSONAL), unprefixed(held, PERSONAL)
    assert any(not torch.allclose(v_held[n], v_free[n], rtol=0, atol=1e-6) for n in v_free)

    def spread(v: Params) -> float:  # how far the personal models are from the global one
        return float(sum(((v[n] - plain[n]) ** 2).sum() for n in v))

    assert spread(v_held) < spread(v_free)


def test_personal_models_carry_over_rounds_and_a_resume_gives_the_same_results() -> None:
    clients, *_ = _problem([False, True, False, False])
    run = _run(rounds=3, clients_per_round=2)
    options = DittoOptions(lam=0.2)
    # Round 2's personal models depend on round 1's: with v reset before round 2 they differ.
    server0 = HOOKS.init(run, options, clients.device)
    fresh = HOOKS.init_client_state(run, options, clients)
    one = HOOKS.client_update(run, options, server0, clients, 0, fresh)
    server1 = HOOKS.aggregate(server0, one, clients.train.n)
    carried = HOOKS.client_update(run, options, server1, clients, 1, one.state)
    reset = HOOKS.client_update(run, options, server1, clients, 1, fresh)
    assert carried.state[ROUNDS].tolist() == [2] * 4
    for name in server0:
        assert torch.equal(carried.params[name], reset.params[name])  # w ignores v
    name = next(iter(server0))
    key = f"{PERSONAL}.{name}"
    assert not torch.allclose(carried.state[key], reset.state[key], rtol=0, atol=1e-6)

    # Kill after round 1 and resume from what was saved: the same server, state, output.
    whole, whole_best = federate(run, HOOKS, options, clients, "rounds")
    saved: list[dict[str, Any]] = []

    def keep(server: FederationServer, progress: dict[str, Any]) -> None:
        if server.next_round == 1:
            saved.append(copy.deepcopy(progress))

    federate(run, HOOKS, options, clients, "rounds", None, keep)
    resumed, resumed_best = federate(run, HOOKS, options, clients, "rounds", saved[0])
    assert resumed.summary() == whole.summary()
    assert set(resumed_best) == set(whole_best)
    for k, v in whole_best.items():
        assert torch.equal(resumed_best[k], v), k
    outs = [
        Ditto().personalise(run, options, clients, {}, federated_output(s.best_params, {}, b))
        for s, b in ((whole, whole_best), (resumed, resumed_best))
    ]
    for k, v in outs[0].state.items():
        assert torch.equal(outs[1].state[k], v), k


SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["ditto"],
    "partition": {"clients": 5, "train": 20, "val": 20, "test": 20, "opt_out": 0.4},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 2, "lr": 1e-2},
    "personalise": {"epochs": 3, "lr": 1e-3, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"ditto": {"lam": 0.5, "personal_epochs": 1}},
}


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_ditto_on_the_flower_app_equals_the_simulator_and_opt_out_nodes_send_nothing() -> None:
    pytest.importorskip("flwr")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flower"))
    from fakegrid import FakeGrid

    from fedmoe.flower.config import FlowerOptions, run_config
    from fedmoe.flower.server_app import run_federation

    options = FlowerOptions(
        round_timeout=1.0, personalise_timeout=1.0, join_timeout=1.0, poll_interval=0.01
    )
    cfg = config.from_dict(SMALL)
    grid = FakeGrid(run_config(cfg, options))
    threads = torch.get_num_threads()
    try:
        for i in range(cfg.partition.clients):
            grid.add_node({"partition-id": i, "num-partitions": cfg.partition.clients})
        flower = run_federation(grid, cfg, options)
    finally:
        grid.close()
        torch.set_num_threads(threads)
    embedded = run_experiment(cfg)
    assert flower["methods"]["ditto"] == embedded["methods"]["ditto"]
    entry = embedded["methods"]["ditto"]
    opted_out = {c for c, o in enumerate(embedded["partition"]["opt_out"]) if o}
    assert len(opted_out) == 2
    # Opt-out clients never trained in federation: their v was trained afterwards.
    after = set(entry["details"]["personalised_after_federation"])
    assert opted_out <= after
    assert all((entry["epochs"][c] > 0) == (c in after) for c in range(5))
    audit = [row for row in flower["flower"]["audit"] if row["client"] in opted_out]
    assert audit and all(row["arrays"] == 0 and row["array_bytes"] == 0 for row in audit)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lam": -1.0}, "method.ditto.lam must be a finite number >= 0, got -1.0"),
        ({"lam": math.inf}, "got inf"),
        ({"personal_epochs": -2}, "method.ditto.personal_epochs must be >= 0"),
        ({"lambda": 0.1}, "ditto"),
    ],
)
def test_bad_options_are_one_line_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        config.from_dict({"methods": ["ditto"], "method": {"ditto": options}})
    assert "\n" not in str(err.value)
    assert replace(DittoOptions(), lam=0.5).lam == 0.5 and DittoOptions().lam == 0.1
