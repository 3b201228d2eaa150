"""moe-plus: calibration, label priors and a gate that learns where each expert is right."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedmoe.engine import ClientData, EarlyStopping, OptimizerConfig, TrainConfig
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.prepare import run_spec
from fedmoe.federation import Clients
from fedmoe.methods import fitted_gate as fg
from fedmoe.methods.base import GLOBAL, Output, RunSpec, federated_output, global_model
from fedmoe.methods.gating import (
    PRIOR_SCALE,
    Experts,
    GateConfig,
    GateMixture,
    cache_experts,
    evaluate_gate,
    fit_gate,
    fit_temperature,
    image_inputs,
    label_counts,
    log_prior_ratio,
    scaled,
)
from fedmoe.methods.ifca import ROUTER, cluster_experts
from fedmoe.methods.moe_ifca import MoeIfca, MoeIfcaOptions
from fedmoe.methods.moe_plus import MoePlus, MoePlusOptions
from fedmoe.methods.moe_plus_fedbabu import MoePlusFedBabu
from fedmoe.methods.params import prefixed, rows
from fedmoe.methods.personal import MODEL, personal_model
from fedmoe.models import build_network


def test_temperature_recovers_an_overconfident_expert() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4000, 5, generator=g) * 2.0
    y = torch.distributions.Categorical(logits=logits).sample()  # type: ignore[no-untyped-call]
    # Client 0's expert is 3x overconfident, client 1's is calibrated.
    log_p = torch.stack([torch.log_softmax(3.0 * logits[0], -1), torch.log_softmax(logits[1], -1)])
    t = fit_temperature(log_p, y, torch.ones(2, 4000, dtype=torch.bool))
    assert abs(float(t[0]) - 3.0) < 0.4 and abs(float(t[1]) - 1.0) < 0.15
    rescaled = scaled(log_p[:1], torch.tensor([3.0]))
    torch.testing.assert_close(rescaled[0], torch.log_softmax(logits[0], -1), atol=1e-5, rtol=0)


def test_log_prior_ratio_is_positive_for_frequent_and_negative_for_rare_classes() -> None:
    y = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2])
    data = ClientData.from_indices(torch.zeros(8, 1), y, [np.arange(4), np.arange(4, 8)])
    counts = label_counts(data, 3)
    torch.testing.assert_close(counts[0], torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64))
    ratio = log_prior_ratio(counts)
    # Client 0: counts (3, 1, 0) over 4 examples, add-one smoothed over 3 classes.
    expected = torch.log(torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64) * 3)
    torch.testing.assert_close(ratio[0], expected)
    assert ratio[1, 2] > 0 > ratio[1, 0]


def test_ablations_switch_each_option_once_and_all_together() -> None:
    best = GateConfig()
    variants = best.ablations()
    assert len(variants) == 7 and variants[best.label] == best
    every = GateConfig("image", "train", False, False, False)
    assert every in variants.values()
    # The fallback rule is not an option the ablation switches: every variant keeps it.
    kept = GateConfig(fallback=0.1).ablations()
    assert {c.fallback for c in kept.values()} == {0.1}
    assert "fallback 0.1" in GateConfig(fallback=0.1).label
    for other in variants.values():
        if other not in (best, every):
            differences = [
                f
                for f in ("inputs", "data", "calibrate", "prior", "adjust")
                if getattr(other, f) != getattr(best, f)
            ]
            assert len(differences) == 1


def _experts(k: int, n: int, seed: int) -> Experts:
    """Two domains told apart by feature 0: the specialist is right on domain A (and
    confidently wrong on B), the global expert right on B (and unsure on A)."""
    g = torch.Generator().manual_seed(seed)
    domain = torch.rand(k, n, generator=g) < 0.5
    y = torch.randint(0, 3, (k, n), generator=g)
    feats = torch.randn(k, n, 4, generator=g)
    feats[..., 0] = torch.where(domain, 2.0, -2.0)
    right = torch.nn.functional.one_hot(y, 3).float()
    wrong = torch.nn.functional.one_hot((y + 1) % 3, 3).float()
    log_ps = torch.log_softmax(4.0 * torch.where(domain.unsqueeze(-1), right, wrong), -1)
    log_pg = torch.log_softmax(torch.where(domain.unsqueeze(-1), 0.3 * wrong, 4.0 * right), -1)
    return Experts(feats, log_ps, log_pg, y, torch.full((k,), n))


def test_gate_learns_which_expert_to_trust_per_input() -> None:
    k = 3
    gate_net = build_network("mlp", (4,), 3, gate=True, dropout=0.0)
    cfg = TrainConfig(60, 10, OptimizerConfig("adam", lr=1e-2), EarlyStopping(5, 4, 0.0))
    counts = torch.zeros(k, 3, dtype=torch.float64)  # a uniform prior
    for options in (
        GateConfig(data="train"),
        GateConfig(data="heldout", calibrate=False, adjust=False),
    ):
        fit = fit_gate(
            build_network("mlp", (4,), 3),
            gate_net,
            _experts(k, 60, 0),
            _experts(k, 80, 1),
            counts,
            options,
            cfg,
            torch.arange(k),
            seed=0,
        )
        assert (PRIOR_SCALE in fit.params) == options.prior
        test = _experts(k, 200, 2)
        ev, gates = evaluate_gate(fit, test)
        # Each expert alone is right on about half the inputs; the mixture on nearly all.
        assert float(ev.accuracy.min()) > 0.95
        domain_a = test.gate_in[..., 0] > 0
        assert float(gates[domain_a].mean()) > 0.9 > 0.1 > float(gates[~domain_a].mean())


def test_image_inputs_are_the_clients_rows_flattened() -> None:
    x = torch.arange(24.0).reshape(6, 1, 2, 2)
    data = ClientData.from_indices(x, torch.zeros(6, dtype=torch.int64), [np.array([4, 1])])
    torch.testing.assert_close(image_inputs(data), x[[4, 1]].reshape(1, 2, 4))
    shared = ClientData.common(x, torch.zeros(6, dtype=torch.int64), 3)
    assert image_inputs(shared).shape == (1, 6, 4)


def test_adjusted_global_expert_is_bayes_rule_for_the_clients_label_shift() -> None:
    k, n = 2, 50
    ex = _experts(k, n, 3)
    ratio = log_prior_ratio(torch.tensor([[9.0, 1.0, 1.0], [0.0, 0.0, 12.0]], dtype=torch.float64))
    gate_net = build_network("mlp", (4,), 3, gate=True, dropout=0.0)
    cfg = TrainConfig(1, 10, OptimizerConfig("adam", lr=1e-9))
    fit = fit_gate(
        build_network("mlp", (4,), 3),
        gate_net,
        ex,
        ex,
        torch.tensor([[9.0, 1.0, 1.0], [0.0, 0.0, 12.0]], dtype=torch.float64),
        GateConfig(calibrate=False, prior=False, adjust=True),
        cfg,
        torch.arange(k),
        seed=0,
    )
    # Send the gate to the global expert: the mixture is then the adjusted global model.
    fit.params["gate.fc3.bias"] = torch.full((k, 1), -60.0)
    ev, gates = evaluate_gate(fit, ex)
    assert float(gates.max()) < 1e-20
    adjusted = torch.log_softmax(ex.log_pg.double() + ratio.unsqueeze(1), -1)
    expected = -adjusted.gather(-1, ex.y.unsqueeze(-1)).squeeze(-1).mean(1)
    torch.testing.assert_close(ev.loss, expected, rtol=1e-4, atol=1e-5)


def _unseen_classes(k: int, n: int, seed: int) -> Experts:
    """Clients that trained on class 0 alone, on inputs of all three classes: the
    specialist says class 0 whatever the input; the global expert is confidently right."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (k, n), generator=g)
    one_hot = torch.nn.functional.one_hot
    log_ps = torch.log_softmax(4.0 * one_hot(torch.zeros_like(y), 3).float(), -1)
    log_pg = torch.log_softmax(6.0 * one_hot(y, 3).float(), -1)
    return Experts(torch.randn(k, n, 4, generator=g), log_ps, log_pg, y, torch.full((k,), n))


def test_fallback_hands_inputs_of_unseen_classes_to_the_global_expert() -> None:
    k = 2
    ex = _unseen_classes(k, 300, 0)
    counts = torch.tensor([[20.0, 0.0, 0.0]] * k, dtype=torch.float64)
    results = []
    for fallback in (0.0, 0.5):
        config = GateConfig(calibrate=False, prior=False, adjust=False, fallback=fallback)
        fit = fit_gate(
            build_network("mlp", (4,), 3),
            build_network("mlp", (4,), 3, gate=True, dropout=0.0),
            ex,
            ex,
            counts,
            config,
            TrainConfig(1, 10, OptimizerConfig("adam", lr=1e-9)),
            torch.arange(k),
            seed=0,
        )
        assert fit.seen is not None and fit.seen.tolist() == [[True, False, False]] * k
        # Trust the specialist everywhere, as a gate fitted on class 0 alone learns to.
        fit.params["gate.fc3.bias"] = torch.full((k, 1), 60.0)
        results.append(evaluate_gate(fit, ex))
    (plain, _), (ruled, gates) = results
    other = ex.y != 0
    # Without the rule the mixture is the specialist, right on class 0 alone; with it,
    # the global expert answers wherever it puts under half its mass on class 0.
    torch.testing.assert_close(plain.accuracy, (~other).double().mean(1))
    assert float(ruled.accuracy.min()) == 1.0
    assert float(gates[other].max()) == 0.0 and float(gates[~other].min()) > 0.99


def _three_domains(k: int, n: int, seed: int) -> Experts:
    """Three domains (one-hot in features 0-2): the specialist is right on the first,
    the global expert on the second, the one cluster model on the third; each is
    confidently wrong elsewhere."""
    g = torch.Generator().manual_seed(seed)
    domain = torch.randint(0, 3, (k, n), generator=g)
    y = torch.randint(0, 3, (k, n), generator=g)
    feats = torch.randn(k, n, 4, generator=g) * 0.1
    feats[..., :3] += 3.0 * torch.nn.functional.one_hot(domain, 3).float()
    right = torch.nn.functional.one_hot(y, 3).float()
    wrong = torch.nn.functional.one_hot((y + 1) % 3, 3).float()

    def expert(d: int) -> torch.Tensor:
        return torch.log_softmax(4.0 * torch.where((domain == d).unsqueeze(-1), right, wrong), -1)

    log_pc = expert(2).unsqueeze(2)
    return Experts(feats, expert(0), expert(1), y, torch.full((k,), n), log_pc)


def test_gate_over_cluster_models_routes_each_domain_to_its_expert() -> None:
    k = 2
    gate_net = build_network("mlp", (4,), 3, gate=True, dropout=0.0, gate_outputs=2)
    cfg = TrainConfig(80, 10, OptimizerConfig("adam", lr=1e-2), EarlyStopping(5, 4, 0.0))
    fit = fit_gate(
        build_network("mlp", (4,), 3),
        gate_net,
        _three_domains(k, 90, 0),
        _three_domains(k, 120, 1),
        torch.zeros(k, 3, dtype=torch.float64),
        GateConfig(data="train", calibrate=True, prior=True, adjust=False),
        cfg,
        torch.arange(k),
        seed=0,
    )
    assert fit.t_clusters is not None and fit.t_clusters.shape == (k, 1)
    test = _three_domains(k, 300, 2)
    ev, gates = evaluate_gate(fit, test)
    # Each expert alone is right on a third of the inputs; the mixture on nearly all.
    assert float(ev.accuracy.min()) > 0.95
    first = test.gate_in[..., 0] > 1.5
    assert float(gates[first].mean()) > 0.9 > 0.1 > float(gates[~first].mean())


def test_mixture_weights_over_cluster_models_are_a_softmax_with_the_global_at_zero() -> None:
    mix = GateMixture(build_network("mlp", (2,), 3, gate=True, gate_outputs=3), 3, clusters=2)
    logits = torch.tensor([[[1.0, -1.0, 0.5]]], dtype=torch.float64)
    w = mix.weights(logits).exp()
    expected = torch.softmax(torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64), 0)
    torch.testing.assert_close(w[0, 0], expected)
    torch.testing.assert_close(mix.specialist_weight(logits), expected[:1].reshape(1, 1))


def test_cached_cluster_experts_are_each_models_outputs() -> None:
    net = build_network("mlp", (1, 3), 4, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 1, 3, generator=g)
    y = torch.randint(0, 4, (12,), generator=g)
    data = ClientData.from_indices(x, y, [np.arange(5), np.arange(5, 12)])
    specialists = net.init(0, torch.arange(2), "s")
    models = net.init(0, torch.arange(3), "c")

    def clusters(x: torch.Tensor) -> torch.Tensor:
        return net.forward(models, x)

    ex = cache_experts(net, specialists, net.init(0, torch.tensor([0]), "g"), data, clusters)
    assert ex.log_pc is not None and ex.log_pc.shape == (2, 7, 3, 4) and ex.num_clusters == 3
    for m in range(3):
        model = rows(models, torch.tensor([m]))
        torch.testing.assert_close(ex.log_pc[1, :7, m], net.forward(model, x[5:12][None])[0])
        torch.testing.assert_close(ex.log_pc[0, :5, m], net.forward(model, x[:5][None])[0])
    shared = cache_experts(
        net, specialists, net.init(0, torch.tensor([0]), "g"), ClientData.common(x, y, 2), clusters
    )
    assert shared.log_pc is not None and shared.log_pc.shape == (1, 12, 3, 4)


# The gate methods through their hooks: what ``personalise`` keeps is what ``evaluate``
# restores.

GATE_RUN: dict[str, Any] = {
    "personalise": {
        "epochs": 6,
        "batch_size": 5,
        "lr": 1e-2,
        "stopping": {"check_every": 1, "patience": 2, "min_delta": 0.0},
    },
}


def _gate_setup() -> tuple[RunSpec, Clients, dict[str, Output], ClientData]:
    """Four clients of a 3-class toy task, a global model, their specialists (standing in
    for FT's) and two cluster models (standing in for IFCA's), and a shared test set."""
    g = torch.Generator().manual_seed(0)
    k, per = 4, 20
    n = k * per * 3
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 6, generator=g) + y[:, None, None].float()
    idx = np.arange(n).reshape(k, 3, per)
    split = [ClientData.from_indices(x, y, [i[s] for i in idx]) for s in range(3)]
    net = build_network("mlp", (1, 6), 3)
    gate_net = build_network("mlp", (1, 6), 3, gate=True)
    run = run_spec(config.from_dict(GATE_RUN), net, gate_net, (1, 6), 3, torch.device("cpu"))
    ids = torch.arange(k)
    clients = Clients(ids, split[0], split[1], torch.zeros(k, dtype=torch.bool))
    inputs = {
        "fedavg": federated_output(net.init(0, torch.tensor([0]), "g"), {}, {}),
        "finetune": Output(prefixed(net.init(0, ids, "s"), MODEL)),
        "ifca": Output(prefixed(net.init(0, torch.arange(2), "c"), GLOBAL)),
    }
    return run, clients, inputs, split[2]


def test_moe_plus_keeps_each_variants_gate_and_evaluates_it_as_fitted() -> None:
    run, clients, inputs, test = _gate_setup()
    method = MoePlus()
    options = MoePlusOptions(lr=1e-2, ablation=True)
    own = method.personalise(run, options, clients, inputs, None)
    variants = options.variants()
    assert len(variants) == 7 and next(iter(variants.values())) == options.gate()
    assert {f"v{j}.t_global" for j in range(7)} <= set(own.state) and fg.RATIO in own.state
    specialists = personal_model(inputs["finetune"])
    glob = global_model(inputs["fedavg"])
    for data in (test, ClientData.common(test.x, test.y, 4)):
        ev = method.evaluate(run, options, own, inputs, data)
        assert list(ev.variants) == list(variants)
        main = ev.variants[next(iter(variants))]
        torch.testing.assert_close(ev.accuracy, main.accuracy)
        assert ev.gate is not None and main.gate is not None
        torch.testing.assert_close(ev.gate.g, main.gate.g)
        assert ev.gate.g.shape == (4, data.capacity)
        # The restored gate of every variant is the one a direct fit gives.
        for label, gate in list(variants.items())[:3]:
            train, val, on = (
                fg.experts_on(run, specialists, glob, d, None, {gate.inputs})[gate.inputs]
                for d in (clients.train, clients.val, data)
            )
            fit = fg.fit(run, gate, options.lr, clients, train, val, label)
            direct = fg.evaluated(fit, on)
            torch.testing.assert_close(ev.variants[label].accuracy, direct.accuracy)
            if label == next(iter(variants)):
                assert own.epochs is not None and torch.equal(own.epochs, fit.epochs)
    label = list(variants)[1]
    scalars = {k: v.tolist() for k, v in ev.variants[label].scalars.items()}
    details = method.details(options, scalars, label)
    assert details["options"]["inputs"] == variants[label].inputs
    assert set(details["temperature"]) == {"specialist", "global"}
    assert method.details(options, scalars) == {}


def test_moe_plus_fedbabu_is_moe_plus_over_fedbabus_personal_models() -> None:
    run, clients, inputs, test = _gate_setup()
    k = len(clients.ids)
    babu = Output(prefixed(run.net.init(0, torch.arange(k), "babu"), MODEL))
    options = MoePlusOptions(lr=1e-2)
    theirs = {"fedavg": inputs["fedavg"], "fedbabu": babu}
    got = MoePlusFedBabu().personalise(run, options, clients, theirs, None)
    # The same as MoE+ whose fine-tuned models are FedBABU's ...
    as_ft = {"fedavg": inputs["fedavg"], "finetune": babu}
    want = MoePlus().personalise(run, options, clients, as_ft, None)
    assert set(got.state) == set(want.state)
    for name, p in want.state.items():
        assert torch.equal(got.state[name], p), name
    # ... and not MoE+ over FT's.
    plus = MoePlus().personalise(run, options, clients, inputs, None)
    assert not torch.equal(plus.state["v0.t_specialist"], got.state["v0.t_specialist"])
    ev = MoePlusFedBabu().evaluate(run, options, got, theirs, test)
    direct = MoePlus().evaluate(run, options, want, as_ft, test)
    torch.testing.assert_close(ev.accuracy, direct.accuracy)
    assert ev.gate is not None and ev.gate.g.shape == (k, test.capacity)


def test_moe_ifca_gate_over_cluster_models_round_trips_through_its_state() -> None:
    run, clients, inputs, test = _gate_setup()
    method = MoeIfca()
    options = MoeIfcaOptions(lr=1e-2)
    own = method.personalise(run, options, clients, inputs, None)
    assert own.state["gate.t_clusters"].shape == (4, 2)
    torch.testing.assert_close(own.state[fg.SEEN], label_counts(clients.train, 3) > 0)
    ev = method.evaluate(run, options, own, inputs, test)
    experts = [
        fg.experts_on(
            run,
            personal_model(inputs["finetune"]),
            global_model(inputs["fedavg"]),
            d,
            cluster_experts(run, global_model(inputs["ifca"]), route=False),
            {"features"},
        )["features"]
        for d in (clients.train, clients.val, test)
    ]
    assert experts[2].num_clusters == 2
    fit = fg.fit(run, options.gate(), options.lr, clients, experts[0], experts[1], "fit")
    direct = fg.evaluated(fit, experts[2])
    torch.testing.assert_close(ev.accuracy, direct.accuracy)
    assert ev.gate is not None and direct.gate is not None
    torch.testing.assert_close(ev.gate.g, direct.gate.g)
    # The fallback rule reads the clients' seen classes from the state (every class is
    # seen here: all the rule can do is leave the mixture as it is).
    ruled = MoeIfcaOptions(lr=1e-2, fallback=0.9)
    torch.testing.assert_close(method.evaluate(run, ruled, own, inputs, test).accuracy, ev.accuracy)


def test_moe_ifca_routed_mixes_ifcas_routed_mixture_as_one_expert() -> None:
    run, clients, inputs, test = _gate_setup()
    clusters = global_model(inputs["ifca"])
    router = run.net.as_gate(2).init(0, torch.tensor([0]), "r")
    ifca = Output(prefixed(clusters | prefixed(router, ROUTER), GLOBAL))
    inputs = inputs | {"ifca": ifca}
    method = MoeIfca()
    options = MoeIfcaOptions(lr=1e-2, clusters="routed")
    own = method.personalise(run, options, clients, inputs, None)
    assert own.state["gate.t_clusters"].shape == (4, 1)
    ev = method.evaluate(run, options, own, inputs, test)
    experts = fg.experts_on(
        run,
        personal_model(inputs["finetune"]),
        global_model(inputs["fedavg"]),
        test,
        cluster_experts(run, global_model(ifca), route=True),
        {"features"},
    )["features"]
    # The one cluster expert is the router's mixture of the cluster models.
    assert experts.log_pc is not None and experts.num_clusters == 1
    log_r = torch.log_softmax(run.net.as_gate(2).forward(router, test.x[None]), -1)
    log_pc = run.net.forward(clusters, test.x[None])
    mixed = torch.logsumexp(log_r[0].T.unsqueeze(-1) + log_pc, 0)
    for k in range(4):
        rows_k = test.index[k, : int(test.n[k])]
        torch.testing.assert_close(experts.log_pc[k, : len(rows_k), 0], mixed[rows_k])
    assert ev.gate is not None and ev.gate.g.shape == (4, test.capacity)
    # Routing needs a federation that trained a router.
    with pytest.raises(ValueError, match="trained no router"):
        method.personalise(
            run, options, clients, inputs | {"ifca": Output(prefixed(clusters, GLOBAL))}, None
        )


def test_moe_ifca_routed_needs_ifcas_router_in_the_config() -> None:
    base = {"methods": ["fedavg", "finetune", "ifca", "moe-ifca"]}
    routed = {"moe-ifca": {"clusters": "routed"}}
    with pytest.raises(
        ConfigError, match=r"clusters = 'routed'.*method.ifca.router = 'choice' or 'likelihood'"
    ):
        config.from_dict(base | {"method": routed})
    cfg = config.from_dict(base | {"method": routed | {"ifca": {"router": "choice"}}})
    assert cfg.options("moe-ifca").clusters == "routed" and cfg.options("ifca").router == "choice"
    with pytest.raises(ConfigError, match=r"method.ifca.router_lr must be positive, got 0"):
        config.from_dict(base | {"method": {"ifca": {"router_lr": 0.0}}})


def test_gate_options_reject_a_fallback_outside_0_to_1() -> None:
    fg.GateOptions(fallback=0.0).validate("method.moe-plus")
    with pytest.raises(ConfigError, match=r"method.moe-plus.fallback must be in \[0, 1\)"):
        fg.GateOptions(fallback=1.0).validate("method.moe-plus")
