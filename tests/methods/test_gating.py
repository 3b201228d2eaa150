"""moe-plus: calibration, label priors and a gate that learns where each expert is right."""

from __future__ import annotations

import numpy as np
import torch

from fedmoe.engine import ClientData, EarlyStopping, OptimizerConfig, TrainConfig
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
    log_prior_ratio,
    scaled,
)
from fedmoe.methods.params import rows
from fedmoe.models import build_network


def test_temperature_recovers_an_overconfident_expert() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4000, 5, generator=g) * 2.0
    y = torch.distributions.Categorical(logits=logits).sample()
    # Client 0's expert is 3x overconfident, client 1's is calibrated.
    log_p = torch.stack([torch.log_softmax(3.0 * logits[0], -1), torch.log_softmax(logits[1], -1)])
    t = fit_temperature(log_p, y, torch.ones(2, 4000, dtype=torch.bool))
    assert abs(float(t[0]) - 3.0) < 0.4 and abs(float(t[1]) - 1.0) < 0.15
    rescaled = scaled(log_p[:1], torch.tensor([3.0]))
    torch.testing.assert_close(rescaled[0], torch.log_softmax(logits[0], -1), atol=1e-5, rtol=0)


def test_log_prior_ratio_is_positive_for_frequent_and_negative_for_rare_classes() -> None:
    y = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2])
    data = ClientData.from_indices(torch.zeros(8, 1), y, [np.arange(4), np.arange(4, 8)])
    ratio = log_prior_ratio(data, 3)
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
    prior = torch.zeros(k, 3, dtype=torch.float64)
    for options in (
        GateConfig(data="train"),
        GateConfig(data="heldout", calibrate=False, adjust=False),
    ):
        fit = fit_gate(
            build_network("mlp", (4,), 3),
            gate_net,
            _experts(k, 60, 0),
            _experts(k, 80, 1),
            prior,
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
    ratio = torch.log(torch.tensor([[2.0, 0.5, 0.5], [0.2, 0.2, 2.6]], dtype=torch.float64))
    gate_net = build_network("mlp", (4,), 3, gate=True, dropout=0.0)
    cfg = TrainConfig(1, 10, OptimizerConfig("adam", lr=1e-9))
    fit = fit_gate(
        build_network("mlp", (4,), 3),
        gate_net,
        ex,
        ex,
        ratio,
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
    clusters = net.init(0, torch.arange(3), "c")
    ex = cache_experts(net, specialists, net.init(0, torch.tensor([0]), "g"), data, clusters)
    assert ex.log_pc is not None and ex.log_pc.shape == (2, 7, 3, 4) and ex.num_clusters == 3
    for m in range(3):
        model = rows(clusters, torch.tensor([m]))
        torch.testing.assert_close(ex.log_pc[1, :7, m], net.forward(model, x[5:12][None])[0])
        torch.testing.assert_close(ex.log_pc[0, :5, m], net.forward(model, x[:5][None])[0])
    shared = cache_experts(
        net, specialists, net.init(0, torch.tensor([0]), "g"), ClientData.common(x, y, 2), clusters
    )
    assert shared.log_pc is not None and shared.log_pc.shape == (1, 12, 3, 4)
