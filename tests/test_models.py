"""The cohort forward equals K independent ordinary modules; init is keyed per client."""

import pytest
import torch

from fedmoe import rng
from fedmoe.errors import ConfigError
from fedmoe.models import build_network, default_architecture, stack, unstack

CASES = [
    ("fmnist-cnn", (1, 28, 28), 10),
    ("cifar-cnn", (3, 32, 32), 100),
    ("mlp", (1, 40), 10),
    ("mlp", (1, 8, 8), 10),
]


@pytest.mark.parametrize(("arch", "shape", "classes"), CASES)
@pytest.mark.parametrize("gate", [False, True])
def test_cohort_forward_matches_reference_modules(
    arch: str, shape: tuple[int, ...], classes: int, gate: bool
) -> None:
    net = build_network(arch, shape, classes, gate=gate)
    k, b = 3, 5
    params = net.init(0, torch.arange(k), "test", dtype=torch.float64)
    x = torch.randn(k, b, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = net.forward(params, x)
    assert out.shape == ((k, b) if gate else (k, b, classes))
    for i, p in enumerate(unstack(params)):
        module = net.module().double().eval()
        module.load_state_dict(p)
        torch.testing.assert_close(out[i], module(x[i]), rtol=0, atol=1e-12)
    if not gate:
        torch.testing.assert_close(out.exp().sum(-1), torch.ones(k, b, dtype=torch.float64))


def test_paper_fashion_mnist_cnn_shapes() -> None:
    net = build_network("fmnist-cnn", (1, 28, 28), 10)
    shapes = {s.name: s.shape for s in net.param_specs()}
    assert shapes["conv1.weight"] == (6, 1, 5, 5)
    assert shapes["conv2.weight"] == (12, 6, 5, 5)
    assert shapes["fc1.weight"] == (84, 192)
    assert shapes["fc2.weight"] == (42, 84)
    assert shapes["fc3.weight"] == (10, 42)
    cifar = build_network("cifar-cnn", (3, 32, 32), 10)
    assert {s.name: s.shape for s in cifar.param_specs()}["fc1.weight"] == (120, 400)


def test_dropout_mask_applies_in_forward_and_differs_per_client() -> None:
    net = build_network("fmnist-cnn", (1, 28, 28), 10)
    keys = rng.client_keys(0, torch.arange(2), "dropout")
    mask = net.dropout_mask(keys, 0, 4, torch.float32)
    assert mask.shape == (2, 4, 84)
    assert set(mask.unique().tolist()) <= {0.0, 2.0}
    assert not torch.equal(mask[0], mask[1])
    params = stack([unstack(net.init(0, torch.arange(1), "x"))[0]] * 2)
    x = torch.rand(1, 4, 1, 28, 28).expand(2, -1, -1, -1, -1)
    out = net.forward(params, x, mask)
    assert not torch.allclose(out[0], out[1])


def test_init_depends_on_client_not_on_cohort() -> None:
    net = build_network("mlp", (1, 40), 10)
    alone = net.init(7, torch.tensor([5]), "local")
    together = net.init(7, torch.tensor([2, 5, 9]), "local")
    for name, t in alone.items():
        assert torch.equal(t[0], together[name][1])
        assert not torch.equal(together[name][0], together[name][1])
    bound = 1 / 40**0.5
    assert alone["fc1.weight"].abs().max() <= bound
    assert alone["fc1.weight"].std() > bound / 3


def test_bad_configurations_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        build_network("resnet", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="16x16"):
        build_network("fmnist-cnn", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="dropout"):
        build_network("mlp", (1, 40), 10, dropout=1.0)


def test_default_architecture() -> None:
    assert default_architecture((1, 28, 28)) == "fmnist-cnn"
    assert default_architecture((3, 32, 32)) == "cifar-cnn"
    assert default_architecture((1, 40)) == "mlp"
    assert default_architecture((1, 8, 8)) == "mlp"
