"""A method defined entirely here, registered, and run through ``fedmoe run`` and the
Flower app with no other file changed: a fixed mix of FT and the global model."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from pfl_toys import flower_parity, needs_fashion

from fedmoe.cli import main
from fedmoe.engine import ClientData
from fedmoe.engine.evaluate import batches
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.federation import Clients
from fedmoe.methods import Evaluated, GateValues, Method, Output, RunSpec, register, registry
from fedmoe.methods.base import global_model
from fedmoe.methods.personal import personal_model

pytestmark = needs_fashion


@dataclass(frozen=True)
class FixedMixOptions:
    """``weight``: the specialist's share of the mixture, in [0, 1]."""

    weight: float = 0.5

    def validate(self, where: str) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"{where}.weight must be in [0, 1], got {self.weight}")


class FixedMix(Method):
    name = "fixed-mix"
    label = "Fixed mix"
    description = "FT's model and the global model mixed with a fixed weight"
    options = FixedMixOptions
    needs = ("fedavg", "finetune")
    baselines: ClassVar[dict[str, tuple[str, ...]] | None] = {
        "local_test": ("finetune",),
        "global_test": ("fedavg",),
    }

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        return Output({})  # nothing to train: the experts are the inputs' models

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        specialists = personal_model(inputs["finetune"])
        shared = global_model(inputs["fedavg"])
        w = options.weight
        correct = torch.zeros(data.num_clients, dtype=torch.float64)
        gates, labels, masks = [], [], []
        for x, y, valid in batches(data):
            log_ps = run.net.forward(specialists, x.expand(data.num_clients, *x.shape[1:]))
            # One model for every client: its inputs form one batch.
            log_pg = run.net.forward(shared, x.reshape(1, -1, *x.shape[2:])).reshape(
                *x.shape[:2], -1
            )
            mix = torch.logaddexp(
                log_ps + math.log(w or 1e-300), log_pg + math.log(1 - w or 1e-300)
            )
            correct += ((mix.argmax(-1) == y) & valid).sum(1).to(torch.float64).cpu()
            gates.append(torch.full(valid.shape, w, dtype=torch.float64))
            labels.append(y)
            masks.append(valid)
        accuracy = correct / data.n.cpu().to(torch.float64)
        gate = GateValues(torch.cat(gates, 1), torch.cat(labels, 1), torch.cat(masks, 1))
        return Evaluated(accuracy, gate)


SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["fedavg", "finetune", "fixed-mix"],
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 20, "opt_out": 0.25},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-3},
    "personalise": {"epochs": 2, "lr": 1e-3, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"fixed-mix": {"weight": 0.7}},
}


@pytest.fixture(autouse=True)
def fixed_mix() -> Iterator[None]:
    register(FixedMix)
    yield
    registry.unregister(FixedMix.name)


def _check(results: dict[str, Any]) -> None:
    entry = results["methods"]["fixed-mix"]
    assert entry["label"] == "Fixed mix"
    assert entry["baselines"] == {"local_test": ["finetune"], "global_test": ["fedavg"]}
    assert entry["gate"]["local_test"]["all"] == [0.7] * 4
    # The mix is neither expert: on the global test set it is between them or better.
    ft, glob = (results["methods"][m]["global_test"]["mean"] for m in ("finetune", "fedavg"))
    assert entry["global_test"]["mean"] >= min(ft, glob) - 0.05


def test_a_method_defined_in_a_test_runs_through_fedmoe_run(tmp_path: Path) -> None:
    cfg_file = tmp_path / "mix.toml"
    cfg_file.write_text(config.dumps_toml(SMALL))
    main(["run", "--config", str(cfg_file), "--out", str(tmp_path / "out"), "--quiet"])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    _check(results)
    assert "| Fixed mix |" in (tmp_path / "out" / "results.md").read_text()
    # The run draws its own plots from the entries, the new mixture's gate included.
    plots = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    assert plots == ["accuracy.png", "clients.png", "gate.png"]
    with pytest.raises(SystemExit) as exc:
        main(["run", "--config", str(cfg_file), "--set", "method.fixed-mix.weight=2", "--quiet"])
    assert exc.value.code == 1


def test_a_method_defined_in_a_test_runs_on_the_flower_app_as_in_the_simulator() -> None:
    parity = flower_parity(SMALL)
    flower, embedded = parity.flower, parity.embedded
    _check(flower)
    for name in parity.cfg.methods:
        for key in ("local_test", "global_test", "gate", "epochs"):
            assert flower["methods"][name].get(key) == embedded["methods"][name].get(key), name
