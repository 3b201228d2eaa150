"""FedAvg alone at the `paper` preset's sizes, for tuning the federated phase.

    python scripts/fedavg_tuning.py [--preset NAME] [--out FILE] '{}' '{"federated.lr": 1e-3}' ...

Each argument is a JSON object of config overrides (dotted keys, as ``--set`` takes
them) applied to the preset (default `paper`); for each, the script runs FedAvg's
federated phase as ``fedmoe run`` does and prints the best global model's round, the
rounds run, its validation loss and accuracy (the opt-in clients' validation sets,
weighted by their sizes: what a choice is made on), its client-mean accuracy on the
global and the local test sets (reported, never chosen on) and the wall time; with
``--out`` it also appends each result as a JSON line. The paper-plus and pfl-baselines
presets' federated settings were chosen with it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedmoe.experiment import config, presets
from fedmoe.experiment.federate import federate
from fedmoe.experiment.prepare import prepare, run_spec
from fedmoe.federation import Clients
from fedmoe.methods import registry
from fedmoe.methods.base import federated_output


def main(settings: list[dict[str, object]], preset: str, out: Path | None) -> None:
    fedavg = registry.get("fedavg")
    assert fedavg.federated is not None
    for overrides in settings:
        items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
        cfg = config.from_dict(config.apply_overrides(presets.preset(preset), items))
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
        best = next(r for r in server.history if r.round == server.best_round)
        row = {
            "preset": preset,
            "overrides": overrides,
            "best_round": server.best_round,
            "rounds_run": len(server.history),
            "val_loss": best.val_loss,
            "val_accuracy": best.val_accuracy,
            "global_test": glob,
            "local_test": local,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(
            f"{json.dumps(overrides)}: best round {server.best_round} of "
            f"{len(server.history)}, validation loss {best.val_loss:.4f} accuracy "
            f"{100 * (best.val_accuracy or 0):.2f}%, global {100 * glob:.2f}%, "
            f"local {100 * local:.2f}%, {row['seconds']:.0f} s",
            flush=True,
        )
        if out is not None:
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--out", type=Path)
    parser.add_argument("settings", nargs="*", type=json.loads)
    args = parser.parse_args()
    main(args.settings or [{}], args.preset, args.out)
