"""Ditto: its hooks train what a plain loop written from the paper's Algorithm 1 trains
(global and personal models), clients whose personal model never trained get one from
the final global model, lambda matters while the global model stays FedAvg's, the
personal models survive rounds and a resume, the Flower app gives the simulator's
results with opt-out nodes sending nothing, bad options fail in one line."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from pfl_toys import (
    NET,
    assert_one_line_config_error,
    assert_same_state,
    blocks,
    federate_saving,
    flower_parity,
    hook_rounds,
    needs_fashion,
    plain_train,
    sgd_run,
    toy_clients,
    toy_examples,
    weighted_mean,
)

from fedmoe import rng
from fedmoe.engine import Classifier, evaluate
from fedmoe.experiment.federate import federate
from fedmoe.federation import Clients
from fedmoe.methods import RunSpec
from fedmoe.methods.base import federated_output, global_model
from fedmoe.methods.ditto import PERSONAL, ROUNDS, Ditto, DittoOptions, personal_config
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.params import unprefixed
from fedmoe.methods.personal import personal_model
from fedmoe.models import Params

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
    x, y = toy_examples(2 * sum(SIZES))
    train = blocks(SIZES)
    val = train if val_is_train else blocks(SIZES, sum(SIZES))
    return toy_clients(x, y, train, val, opt_out), x, y


def _rows(k: int) -> np.ndarray:
    """Client k's training rows."""
    return blocks(SIZES)[k]


def _run(**federated: Any) -> RunSpec:
    return sgd_run(3, len(SIZES), 1e-2, federated)


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
            trained.append(plain_train(w, xk, yk, w_keys[k], local.epochs, b, o))
            v[k] = plain_train(v[k], xk, yk, v_keys[k], personal_epochs, b, o, anchor=w, lam=lam)
        w = weighted_mean(trained, SIZES)
        history.append((w, copy.deepcopy(v)))
    return history


def test_ditto_equals_the_papers_algorithm_written_as_a_plain_loop() -> None:
    clients, x, y = _problem()
    run = _run()
    options = DittoOptions(lam=0.5, personal_epochs=3)
    init = {n: p[0] for n, p in HOOKS.init(run, options, clients.device).items()}
    expected = _paper_ditto(run, init, x, y, options.lam, options.personal_epochs)
    got = hook_rounds(run, HOOKS, options, clients)
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
        v = plain_train(
            w,
            xk,
            yk,
            keys[k],
            settings.epochs,
            settings.batch_size,
            settings.optimizer,
            anchor=w,
            lam=options.lam,
            val=val,
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
    plain = hook_rounds(run, fedavg, None, clients)[-1][0]
    free_server, free = hook_rounds(run, HOOKS, DittoOptions(lam=0.0), clients)[-1]
    held_server, held = hook_rounds(run, HOOKS, DittoOptions(lam=2.0), clients)[-1]
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
    saved = federate_saving(run, HOOKS, options, clients)[2]
    resumed, resumed_best = federate(run, HOOKS, options, clients, "rounds", saved[0])
    assert resumed.summary() == whole.summary()
    assert set(resumed_best) == set(whole_best)
    assert_same_state(whole_best, resumed_best)
    outs = [
        Ditto().personalise(run, options, clients, {}, federated_output(s.best_params, {}, b))
        for s, b in ((whole, whole_best), (resumed, resumed_best))
    ]
    assert_same_state(outs[0].state, outs[1].state)


SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["ditto"],
    "partition": {"clients": 5, "train": 20, "val": 20, "test": 20, "opt_out": 0.4},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 2, "lr": 1e-2},
    "personalise": {"epochs": 3, "lr": 1e-3, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"ditto": {"lam": 0.5, "personal_epochs": 1}},
}


@needs_fashion
def test_ditto_on_the_flower_app_equals_the_simulator_and_opt_out_nodes_send_nothing() -> None:
    parity = flower_parity(SMALL, restore_threads=True)
    assert parity.flower["methods"]["ditto"] == parity.embedded["methods"]["ditto"]
    entry = parity.embedded["methods"]["ditto"]
    opted_out = parity.opted_out
    assert len(opted_out) == 2
    # Opt-out clients never trained in federation: their v was trained afterwards.
    after = set(entry["details"]["personalised_after_federation"])
    assert opted_out <= after
    assert all((entry["epochs"][c] > 0) == (c in after) for c in range(5))
    parity.assert_opt_out_nodes_send_nothing()


@needs_fashion
def test_the_mixture_over_dittos_models_on_the_flower_app_equals_the_simulator() -> None:
    methods = ["fedavg", "ditto", "moe-ditto"]
    settings = {
        **SMALL,
        "methods": methods,
        "method": {**SMALL["method"], "moe-ditto": {"lr": 1e-2}},
    }
    parity = flower_parity(settings, restore_threads=True)
    for name in methods:
        assert parity.flower["methods"][name] == parity.embedded["methods"][name], name
    assert parity.embedded["methods"]["moe-ditto"]["gate"]["local_test"]["all"]


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
    assert_one_line_config_error({"methods": ["ditto"], "method": {"ditto": options}}, message)
    assert replace(DittoOptions(), lam=0.5).lam == 0.5 and DittoOptions().lam == 0.1
