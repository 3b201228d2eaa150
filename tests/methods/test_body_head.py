"""FedPer, FedRep, LG-FedAvg and FedBABU (the body/head methods): their hooks train what
plain loops written from the papers train; what each keeps or freezes matters (the kept
part sets FedPer and LG-FedAvg apart from FedAvg, FedRep's head epochs, FedBABU's frozen
head); clients whose kept part never trained get one after federation; the clients'
state survives rounds and a kill-and-resume; the Flower app gives the simulator's
results with opt-out nodes sending nothing; bad options fail in one line."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from pfl_toys import (
    NET,
    Tensors,
    assert_one_line_config_error,
    assert_same_state,
    blocks,
    close,
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
from fedmoe.federation import Clients, FederationServer
from fedmoe.methods import RunSpec, registry
from fedmoe.methods.base import Federated, federated_output
from fedmoe.methods.fedbabu import FedBabu, FedBabuOptions, finetune_config
from fedmoe.methods.fedrep import FedRepOptions
from fedmoe.methods.params import unprefixed
from fedmoe.methods.personal import personal_model
from fedmoe.methods.split import KEPT, ROUNDS, KeptPartMethod, KeptPartRounds, initial_model
from fedmoe.models import head_names

HEAD_NAMES = set(head_names(NET))
ALL_NAMES = {s.name for s in NET.param_specs()}
BODY_NAMES = ALL_NAMES - HEAD_NAMES
SIZES = [12, 17, 9, 15]
#: The methods that keep one part on each client, and the part the server federates.
KEPT_PART = {"fedper": BODY_NAMES, "fedrep": BODY_NAMES, "lg-fedavg": HEAD_NAMES}
OPTIONS: dict[str, Any] = {
    "fedper": None,
    "lg-fedavg": None,
    "fedrep": FedRepOptions(head_epochs=3, body_epochs=2),
    "fedbabu": FedBabuOptions(),
}


def _hooks(name: str) -> Federated:
    hooks = registry.get(name).federated
    assert hooks is not None
    return hooks


def _problem(opt_out: list[bool] | None = None) -> tuple[Clients, torch.Tensor, torch.Tensor]:
    """Four clients of unequal sizes on random (1, 8, 8) inputs labelled by a random
    linear teacher of two pixels (training rows first, then as many validation rows per client);
    returns the clients and the raw examples."""
    x, y = toy_examples(2 * sum(SIZES), teacher=(2, 10))  # learnable: validation can improve
    return toy_clients(x, y, blocks(SIZES), blocks(SIZES, sum(SIZES)), opt_out), x, y


def _rows(k: int, split: str = "train") -> np.ndarray:
    return blocks(SIZES, sum(SIZES) if split == "val" else 0)[k]


def _run(**federated: Any) -> RunSpec:
    return sgd_run(2, len(SIZES), 1e-3, federated)


# A plain PyTorch reading of the papers: one nn.Module per client, torch.optim, the
# engine's batch order (the same per-client keys), explicit loops.


def _only(params: Tensors, names: set[str]) -> Tensors:
    return {n: p for n, p in params.items() if n in names}


def _keys(run: RunSpec, phase: str) -> torch.Tensor:
    return rng.client_keys(run.seed, torch.arange(len(SIZES)), phase)


def _paper(
    name: str, run: RunSpec, init: Tensors, x: torch.Tensor, y: torch.Tensor
) -> list[tuple[Tensors, list[Tensors]]]:
    """The paper's algorithm with every client sampled: after each round, the server's
    part and each client's kept part (FedBABU: none)."""
    local = run.federation.local
    b, o = local.batch_size, local.optimizer
    if name == "lg-fedavg":  # local bodies, a global head
        shared, kept_names = _only(init, HEAD_NAMES), BODY_NAMES
    else:  # a global body; FedPer and FedRep keep their heads, FedBABU's is frozen
        shared, kept_names = _only(init, BODY_NAMES), HEAD_NAMES
    kept = [_only(init, kept_names) for _ in SIZES]
    history = []
    for r in range(run.federation.rounds):
        sent = []
        for k in range(len(SIZES)):
            xk, yk = x[_rows(k)], y[_rows(k)]
            if name in ("fedper", "lg-fedavg"):  # train everything jointly
                keys = _keys(run, f"fedavg/round/{r}")
                model = plain_train(shared | kept[k], xk, yk, keys[k], local.epochs, b, o)
            elif name == "fedrep":  # head epochs (body fixed), then body epochs (head fixed)
                opts = OPTIONS[name]
                head_keys = _keys(run, f"fedrep/head/round/{r}")
                body_keys = _keys(run, f"fedrep/body/round/{r}")
                start = shared | kept[k]
                h = plain_train(start, xk, yk, head_keys[k], opts.head_epochs, b, o, HEAD_NAMES)
                model = plain_train(h, xk, yk, body_keys[k], opts.body_epochs, b, o, BODY_NAMES)
            else:  # FedBABU: the body only, the head frozen at its initialisation
                keys = _keys(run, f"fedbabu/round/{r}")
                start = shared | kept[k]
                model = plain_train(start, xk, yk, keys[k], local.epochs, b, o, BODY_NAMES)
            sent.append(_only(model, set(shared)))
            kept[k] = _only(model, kept_names)
        shared = weighted_mean(sent, SIZES)
        history.append((shared, copy.deepcopy(kept)))
    return history


@pytest.mark.parametrize("name", ["fedper", "fedrep", "lg-fedavg", "fedbabu"])
def test_the_hooks_equal_the_papers_algorithm_written_as_a_plain_loop(name: str) -> None:
    clients, x, y = _problem()
    run = _run()
    hooks, options = _hooks(name), OPTIONS[name]
    init = {n: p[0] for n, p in initial_model(run, clients.device).items()}
    expected = _paper(name, run, init, x, y)
    got = hook_rounds(run, hooks, options, clients)
    for r, ((server, state), (shared, kept)) in enumerate(zip(got, expected, strict=True)):
        assert set(server) == set(shared)  # the server holds exactly the shared part
        for n, p in shared.items():
            close(server[n][0], p)
        if name == "fedbabu":
            assert state == {}
            continue
        assert state[ROUNDS].tolist() == [r + 1] * len(SIZES)
        mine = unprefixed(state, KEPT)
        assert set(mine) == set(kept[0])
        for k in range(len(SIZES)):
            for n, p in kept[k].items():
                close(mine[n][k], p)
    # FedBABU: every client fine-tunes the whole model after federation.
    if name == "fedbabu":
        body = {n: p.unsqueeze(0) for n, p in expected[-1][0].items()}
        out = FedBabu().personalise(run, options, clients, {}, federated_output(body, {}, {}))
        p = run.personalise
        assert p.early_stopping is not None
        keys = _keys(run, "fedbabu/finetune")
        models = personal_model(out)
        for k in range(len(SIZES)):
            val = (x[_rows(k, "val")], y[_rows(k, "val")], 1, p.early_stopping.patience)
            start = expected[-1][0] | _only(init, HEAD_NAMES)
            xk, yk = x[_rows(k)], y[_rows(k)]
            tuned = plain_train(
                start, xk, yk, keys[k], p.epochs, p.batch_size, p.optimizer, val=val
            )
            for n, t in tuned.items():
                close(models[n][k], t)


@pytest.mark.parametrize("name", ["fedper", "lg-fedavg"])
def test_the_kept_part_is_what_sets_fedper_and_lg_fedavg_apart_from_fedavg(name: str) -> None:
    clients, *_ = _problem()
    run = _run()
    fedavg = hook_rounds(run, _hooks("fedavg"), None, clients)
    mine = hook_rounds(run, _hooks(name), None, clients)
    # Round 1 trains what FedAvg trains (one initial model, FedAvg's streams) ...
    for n, p in mine[0][0].items():
        close(p, fedavg[0][0][n])
    kept = unprefixed(mine[0][1], KEPT)
    assert set(kept) == ALL_NAMES - KEPT_PART[name]
    # ... but each client keeps its own part, so round 2 starts elsewhere.
    assert any(not torch.allclose(kept[n][0], kept[n][1]) for n in kept)
    assert any(not torch.allclose(p, fedavg[1][0][n], atol=1e-6) for n, p in mine[1][0].items())


def test_fedrep_head_epochs_matter_and_zero_keeps_the_initial_heads() -> None:
    clients, *_ = _problem()
    run = _run()
    hooks = _hooks("fedrep")
    init = hooks.init_client_state(run, None, clients)
    with_heads = hook_rounds(run, hooks, FedRepOptions(head_epochs=2, body_epochs=1), clients)[-1]
    no_heads = hook_rounds(run, hooks, FedRepOptions(head_epochs=0, body_epochs=1), clients)[-1]
    for n, p in unprefixed(no_heads[1], KEPT).items():
        assert torch.equal(p, unprefixed(init, KEPT)[n])
    assert any(not torch.allclose(p, no_heads[0][n], atol=1e-6) for n, p in with_heads[0].items())
    assert FedRepOptions().head_epochs == 10 and FedRepOptions().body_epochs == 1


def test_fedbabu_freezes_the_head_in_federation_and_fine_tunes_it_after() -> None:
    clients, *_ = _problem([False, True, False, False])
    run = _run()
    hooks, options = _hooks("fedbabu"), FedBabuOptions()
    fedavg = hook_rounds(run, _hooks("fedavg"), None, clients)[0][0]
    server = hook_rounds(run, hooks, options, clients)[0][0]
    assert set(server) == BODY_NAMES
    assert any(not torch.allclose(p, fedavg[n], atol=1e-6) for n, p in server.items())
    # Validation scores the global body under the initial head, for every client alike.
    head = _only(initial_model(run, clients.device), HEAD_NAMES)
    ev = hooks.validate(run, options, server, clients, {})
    expected = evaluate(Classifier(NET), server | head, clients.val)
    torch.testing.assert_close(ev.loss, expected.loss, rtol=0, atol=0)
    # Every client, the opt-out one included, fine-tunes body and head.
    out = FedBabu().personalise(run, options, clients, {}, federated_output(server, {}, {}))
    assert out.epochs is not None and bool((out.epochs > 0).all())
    models = personal_model(out)
    moved = [  # (body moved, head moved) per client; early stopping may keep the start
        tuple(
            any(not torch.equal(models[n][k], start[n][0]) for n in names)
            for start, names in ((server, BODY_NAMES), (head, HEAD_NAMES))
        )
        for k in range(len(SIZES))
    ]
    assert (True, True) in moved and set(moved) <= {(True, True), (False, False)}
    # Its own learning rate and epochs where set, else [personalise]'s.
    assert finetune_config(run, options) == run.personalise
    tuned = finetune_config(run, FedBabuOptions(finetune_lr=0.5, finetune_epochs=5))
    assert tuned.optimizer.lr == 0.5 and tuned.epochs == 5
    assert tuned.early_stopping == run.personalise.early_stopping


@pytest.mark.parametrize("name", ["fedper", "lg-fedavg"])
def test_clients_whose_kept_part_never_trained_train_it_after_federation(name: str) -> None:
    # Client 1 opts out; one round of 2 of the 3 opt-in clients leaves another untrained.
    clients, x, y = _problem([False, True, False, False])
    run = _run(rounds=1, clients_per_round=2)
    hooks = _hooks(name)
    server, best = federate(run, hooks, None, clients, "rounds")
    rounds = best[ROUNDS].tolist()
    assert rounds[1] == 0 and sorted(rounds) == [0, 0, 1, 1]
    untrained = [k for k, r in enumerate(rounds) if r == 0]
    kept = unprefixed(best, KEPT)
    # Validation scores the server's part with each client's kept part, as it is.
    opt_in = torch.tensor([0, 2, 3])
    scored = {n: server.params[n].expand(3, *p.shape[1:]) for n, p in server.params.items()}
    scored |= {n: p[opt_in] for n, p in kept.items()}
    checked = {k: v[opt_in] for k, v in best.items()}
    ev = hooks.validate(run, None, server.params, clients.select(opt_in), checked)
    expected_ev = evaluate(Classifier(NET), scored, clients.val.select(opt_in))
    torch.testing.assert_close(ev.loss, expected_ev.loss, rtol=0, atol=0)

    method = registry.get(name)
    assert isinstance(method, KeptPartMethod)
    out = method.personalise(
        run, None, clients, {}, federated_output(server.best_params, server.summary(), best)
    )
    assert out.epochs is not None and out.epochs.tolist().count(0) == 2
    assert out.info["federation"] == server.summary()
    shared = {n: p[0] for n, p in server.best_params.items()}
    keys = _keys(run, f"{name}/personalise")
    p = run.personalise
    assert p.early_stopping is not None
    models = personal_model(out)
    moved = []  # whether a client's kept part moved (early stopping may keep the start)
    for k in range(4):
        for n, t in shared.items():  # everyone predicts with the server's part
            assert torch.equal(models[n][k], t)
        if k not in untrained:  # the kept part from federation, untouched
            for n, t in kept.items():
                assert torch.equal(models[n][k], t[k])
            continue
        val = (x[_rows(k, "val")], y[_rows(k, "val")], 1, p.early_stopping.patience)
        start = shared | {n: t[k] for n, t in kept.items()}
        xk, yk = x[_rows(k)], y[_rows(k)]
        o = p.optimizer
        trained = plain_train(start, xk, yk, keys[k], p.epochs, p.batch_size, o, set(kept), val=val)
        moved.append(any(not torch.equal(trained[n], start[n]) for n in kept))
        for n, t in trained.items():
            close(models[n][k], t)
    assert any(moved)
    ev_out = method.evaluate(run, None, out, {}, clients.val)
    torch.testing.assert_close(
        ev_out.accuracy, evaluate(Classifier(NET), models, clients.val).accuracy
    )
    details = method.details(None, {ROUNDS: [float(r) for r in rounds]})
    assert details["personalised_after_federation"] == untrained


class _Killed(Exception):
    pass


@pytest.mark.parametrize("name", ["fedper", "fedrep", "lg-fedavg", "fedbabu"])
def test_state_carries_over_rounds_and_a_kill_and_resume_gives_the_same_results(
    name: str,
) -> None:
    clients, *_ = _problem([False, True, False, False])
    run = _run(rounds=3, clients_per_round=2)
    hooks, options = _hooks(name), OPTIONS[name]
    if isinstance(hooks, KeptPartRounds):
        # Round 2 depends on round 1's kept parts: with them reset, it trains otherwise.
        server0 = hooks.init(run, options, clients.device)
        fresh = hooks.init_client_state(run, options, clients)
        one = hooks.client_update(run, options, server0, clients, 0, fresh)
        server1 = hooks.aggregate(server0, one, clients.train.n)
        carried = hooks.client_update(run, options, server1, clients, 1, one.state)
        reset = hooks.client_update(run, options, server1, clients, 1, fresh)
        assert carried.state[ROUNDS].tolist() == [2] * 4
        mine, theirs = unprefixed(carried.state, KEPT), unprefixed(reset.state, KEPT)
        assert any(not torch.allclose(p, theirs[n], atol=1e-6) for n, p in mine.items())
        assert any(
            not torch.allclose(p, reset.params[n], atol=1e-6) for n, p in carried.params.items()
        )
    # Killed after round 1 and resumed from what it saved: the same server, state, output.
    whole, whole_best = federate(run, hooks, options, clients, "rounds")
    saved: list[dict[str, Any]] = []

    def kill(server: FederationServer, progress: dict[str, Any]) -> None:
        if server.next_round == 1:
            saved.append(copy.deepcopy(progress))
            raise _Killed

    with pytest.raises(_Killed):
        federate(run, hooks, options, clients, "rounds", None, kill)
    resumed, resumed_best = federate(run, hooks, options, clients, "rounds", saved[0])
    assert resumed.summary() == whole.summary()
    assert set(resumed_best) == set(whole_best)
    assert_same_state(whole_best, resumed_best)
    method = registry.get(name)
    outs = [
        method.personalise(run, options, clients, {}, federated_output(s.best_params, {}, b))
        for s, b in ((whole, whole_best), (resumed, resumed_best))
    ]
    assert_same_state(outs[0].state, outs[1].state)


SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["fedper", "fedrep", "lg-fedavg", "fedbabu", "fedavg", "moe-plus-fedbabu"],
    "partition": {"clients": 5, "train": 20, "val": 20, "test": 20, "opt_out": 0.4},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-2},
    "personalise": {"epochs": 2, "lr": 1e-3, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"fedrep": {"head_epochs": 2, "body_epochs": 1}},
}


@needs_fashion
def test_the_flower_app_equals_the_simulator_and_opt_out_nodes_send_nothing() -> None:
    parity = flower_parity(SMALL, restore_threads=True)
    cfg, flower, embedded = parity.cfg, parity.flower, parity.embedded
    opted_out = parity.opted_out
    assert len(opted_out) == 2
    for name in cfg.methods:
        assert flower["methods"][name] == embedded["methods"][name], name
        entry = embedded["methods"][name]
        if name in ("fedper", "fedrep", "lg-fedavg"):
            # opt-out clients trained their kept part after federation
            after = set(entry["details"]["personalised_after_federation"])
            assert opted_out <= after
            assert all((entry["epochs"][c] > 0) == (c in after) for c in range(5))
        elif name != "fedavg":  # every client fine-tuned (FedBABU) or fitted a gate
            assert all(e > 0 for e in entry["epochs"])
    assert "gate" in embedded["methods"]["moe-plus-fedbabu"]
    parity.assert_opt_out_nodes_send_nothing()
    audit = flower["flower"]["audit"]
    # Opt-in nodes send the federated part, and only it: 4 body tensors, 2 head tensors.
    sent = {
        name: {r["arrays"] for r in audit if r["phase"] == name and r["message_type"] == "train"}
        for name in ("fedper", "fedrep", "lg-fedavg", "fedbabu")
    }
    body, head = len(BODY_NAMES), len(HEAD_NAMES)
    assert sent == {"fedper": {body}, "fedrep": {body}, "lg-fedavg": {head}, "fedbabu": {body}}


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("fedrep", {"head_epochs": -1}, "method.fedrep.head_epochs must be >= 0, got -1"),
        ("fedrep", {"body_epochs": 0}, "method.fedrep.body_epochs must be at least 1"),
        ("fedrep", {"head_epochs": 1.5}, "method.fedrep.head_epochs must be of type int"),
        ("fedbabu", {"finetune_lr": -1.0}, "method.fedbabu.finetune_lr must be a finite"),
        ("fedbabu", {"finetune_lr": math.inf}, "got inf"),
        ("fedbabu", {"finetune_epochs": -3}, "method.fedbabu.finetune_epochs must be >= 1"),
        ("fedper", {"heads": 2}, "method 'fedper' has no options"),
        ("lg-fedavg", {"layers": 1}, "method 'lg-fedavg' has no options"),
    ],
)
def test_bad_options_are_one_line_config_errors(
    name: str, options: dict[str, Any], message: str
) -> None:
    assert_one_line_config_error({"methods": [name], "method": {name: options}}, message)
