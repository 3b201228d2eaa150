"""Worker processes (local, or Ray actors) give, client by client, what one process
gives: training (with early stopping that stops clients at different epochs) and
evaluation, float32 and float64, on clients with different numbers of examples: the same
parameters, epochs and accuracies; what cannot travel runs here."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from fedmoe import rng
from fedmoe.engine import (
    Classifier,
    ClientData,
    EarlyStopping,
    OptimizerConfig,
    TrainConfig,
    evaluate,
    parallel,
    train,
)
from fedmoe.engine.parallel import Pool
from fedmoe.models import build_network

ARCH = "fmnist-cnn"
DROP = 0.25
SIZES = [23, 40, 7, 16, 31]


@pytest.fixture(scope="module", params=["processes", "ray"])
def pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    """Two local worker processes, or two Ray actors on a real local Ray."""
    ray = None
    if request.param == "ray":
        request.getfixturevalue("local_ray")
        ray = "local"
    with parallel.workers(2, ray) as workers:
        assert workers is not None
        yield workers


def _problem(dtype: torch.dtype) -> tuple[object, ClientData, ClientData, ClientData]:
    net = build_network(ARCH, (1, 28, 28), 10, dropout=DROP)
    g = torch.Generator().manual_seed(0)
    total = 2 * sum(SIZES)
    x = torch.randn(total, 1, 28, 28, generator=g).to(dtype)
    y = torch.randint(0, 10, (total,), generator=g)
    starts = np.cumsum([0, *SIZES])
    train_idx = [np.arange(starts[i], starts[i + 1]) for i in range(len(SIZES))]
    # Odd clients validate on random labels: they stop early, at different epochs.
    val_idx = [t if i % 2 == 0 else t + sum(SIZES) for i, t in enumerate(train_idx)]
    data = ClientData.from_indices(x, y, train_idx)
    val = ClientData.from_indices(x, y, val_idx)
    return net, data, val, ClientData.common(x[:50], y[:50], len(SIZES))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_workers_train_and_evaluate_exactly_as_one_process(pool: Pool, dtype: torch.dtype) -> None:
    net, data, val, shared = _problem(dtype)
    k = len(SIZES)
    params = net.init(1, torch.arange(k), "parallel", dtype=dtype)  # type: ignore[attr-defined]
    keys = rng.client_keys(1, torch.arange(k), "parallel/train")
    cfg = TrainConfig(
        epochs=8,
        batch_size=8,
        optimizer=OptimizerConfig("adam", lr=1e-3),
        early_stopping=EarlyStopping(check_every=1, patience=2, min_delta=0.0),
    )
    objective = Classifier(net)  # type: ignore[arg-type]
    alone = train(objective, params, data, cfg, keys, val)
    seen: list[tuple[int, int]] = []
    with parallel.using(pool):
        split = train(objective, params, data, cfg, keys, val, lambda e, a: seen.append((e, a)))
        ev_split = [evaluate(objective, split.params, d) for d in (val, shared)]
    ev_alone = [evaluate(objective, alone.params, d) for d in (val, shared)]
    assert len(set(alone.epochs.tolist())) > 1, "clients should stop at different epochs"
    assert split.epochs.tolist() == alone.epochs.tolist()
    for name in params:
        assert torch.equal(split.params[name], alone.params[name]), name
    # Validation losses are float64 sums whose order torch's reductions pick by shape: a
    # float64 model's may differ in the last bit (a float32 model's are exact).
    tol = 0.0 if dtype == torch.float32 else 1e-15
    torch.testing.assert_close(split.best_loss, alone.best_loss, rtol=tol, atol=0.0)
    for name, a, b in zip(("val", "shared"), ev_alone, ev_split, strict=True):
        assert torch.equal(a.accuracy, b.accuracy) and torch.equal(a.n, b.n), name
        torch.testing.assert_close(a.loss, b.loss, rtol=tol, atol=0.0)
    assert seen and max(e for e, _ in seen) == int(alone.epochs.max())


class _Local(Classifier):
    """Defined in a test module, so a worker could import it: pickles."""


def test_what_cannot_travel_runs_in_this_process(
    pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    net, data, _, _ = _problem(torch.float64)
    k = len(SIZES)
    params = net.init(2, torch.arange(k), "parallel", dtype=torch.float64)  # type: ignore[attr-defined]
    keys = rng.client_keys(2, torch.arange(k), "parallel/train")
    cfg = TrainConfig(epochs=2, batch_size=8)

    class Unpicklable(Classifier):  # a class local to a function cannot be pickled
        pass

    expected = train(Classifier(net), params, data, cfg, keys)  # type: ignore[arg-type]
    with parallel.using(pool):
        got = train(Unpicklable(net), params, data, cfg, keys)  # type: ignore[arg-type]
    assert "cannot be sent to worker processes" in caplog.text
    for name in params:
        assert torch.equal(got.params[name], expected.params[name])


def test_a_workers_error_is_raised_here(pool: Pool) -> None:
    net, data, _, _ = _problem(torch.float64)
    k = len(SIZES)
    params = net.init(2, torch.arange(k), "parallel", dtype=torch.float64)  # type: ignore[attr-defined]
    bad = {n: p[:, :1] if p.dim() > 1 else p for n, p in params.items()}  # wrong shapes
    keys = rng.client_keys(2, torch.arange(k), "parallel/train")
    with parallel.using(pool), pytest.raises(RuntimeError):
        train(Classifier(net), bad, data, TrainConfig(epochs=1, batch_size=8), keys)  # type: ignore[arg-type]


def test_chunks_are_contiguous_and_balanced() -> None:
    assert [c.tolist() for c in parallel.chunks(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [c.tolist() for c in parallel.chunks(2, 8)] == [[0], [1]]
    assert parallel.pieces(10, 4, None) == 3
    assert parallel.pieces(1, 4, None) == 1
