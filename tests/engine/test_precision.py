"""bf16 mixed precision (``dtype = "bf16-mixed"``): refused with one line where the CPU
has no native bfloat16; where it has, products compute in bfloat16 while outputs,
parameters and losses stay float32, worker processes compute under the caller's setting
exactly as one process does, and a small run lands near its float32 twin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fedmoe import rng
from fedmoe.engine import Classifier, ClientData, TrainConfig, evaluate, parallel, precision, train
from fedmoe.engine.parallel import Workers
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.experiment.run import run_experiment
from fedmoe.models import build_network

CPU = torch.device("cpu")
native = pytest.mark.skipif(
    precision.unsupported(CPU) is not None, reason="this CPU has no native bfloat16"
)


def test_bf16_mixed_is_refused_where_the_cpu_has_no_native_bfloat16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    cfg = config.from_dict({"dtype": "bf16-mixed"})
    with pytest.raises(ConfigError, match=r"no native bfloat16.*use dtype=float32"):
        run_experiment(cfg)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert precision.unsupported(CPU) is None
    assert "mps" in str(precision.unsupported(torch.device("mps")))


def test_cpu_flags_are_read_from_proc_cpuinfo() -> None:
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # Linux: the flags line lists the instruction sets torch dispatches on
        assert "fpu" in flags or "sse2" in flags


def _problem() -> tuple[object, dict[str, torch.Tensor], ClientData, torch.Tensor]:
    net = build_network("fmnist-cnn", (1, 28, 28), 10, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 1, 28, 28, generator=g), torch.randint(0, 10, (120,), generator=g)
    data = ClientData.from_indices(
        x, y, [torch.arange(i * 30, i * 30 + 30).numpy() for i in range(4)]
    )
    params = net.init(0, torch.arange(4), "bf16")  # type: ignore[attr-defined]
    return net, params, data, rng.client_keys(0, torch.arange(4), "bf16/train")


@native
def test_products_compute_in_bfloat16_and_outputs_stay_float32() -> None:
    net, params, data, _ = _problem()
    x = data.batch(torch.arange(30).expand(4, -1))[0]
    full = net.forward(params, x)  # type: ignore[attr-defined]
    with precision.mixed(True, CPU):
        mixed = net.forward(params, x)  # type: ignore[attr-defined]
    assert mixed.dtype == torch.float32
    diff = (mixed - full).abs().max().item()
    assert 0.0 < diff < 0.1  # bfloat16 keeps 8 bits of mantissa: close, not equal
    assert torch.allclose(mixed.exp().sum(-1), torch.ones(4, 30))


@pytest.fixture(scope="module")
def pool() -> Iterator[Workers]:
    with parallel.workers(2) as workers:
        assert workers is not None
        yield workers


@native
def test_workers_compute_under_the_callers_bf16_setting(pool: Workers) -> None:
    net, params, data, keys = _problem()
    objective = Classifier(net)  # type: ignore[arg-type]
    cfg = TrainConfig(epochs=2, batch_size=10)
    with precision.mixed(True, CPU):
        alone = train(objective, params, data, cfg, keys)
        ev_alone = evaluate(objective, alone.params, data)
        with parallel.using(pool):
            split = train(objective, params, data, cfg, keys)
            ev_split = evaluate(objective, split.params, data)
    full = train(objective, params, data, cfg, keys)
    for name in params:
        assert split.params[name].dtype == torch.float32
        assert torch.equal(split.params[name], alone.params[name]), name
    assert any(not torch.equal(full.params[n], alone.params[n]) for n in params)
    assert torch.equal(ev_split.accuracy, ev_alone.accuracy)
    assert torch.equal(ev_split.loss, ev_alone.loss)


@native
def test_a_bf16_mixed_run_lands_near_its_float32_twin() -> None:
    base = {
        "model": "fmnist-cnn",
        "data": {"global_test_examples": 500},
        "partition": {"clients": 4, "train": 60, "val": 40, "test": 40},
        "federated": {"rounds": 4, "clients_per_round": 4, "local_epochs": 1},
        "personalise": {"epochs": 2},
        "methods": ["fedavg", "local", "finetune", "moe"],
    }
    full = run_experiment(config.from_dict(base))
    mixed = run_experiment(config.from_dict({**base, "dtype": "bf16-mixed"}))
    assert mixed["config"]["dtype"] == "bf16-mixed"
    for name, entry in full["methods"].items():
        for split in ("local_test", "global_test"):
            gap = abs(mixed["methods"][name][split]["mean"] - entry[split]["mean"])
            assert gap < 0.1, (name, split, gap)
