"""The engine's defining test: it trains exactly what a plain per-client loop trains.

For the same initial parameters, batch order and hyper-parameters (float64, dropout off),
the vectorised cohort engine's parameters after training equal those of an ordinary
PyTorch loop (one ``nn.Module``, ``torch.optim`` optimiser and early-stopping bookkeeping
per client) to 1e-10, for one client and for several clients of unequal sizes, with
early stopping, with Adam and with SGD.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe import rng
from fedmoe.engine import (
    Classifier,
    ClientData,
    EarlyStopping,
    OptimizerConfig,
    TrainConfig,
    batch_order,
    train,
)
from fedmoe.models import Network, build_network, unstack

OPTIMIZERS = {
    "adam": OptimizerConfig("adam", lr=1e-2, weight_decay=1e-3),
    "sgd": OptimizerConfig("sgd", lr=5e-2, momentum=0.9, weight_decay=1e-3),
}


def _reference_loop(
    net: Network,
    init: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    key: torch.Tensor,
    cfg: TrainConfig,
) -> dict[str, torch.Tensor]:
    module = net.module().double()
    module.load_state_dict(init)
    o = cfg.optimizer
    opt: torch.optim.Optimizer
    if o.name == "adam":
        opt = torch.optim.Adam(
            module.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
    else:
        opt = torch.optim.SGD(
            module.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )

    def val_loss() -> float:
        module.eval()
        with torch.no_grad():
            loss = float(F.nll_loss(module(val_x), val_y))
        module.train()
        return loss

    es = cfg.early_stopping
    assert es is not None
    best_state, best_loss, wait = copy.deepcopy(module.state_dict()), val_loss(), 0
    n = torch.tensor([len(y)])
    for epoch in range(cfg.epochs):
        order = batch_order(key.reshape(1), epoch, n, len(y))[0]
        for s in range(math.ceil(len(y) / cfg.batch_size)):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            opt.zero_grad()
            F.nll_loss(module(x[idx]), y[idx]).backward()
            opt.step()
        if (epoch + 1) % es.check_every == 0 or epoch + 1 == cfg.epochs:
            loss = val_loss()
            if loss < best_loss - es.min_delta:
                best_state, best_loss, wait = copy.deepcopy(module.state_dict()), loss, 0
            else:
                wait += 1
                if wait >= es.patience:
                    break
    return best_state


def _problem(
    arch: str, sizes: list[int], seed: int = 0
) -> tuple[Network, torch.Tensor, torch.Tensor]:
    shape = (1, 28, 28) if arch == "fmnist-cnn" else (1, 8, 8)
    net = build_network(arch, shape, 10, dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    total = 2 * sum(sizes)
    x = torch.randn(total, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (total,), generator=g)
    return net, x, y


@pytest.mark.parametrize("opt", ["adam", "sgd"])
@pytest.mark.parametrize(
    ("arch", "sizes"),
    [("mlp", [37]), ("mlp", [23, 40, 7, 16]), ("fmnist-cnn", [9]), ("fmnist-cnn", [13, 5, 20])],
)
def test_engine_equals_plain_per_client_loop(arch: str, sizes: list[int], opt: str) -> None:
    net, x, y = _problem(arch, sizes)
    starts = np.cumsum([0, *sizes])
    train_idx = [np.arange(starts[i], starts[i + 1]) for i in range(len(sizes))]
    # Even clients validate on their training data (the loss keeps improving), odd clients
    # on fresh random labels (it soon stops improving): they stop at different epochs.
    val_idx = [t if i % 2 == 0 else t + sum(sizes) for i, t in enumerate(train_idx)]
    data = ClientData.from_indices(x, y, train_idx)
    val = ClientData.from_indices(x, y, val_idx)
    k = len(sizes)
    params = net.init(3, torch.arange(k), "equivalence", dtype=torch.float64)
    keys = rng.client_keys(3, torch.arange(k), "equivalence/train")
    cfg = TrainConfig(
        epochs=12,
        batch_size=8,
        optimizer=OPTIMIZERS[opt],
        early_stopping=EarlyStopping(check_every=2, patience=2, min_delta=0.0),
    )
    result = train(Classifier(net), params, data, cfg, keys, val)
    for i, init in enumerate(unstack(params)):
        expected = _reference_loop(
            net, init, x[train_idx[i]], y[train_idx[i]], x[val_idx[i]], y[val_idx[i]], keys[i], cfg
        )
        for name, tensor in expected.items():
            torch.testing.assert_close(result.params[name][i], tensor, rtol=0, atol=1e-10)
    if k > 1:
        assert len(set(result.epochs.tolist())) > 1, "clients should stop at different epochs"
        assert (result.epochs < cfg.epochs).any()


def test_masked_steps_leave_client_untouched_and_chunking_changes_nothing() -> None:
    net, x, y = _problem("mlp", [4, 30])
    data = ClientData.from_indices(x, y, [np.arange(4), np.arange(4, 34)])
    params = net.init(0, torch.arange(2), "mask", dtype=torch.float64)
    keys = rng.client_keys(0, torch.arange(2), "mask/train")
    cfg = TrainConfig(epochs=3, batch_size=4, optimizer=OPTIMIZERS["adam"])
    together = train(Classifier(net), params, data, cfg, keys)
    chunked = train(
        Classifier(net), params, data, TrainConfig(**{**cfg.__dict__, "max_cohort": 1}), keys
    )
    alone = train(
        Classifier(net),
        {n: p[:1] for n, p in params.items()},
        data.select(torch.tensor([0])),
        cfg,
        keys[:1],
    )
    for name in params:
        torch.testing.assert_close(together.params[name], chunked.params[name], rtol=0, atol=1e-12)
        torch.testing.assert_close(
            together.params[name][:1], alone.params[name], rtol=0, atol=1e-12
        )
    assert together.epochs.tolist() == [3, 3]
