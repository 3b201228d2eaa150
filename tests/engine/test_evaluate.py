"""Evaluation: shared-input and single-model fast paths equal the plain K-model path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmoe.engine import Classifier, ClientData, evaluate
from fedmoe.methods.mixture import Mixture
from fedmoe.methods.params import broadcast, prefixed
from fedmoe.models import build_network


@pytest.mark.parametrize(("arch", "shape"), [("fmnist-cnn", (1, 28, 28)), ("mlp", (1, 8, 8))])
def test_shared_and_single_model_paths_match_the_general_path(
    arch: str, shape: tuple[int, ...]
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (37,), generator=g)
    k = 3
    common = ClientData.common(x, y, k)
    copies = ClientData.from_indices(x, y, [np.arange(37)] * k)
    net = build_network(arch, shape, 10)
    params = net.init(0, torch.arange(k), "p", dtype=torch.float64)
    single = net.init(1, torch.tensor([0]), "s", dtype=torch.float64)
    gate = build_network(arch, shape, 10, gate=True)
    mixture = Mixture(net, gate, single)
    mix_params = prefixed(params, "specialist") | prefixed(
        gate.init(2, torch.arange(k), "g", dtype=torch.float64), "gate"
    )
    cases = [
        (Classifier(net), params),
        (Classifier(net), single),
        (mixture, mix_params),
    ]
    for objective, p in cases:
        # Small batches exercise the batching; K copies of one model are the reference.
        ref_params = broadcast(p, k) if next(iter(p.values())).shape[0] == 1 else p
        expected = evaluate(objective, ref_params, copies, max_examples=30)
        for data in (common, copies):
            got = evaluate(objective, p, data, max_examples=30)
            torch.testing.assert_close(got.loss, expected.loss, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got.accuracy, expected.accuracy)
