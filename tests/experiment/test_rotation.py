"""partition.rotations: client k's images turned by (k mod R) x 4/R quarter turns in every
split, the global test set's example j as client j's; the simulator's cohorts and a
Flower node's data agree; bad values and non-square inputs are one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedmoe.engine import ClientData
from fedmoe.errors import ConfigError
from fedmoe.experiment import config, rotation
from fedmoe.experiment.prepare import prepare

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def _examples(data: ClientData, k: int) -> torch.Tensor:
    x, _, valid = data.batch(torch.arange(data.capacity).expand(data.num_clients, -1))
    return x[k][valid[k]]


def test_each_client_is_turned_by_its_group_and_labels_stay() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 5, 5, generator=g), torch.arange(40)
    rows = [np.arange(0, 10), np.arange(5, 15), np.arange(10, 30), np.arange(0, 40, 4)]
    plain = ClientData.from_indices(x, y, rows)
    turned = rotation.rotate_clients(plain, range(4), 4)
    for k in range(4):
        expected = torch.rot90(_examples(plain, k), k, (-2, -1))
        assert torch.equal(_examples(turned, k), expected)
        ys = turned.y[turned.index[k, : int(turned.n[k])]]
        assert torch.equal(ys, torch.as_tensor(rows[k]))
    # Two groups: 0 and 180 degrees; a lone client (a Flower node) as in its cohort.
    assert [rotation.turns(k, 2) for k in range(4)] == [0, 2, 0, 2]
    alone = rotation.rotate_clients(plain.select(torch.tensor([3])), [3], 2)
    assert torch.equal(_examples(alone, 0), torch.rot90(_examples(plain, 3), 2, (-2, -1)))
    shared = rotation.rotate_examples(x, 4)
    for j in range(8):
        assert torch.equal(shared[j], torch.rot90(x[j], j % 4, (-2, -1)))


def test_bad_rotations_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"partition\.rotations must be 1, 2 or 4, got 3"):
        config.from_dict({"partition": {"rotations": 3}})
    with pytest.raises(ConfigError, match=r"turns square images .* inputs are \(12,\)"):
        rotation.check(4, (12,))
    rotation.check(1, (12,))


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_the_simulator_and_a_flower_node_see_the_same_turned_images() -> None:
    pytest.importorskip("flwr")
    from fedmoe.flower.config import NodeOptions
    from fedmoe.flower.node_data import load_node_data

    base = {
        "partition": {"scheme": "iid", "clients": 4, "train": 10, "val": 5, "test": 5},
        "data": {"global_test_examples": 8},
    }
    plain = prepare(config.from_dict(base))
    cfg = config.from_dict({**base, "partition": {**base["partition"], "rotations": 4}})
    turned = prepare(cfg)
    for k in range(4):
        for split in ("train", "val", "test"):
            before, after = getattr(plain, split), getattr(turned, split)
            assert torch.equal(_examples(after, k), torch.rot90(_examples(before, k), k, (-2, -1)))
        node = load_node_data(cfg, NodeOptions(k, 4))
        for split in ("train", "val", "test"):
            assert torch.equal(
                _examples(getattr(node, split), 0), _examples(getattr(turned, split), k)
            )
        assert torch.equal(node.global_test.x, turned.global_test.x)
    assert torch.equal(turned.global_test.x[3], torch.rot90(plain.global_test.x[3], 3, (-2, -1)))
