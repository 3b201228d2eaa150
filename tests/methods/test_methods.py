"""Mixture maths, FedAvg's weighting and server policy, and the methods' contracts."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch

from fedmoe import rng
from fedmoe.engine import (
    Classifier,
    ClientData,
    EarlyStopping,
    Evaluation,
    OptimizerConfig,
    TrainConfig,
    evaluate,
)
from fedmoe.engine.objective import Dropout
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.federate import federate
from fedmoe.experiment.prepare import run_spec
from fedmoe.federation import (
    Clients,
    FederationConfig,
    FederationServer,
    State,
    Update,
    weighted_mean,
)
from fedmoe.methods import Method, Output, RunSpec, registry
from fedmoe.methods.base import Federated, federated_output, global_model
from fedmoe.methods.ditto import Ditto, DittoOptions
from fedmoe.methods.fedavg import FedAvg
from fedmoe.methods.finetune import FineTune
from fedmoe.methods.local import Local
from fedmoe.methods.mixture import Mixture, combine
from fedmoe.methods.moe import Moe, MoeOptions, mixture_of
from fedmoe.methods.moe_ditto import MoeDitto, MoeDittoOptions
from fedmoe.methods.moe_staged import MoeStaged, MoeStagedOptions
from fedmoe.methods.params import prefixed
from fedmoe.methods.personal import personal_model
from fedmoe.models import build_network


def test_probability_mixture_is_the_weighted_sum_of_probabilities() -> None:
    g = torch.Generator().manual_seed(0)
    log_ps = torch.randn(2, 3, 5, generator=g, dtype=torch.float64).log_softmax(-1)
    log_pg = torch.randn(2, 3, 5, generator=g, dtype=torch.float64).log_softmax(-1)
    a = torch.randn(2, 3, generator=g, dtype=torch.float64)
    gate = torch.sigmoid(a).unsqueeze(-1)
    expected = (gate * log_ps.exp() + (1 - gate) * log_pg.exp()).log()
    torch.testing.assert_close(combine(log_ps, log_pg, a, "probability"), expected)
    torch.testing.assert_close(
        combine(log_ps, log_pg, a, "probability").exp().sum(-1),
        torch.ones(2, 3, dtype=torch.float64),
    )
    # A saturated gate selects one expert, without overflow.
    big = torch.full_like(a, 800.0)
    torch.testing.assert_close(combine(log_ps, log_pg, big, "probability"), log_ps)
    torch.testing.assert_close(combine(log_ps, log_pg, -big, "probability"), log_pg)
    expected_ll = gate * log_ps + (1 - gate) * log_pg
    torch.testing.assert_close(combine(log_ps, log_pg, a, "log-linear"), expected_ll)


def test_aggregate_weights_by_sample_count() -> None:
    updates = {"w": torch.tensor([[1.0, 2.0], [3.0, 6.0]]), "b": torch.tensor([[0.0], [4.0]])}
    out = weighted_mean(updates, torch.tensor([1, 3]))
    torch.testing.assert_close(out["w"], torch.tensor([[2.5, 5.0]]))
    torch.testing.assert_close(out["b"], torch.tensor([[3.0]]))
    with pytest.raises(ValueError):
        weighted_mean(updates, torch.tensor([0, 0]))
    # FedAvg's aggregation hook is that weighted mean of the round's updates.
    hooks = FedAvg.federated
    assert hooks is not None
    server = {"w": torch.zeros(1, 2), "b": torch.zeros(1, 1)}
    new = hooks.aggregate(server, Update(updates), torch.tensor([1, 3]))
    torch.testing.assert_close(new, out)


def _cfg(epochs: int = 2) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=5, optimizer=OptimizerConfig("adam", lr=1e-2))


def test_server_samples_opt_in_only_and_keeps_a_copy_of_the_best() -> None:
    params = {"w": torch.zeros(1, 2)}
    cfg = FederationConfig(
        rounds=5, clients_per_round=3, local=_cfg(), early_stopping=EarlyStopping(1, 2, 0.0)
    )
    opt_in = np.array([1, 4, 5, 8, 9])
    server = FederationServer(params, opt_in, cfg, seed=0)
    picks = [server.sample(r) for r in range(20)]
    assert all(len(p) == 3 and set(p) <= set(opt_in) for p in picks)
    assert len({tuple(p) for p in picks}) > 1
    assert np.array_equal(server.sample(3), FederationServer(params, opt_in, cfg, 0).sample(3))
    server.params = {"w": torch.ones(1, 2)}
    assert not server.record(0, [1], 1.0, 0.5)
    server.params["w"].add_(5.0)  # a live update must not change the kept best
    assert not server.record(1, [1], 2.0, 0.5)
    assert server.record(2, [1], 3.0, 0.5)  # patience 2 reached
    assert server.best_round == 0
    torch.testing.assert_close(server.best_params["w"], torch.ones(1, 2))
    with pytest.raises(ValueError, match="at least one opt-in client"):
        FederationServer(params, np.array([], dtype=np.int64), cfg, seed=0)


def test_server_validates_every_check_every_rounds_and_counts_patience_in_checks() -> None:
    cfg = FederationConfig(
        rounds=10, clients_per_round=1, local=_cfg(), early_stopping=EarlyStopping(3, 2, 0.0)
    )
    server = FederationServer({"w": torch.zeros(1, 2)}, np.array([0]), cfg, seed=0)
    assert [r for r in range(10) if server.validates(r)] == [2, 5, 8, 9]
    stops = []
    for r in range(9):
        if server.validates(r):
            stops.append(server.record(r, [0], 1.0 if r == 2 else 2.0, 0.5))
        else:
            stops.append(server.record(r, [0]))
    # Checks after rounds 2 (best), 5 and 8 (no improvement: patience 2 reached at 8).
    assert stops == [False] * 8 + [True]
    assert server.best_round == 2
    assert [h.val_loss for h in server.history[:3]] == [None, None, 1.0]
    summary = server.summary()
    assert (summary["best_round"], summary["rounds_run"]) == (2, 9)
    assert "clusters" not in summary["history"][0]
    # The state dict restores a server exactly where it was.
    other = FederationServer({"w": torch.zeros(1, 2)}, np.array([0]), cfg, seed=0)
    other.load_state_dict(server.state_dict())
    assert other.summary() == summary and other.stopped and other.finished


@pytest.mark.parametrize("early_stopping", [EarlyStopping(1, 5, 0.0), None])
def test_server_stops_when_the_model_diverges_but_not_when_no_client_replied(
    early_stopping: EarlyStopping | None,
) -> None:
    cfg = FederationConfig(
        rounds=10, clients_per_round=1, local=_cfg(), early_stopping=early_stopping
    )
    server = FederationServer({"w": torch.zeros(1, 2)}, np.array([0]), cfg, seed=0)
    assert not server.record(0, [0], 1.0, 0.5)
    # No client replied (Flower): loss and accuracy both NaN; the phase goes on.
    assert not server.record(1, [0], math.nan, math.nan)
    assert not server.record(2, [0], 0.5, 0.6)
    # Diverged: the loss is not finite while the accuracy is (patience 5 is far off).
    assert server.record(3, [0], math.inf, 0.1)
    assert server.stopped and server.finished and server.best_round == 2
    server = FederationServer({"w": torch.zeros(1, 2)}, np.array([0]), cfg, seed=0)
    assert server.record(0, [0], math.nan, 0.1)
    # An accuracy of exactly 0 is still a reply.
    server = FederationServer({"w": torch.zeros(1, 2)}, np.array([0]), cfg, seed=0)
    assert server.record(0, [0], math.nan, 0.0)


def _toy(num_clients: int = 4, per_client: int = 20) -> tuple[ClientData, ClientData, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = num_clients * per_client * 2
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 6, generator=g) + y[:, None, None].float()
    idx = np.arange(n).reshape(num_clients, 2, per_client)
    train = ClientData.from_indices(x, y, [i[0] for i in idx])
    val = ClientData.from_indices(x, y, [i[1] for i in idx])
    return train, val, torch.arange(num_clients)


#: The toy runs' shared settings: 3 rounds of 2 clients, then personalisation with
#: early stopping every epoch (patience 2).
TOY_CONFIG: dict[str, Any] = {
    "federated": {
        "rounds": 3,
        "clients_per_round": 2,
        "local_epochs": 1,
        "batch_size": 5,
        "lr": 1e-2,
        "early_stopping": False,
    },
    "personalise": {
        "epochs": 4,
        "batch_size": 5,
        "lr": 1e-2,
        "stopping": {"check_every": 1, "patience": 2, "min_delta": 0.0},
    },
}


def _toy_run() -> RunSpec:
    net = build_network("mlp", (1, 6), 3)
    gate_net = build_network("mlp", (1, 6), 3, gate=True)
    cfg = config.from_dict(TOY_CONFIG)
    return run_spec(cfg, net, gate_net, (1, 6), 3, torch.device("cpu"))


def _federated(run: RunSpec, method: Method, clients: Clients, options: Any = None) -> Output:
    """The method's federated phase as the simulator's driver runs it (no checkpoints)."""
    assert method.federated is not None
    server, state = federate(run, method.federated, options, clients, "rounds")
    return federated_output(server.best_params, server.summary(), state)


def test_federate_then_personalise_runs_and_moe_respects_freezing() -> None:
    train, val, ids = _toy()
    run = _toy_run()
    opt_out = torch.tensor([False, True, False, False])
    clients = Clients(ids, train, val, opt_out)
    fedavg, local, finetune = FedAvg(), Local(), FineTune()
    fed_out = _federated(run, fedavg, clients)
    history = fed_out.info["federation"]["history"]
    assert len(history) == 3
    assert all(set(r["clients"]) <= {0, 2, 3} for r in history)
    # FedAvg has no personalisation: its output is the federated one.
    fed = fedavg.personalise(run, None, clients, {}, fed_out)
    assert fed is fed_out
    loc = local.personalise(run, None, clients, {}, None)
    ft = finetune.personalise(run, None, clients, {"fedavg": fed}, None)
    inputs = {"fedavg": fed, "finetune": ft}
    gate_only_options = MoeOptions(lr=1e-2, train_specialist=False)
    gate_only = Moe().personalise(run, gate_only_options, clients, inputs, None)
    for name, p in personal_model(ft).items():
        assert torch.equal(gate_only.state[f"specialist.{name}"], p)
    full_options = MoeOptions(lr=1e-2)
    full = Moe().personalise(run, full_options, clients, inputs, None)
    assert set(full.state) == set(gate_only.state)
    staged_options = MoeOptions(lr=1e-2, schedule="staged")
    staged = Moe().personalise(run, staged_options, clients, inputs, None)
    # Both stages' epochs count (at least one each); the joint stage moves the specialist.
    assert staged.epochs is not None and torch.all(staged.epochs >= 2)
    ft_weight = personal_model(ft)["fc1.weight"]
    assert not torch.equal(staged.state["specialist.fc1.weight"], ft_weight)
    assert not torch.equal(staged.state["gate.fc1.weight"], full.state["gate.fc1.weight"])
    # moe-staged is moe with the staged schedule.
    same = MoeStaged().personalise(run, MoeStagedOptions(lr=1e-2), clients, inputs, None)
    for name, p in staged.state.items():
        assert torch.equal(same.state[name], p)

    personal = {"local": loc, "finetune": ft}
    mixtures = {"gate_only": (gate_only, gate_only_options), "full": (full, full_options)}
    mixtures["staged"] = (staged, staged_options)
    for name, out in personal.items():
        ev = evaluate(Classifier(run.net), personal_model(out), val)
        assert out.best_loss is not None and torch.all(ev.loss <= out.best_loss + 1e-6)
        own = registry.get(name).evaluate(run, None, out, inputs, val)
        assert own.accuracy.shape == (4,) and own.gate is None
        torch.testing.assert_close(own.accuracy, ev.accuracy)
    for out, options in mixtures.values():
        ev = evaluate(mixture_of(run, options, inputs), out.state, val)
        assert out.best_loss is not None and torch.all(ev.loss <= out.best_loss + 1e-6)
        own = Moe().evaluate(run, options, out, inputs, val)
        assert own.accuracy.shape == (4,)
        torch.testing.assert_close(own.accuracy, ev.accuracy)
        assert own.gate is not None and own.gate.g.shape == (4, 20)
        assert bool(((own.gate.g >= 0) & (own.gate.g <= 1)).all())
    # FedAvg's one model serves everyone, opt-out client 1 included.
    shared = fedavg.evaluate(run, None, fed, {}, val)
    ev = evaluate(Classifier(run.net), global_model(fed), val)
    torch.testing.assert_close(shared.accuracy, ev.accuracy)


def test_moe_ditto_is_the_papers_mixture_started_from_dittos_personal_models() -> None:
    train, val, ids = _toy()
    run = _toy_run()
    clients = Clients(ids, train, val, torch.tensor([False, True, False, False]))
    fed = _federated(run, FedAvg(), clients)
    ditto = Ditto().personalise(
        run, DittoOptions(), clients, {}, _federated(run, Ditto(), clients, DittoOptions())
    )
    options = MoeDittoOptions(lr=1e-2)
    got = MoeDitto().personalise(run, options, clients, {"fedavg": fed, "ditto": ditto}, None)
    # The same as moe whose "fine-tuned" models are Ditto's.
    inputs = {"fedavg": fed, "finetune": Output(prefixed(personal_model(ditto), "model"))}
    want = Moe().personalise(run, options.as_moe(), clients, inputs, None)
    assert set(got.state) == set(want.state)
    for name, p in want.state.items():
        assert torch.equal(got.state[name], p), name
    assert not torch.equal(got.state["specialist.fc1.weight"], personal_model(ditto)["fc1.weight"])
    ev = MoeDitto().evaluate(run, options, got, {"fedavg": fed, "ditto": ditto}, val)
    assert ev.gate is not None and ev.accuracy.shape == (4,)


def test_federated_phase_is_deterministic_and_resumes_exactly() -> None:
    train, val, ids = _toy()
    run = _toy_run()
    clients = Clients(ids, train, val, torch.zeros(4, dtype=torch.bool))
    hooks = FedAvg.federated
    assert hooks is not None
    whole, _ = federate(run, hooks, None, clients, "rounds")
    saved: list[dict[str, Any]] = []

    def keep(server: FederationServer, progress: dict[str, Any]) -> None:
        if server.next_round == 1:
            saved.append(progress)

    federate(run, hooks, None, clients, "rounds", None, keep)
    resumed, _ = federate(run, hooks, None, clients, "rounds", saved[0])
    assert resumed.summary() == whole.summary()
    for name, p in whole.best_params.items():
        assert torch.equal(resumed.best_params[name], p)


class _Counting(Federated):
    """A server number that grows by one per round, validated best at 2, and clients
    counting the rounds they trained."""

    def init(self, run: RunSpec, options: Any, device: torch.device) -> dict[str, torch.Tensor]:
        return {"w": torch.zeros(1, 1, dtype=torch.float64)}

    def init_client_state(self, run: RunSpec, options: Any, clients: Clients) -> State:
        return {"count": torch.zeros(len(clients.ids))}

    def client_update(
        self,
        run: RunSpec,
        options: Any,
        server: dict[str, torch.Tensor],
        clients: Clients,
        round_: int,
        state: State,
    ) -> Update:
        k = len(clients.ids)
        return Update({"w": server["w"].expand(k, 1) + 1}, state={"count": state["count"] + 1})

    def validate(
        self,
        run: RunSpec,
        options: Any,
        server: dict[str, torch.Tensor],
        clients: Clients,
        state: State,
    ) -> Evaluation:
        k = len(clients.ids)
        assert state["count"].shape == (k,)
        loss = ((server["w"][0] - 2.0) ** 2).expand(k)
        return Evaluation(loss, torch.zeros(k), clients.val.n)


def test_the_best_round_keeps_the_clients_state_of_that_round_and_resumes_it() -> None:
    train, val, ids = _toy()
    run = replace(
        _toy_run(), federation=replace(_toy_run().federation, rounds=4, clients_per_round=4)
    )
    clients = Clients(ids, train, val, torch.tensor([False, True, False, False]))
    server, best = federate(run, _Counting(), None, clients, "rounds")
    assert server.best_round == 1 and len(server.history) == 4
    # The state of round 1 (each opt-in client trained twice), not of the last round.
    assert best["count"].tolist() == [2.0, 0.0, 2.0, 2.0]
    saved: list[dict[str, Any]] = []

    def keep(server: FederationServer, progress: dict[str, Any]) -> None:
        if server.next_round == 3:
            saved.append({k: copy.deepcopy(v) for k, v in progress.items()})

    federate(run, _Counting(), None, clients, "rounds", None, keep)
    assert saved[0]["clients"]["count"].tolist() == [3.0, 0.0, 3.0, 3.0]
    resumed, resumed_best = federate(run, _Counting(), None, clients, "rounds", saved[0])
    assert resumed.summary() == server.summary()
    assert torch.equal(resumed_best["count"], best["count"])


def test_global_expert_is_frozen_and_in_eval_mode() -> None:
    net = build_network("mlp", (1, 6), 3)
    gate_net = build_network("mlp", (1, 6), 3, gate=True)
    global_params = net.init(0, torch.tensor([0]), "g")
    mix = Mixture(net, gate_net, global_params)
    params = prefixed(net.init(1, torch.arange(2), "s"), "specialist") | prefixed(
        gate_net.init(1, torch.arange(2), "gate"), "gate"
    )
    x = torch.randn(2, 4, 1, 6)
    keys = rng.client_keys(0, torch.arange(2), "d")
    _, log_pg_a, _ = mix.parts(params, x, Dropout(keys, 0))
    _, log_pg_b, _ = mix.parts(params, x, Dropout(keys, 1))
    _, log_pg_eval, _ = mix.parts(params, x, None)
    torch.testing.assert_close(log_pg_a, log_pg_b)
    torch.testing.assert_close(log_pg_a, log_pg_eval)
    assert not log_pg_a.requires_grad


def test_every_builtin_method_describes_itself_and_its_needs_come_first() -> None:
    names = registry.names()
    assert {"fedavg", "local", "finetune", "moe", "moe-plus", "ifca", "centralised"} <= set(names)
    for name in names:
        method = registry.get(name)
        assert method.name == name and method.label and method.description
        assert "\n" not in method.description
        assert all(n in names for n in method.needs)
        registry.check_order((*method.needs, name))
        if method.options is not None:
            # Every option has a default: a listed method needs no section.
            defaults = method.options()
            if hasattr(defaults, "validate"):
                defaults.validate(f"method.{name}")
        if method.baselines is not None:
            assert set(method.baselines) == {"local_test", "global_test"}
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        registry.get("nope")


def test_a_method_registers_once_and_a_name_cannot_be_taken_twice() -> None:
    @dataclass(frozen=True)
    class EchoOptions:
        scale: float = 1.0

    class Echo(Method):
        name = "test-echo"
        label = "Echo"
        description = "a test method"
        options = EchoOptions
        needs = ("fedavg",)

    try:
        registry.register(Echo)
        registry.register(Echo)  # the same class again is harmless
        assert registry.get("test-echo").options is EchoOptions
        assert "test-echo" in registry.names()

        class Impostor(Echo):
            pass

        with pytest.raises(ValueError, match="already registered"):
            registry.register(Impostor)
        with pytest.raises(ConfigError, match="needs 'fedavg'"):
            registry.check_order(("test-echo", "fedavg"))
    finally:
        registry.unregister("test-echo")
    assert "test-echo" not in registry.names()
