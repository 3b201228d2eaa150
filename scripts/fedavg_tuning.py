"""FedAvg alone at the `paper` preset's sizes, for tuning the federated phase.

    python scripts/fedavg_tuning.py '{}' '{"federated.lr": 1e-3}' ...

Each argument is a JSON object of config overrides (dotted keys, as ``--set`` takes
them) applied to the `paper` preset; for each, the script runs FedAvg's federated phase
as ``fedmoe run`` does and prints the best global model's round, the rounds run, its
client-mean accuracy on the global and the local test sets, and the wall time. The
paper-plus preset's federated settings were chosen with it.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from fedmoe.experiment import config, presets
from fedmoe.experiment.federate import federate
from fedmoe.experiment.prepare import prepare, run_spec
from fedmoe.federation import Clients
from fedmoe.methods import registry
from fedmoe.methods.base import federated_output


def main(settings: list[dict[str, object]]) -> None:
    fedavg = registry.get("fedavg")
    assert fedavg.federated is not None
    for overrides in settings:
        items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
        cfg = config.from_dict(config.apply_overrides(presets.preset("paper"), items))
        prep = prepare(cfg)
        ds = prep.dataset
        device = prep.train.x.device
        run = run_spec(cfg, prep.net, prep.gate_net, ds.input_shape, ds.num_classes, device)
        opt_out = torch.tensor(np.asarray(prep.partition.opt_out))
        clients = Clients(torch.arange(prep.partition.num_clients), prep.train, prep.val, opt_out)
        start = time.perf_counter()
        options = cfg.options(fedavg.name)
        server, state = federate(run, fedavg.federated, options, clients, "FedAvg rounds")
        fed = federated_output(server.best_params, server.summary(), state)
        glob = float(fedavg.evaluate(run, options, fed, {}, prep.global_test).accuracy.mean())
        local = float(fedavg.evaluate(run, options, fed, {}, prep.test).accuracy.mean())
        print(
            f"{json.dumps(overrides)}: best round {server.best_round} of "
            f"{len(server.history)}, global {100 * glob:.2f}%, local {100 * local:.2f}%, "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main([json.loads(a) for a in sys.argv[1:]] or [{}])
