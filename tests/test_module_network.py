"""Any nn.Module through torch.func: the generic path computes what the fused built-in
path computes, trains a user's own module exactly as a plain per-client loop does, and
refuses modules it cannot train with one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmoe import rng
from fedmoe.engine import Classifier, ClientData, OptimizerConfig, TrainConfig, batch_order, train
from fedmoe.errors import ConfigError
from fedmoe.models import ModuleNetwork, build_network, load_factory, unstack


class Tabular(nn.Module):
    """A user's model, not one of fedmoe's: LayerNorm, GELU, a named head."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.LayerNorm(features), nn.Linear(features, 16), nn.GELU()
        )
        self.classifier = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


def tabular(shape: tuple[int, ...], outputs: int) -> nn.Module:
    return Tabular(math.prod(shape), outputs)


def lenet(shape: tuple[int, ...], outputs: int) -> nn.Module:
    return build_network("fmnist-cnn", shape, max(outputs, 2), dropout=0.0).module()


def _data(k: int, shape: tuple[int, ...]) -> tuple[ClientData, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12 * k, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (12 * k,), generator=gen)
    index = [np.arange(12 * i, 12 * i + 12 - 2 * i) for i in range(k)]
    return ClientData.from_indices(x, y, index), x, y


def test_the_generic_path_equals_the_fused_path() -> None:
    fused = build_network("fmnist-cnn", (1, 28, 28), 4, dropout=0.0)
    generic = ModuleNetwork("lenet", (1, 28, 28), 4, lenet)
    assert (generic.head_name, generic.feature_size) == ("fc3", fused.feature_size)
    assert [s.shape for s in generic.param_specs()] == [s.shape for s in fused.param_specs()]
    params = fused.init(0, torch.arange(3), "test", torch.float64)
    data, x, _ = _data(3, (1, 28, 28))
    own = x[:15].reshape(3, 5, 1, 28, 28)
    shared = x[:5].unsqueeze(0)
    for inputs in (own, shared):
        torch.testing.assert_close(generic.forward(params, inputs), fused.forward(params, inputs))
        feats = generic.features(params, inputs)
        torch.testing.assert_close(feats, fused.features(params, inputs))
        torch.testing.assert_close(generic.head(params, feats), fused.head(params, feats))
    cfg = TrainConfig(3, 4, OptimizerConfig("adam", lr=1e-2))
    keys = rng.client_keys(0, torch.arange(3), "test/train")
    a = train(Classifier(fused), params, data, cfg, keys).params
    b = train(Classifier(generic), params, data, cfg, keys).params
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-10)


def _plain_loop(
    init: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    key: torch.Tensor,
    cfg: TrainConfig,
) -> dict[str, torch.Tensor]:
    """Client training as a plain PyTorch program: the user's module, torch.optim.Adam,
    the engine's batch order."""
    module = Tabular(6, 4).double()
    module.load_state_dict(init)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.optimizer.lr)
    n = torch.tensor([len(y)])
    for epoch in range(cfg.epochs):
        order = batch_order(key.reshape(1), epoch, n, len(y))[0]
        for s in range(math.ceil(len(y) / cfg.batch_size)):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            opt.zero_grad()
            F.nll_loss(F.log_softmax(module(x[idx]), -1), y[idx]).backward()
            opt.step()
    return {n: p.detach() for n, p in module.named_parameters()}


def test_a_user_module_trains_as_a_plain_per_client_loop() -> None:
    net = ModuleNetwork("tabular", (6,), 4, tabular)
    assert net.head_name == "classifier" and net.feature_size == 16
    data, x, y = _data(3, (6,))
    params = net.init(2, torch.arange(3), "test", torch.float64)
    # Each client starts from the module's own initialisation under its own stream.
    assert not torch.equal(params["classifier.weight"][0], params["classifier.weight"][1])
    again = net.init(2, torch.tensor([1]), "test", torch.float64)
    assert torch.equal(again["classifier.weight"][0], params["classifier.weight"][1])
    cfg = TrainConfig(4, 5, OptimizerConfig("adam", lr=1e-2))
    keys = rng.client_keys(2, torch.arange(3), "test/train")
    trained = train(Classifier(net), params, data, cfg, keys).params
    for i, init in enumerate(unstack(params)):
        rows = data.index[i, : int(data.n[i])]
        expected = _plain_loop(init, x[rows], y[rows], keys[i], cfg)
        for name, tensor in expected.items():
            torch.testing.assert_close(trained[name][i], tensor, rtol=0, atol=1e-10)


def test_a_named_head_splits_body_and_head_there() -> None:
    net = ModuleNetwork("tabular", (6,), 4, tabular, head_name="body.2")
    assert net.feature_size == 6 and net.output_bias == "body.2.bias"
    with pytest.raises(ConfigError, match="no submodule 'nope'"):
        ModuleNetwork("tabular", (6,), 4, tabular, head_name="nope")


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda s, n: WithBatchNorm(), "BatchNorm with running statistics.*GroupNorm"),
        (lambda s, n: nn.Linear(6, n + 1), r"returned \(2, 4\) for a batch of 2"),
        (lambda s, n: nn.Linear(5, n), "fails on inputs of shape"),
        (lambda s, n: "not a module", "returned str, not a torch.nn.Module"),
        (lambda s, n: 1 / 0, "the factory failed: division by zero"),
    ],
)
def test_modules_it_cannot_train_are_refused_in_one_line(factory: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        ModuleNetwork("user", (6,), 3, factory)  # type: ignore[arg-type]
    assert "\n" not in str(exc.value)


def test_factories_are_named_as_package_module_function() -> None:
    assert load_factory(f"{__name__}:tabular") is tabular
    for spec, message in [
        ("no_colon", "must look like"),
        ("fedmoe_no_such_module:f", "cannot import"),
        (f"{__name__}:missing", "has no function .missing."),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_factory(spec)
