"""FedAvg alone at the `paper` preset's sizes, for tuning the federated phase.

    python scripts/fedavg_tuning.py '{}' '{"fedavg.lr": 1e-3}' ...

Each argument is a JSON object of config overrides (dotted keys) applied to the
`paper` preset; for each, the script federates and prints the best global model's
round, the rounds run, its client-mean accuracy on the global and the local test sets,
and the wall time. The paper-plus preset's FedAvg settings were chosen with it.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from fedmoe.engine import Classifier, evaluate
from fedmoe.experiment import config, presets, protocol
from fedmoe.methods import federate


def main(settings: list[dict[str, object]]) -> None:
    for overrides in settings:
        items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
        cfg = config.from_dict(config.apply_overrides(presets.preset("paper"), items))
        prep = protocol.prepare(cfg)
        start = time.perf_counter()
        opt_in = np.flatnonzero(~prep.partition.opt_out)
        init = protocol.global_init(cfg, prep.net, prep.train.x.device)
        fcfg = protocol.fedavg_config(cfg)
        fed = federate(prep.net, init, prep.train, prep.val, opt_in, fcfg, cfg.seed)
        model = Classifier(prep.net)
        glob = float(evaluate(model, fed.params, prep.global_test).accuracy.mean())
        local = float(evaluate(model, fed.params, prep.test).accuracy.mean())
        print(
            f"{json.dumps(overrides)}: best round {fed.best_round} of {len(fed.history)}, "
            f"global {100 * glob:.2f}%, local {100 * local:.2f}%, "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main([json.loads(a) for a in sys.argv[1:]] or [{}])
