"""Methods beyond the paper's four, run when the config enables them: ``moe-plus`` (with
its ablation) and a centralised-training upper bound."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedmoe import rng
from fedmoe.engine import (
    Classifier,
    ClientData,
    EarlyStopping,
    OptimizerConfig,
    TrainConfig,
    evaluate,
    train,
)
from fedmoe.engine.train import ProgressFn
from fedmoe.experiment.checkpoint import Checkpoints
from fedmoe.experiment.config import ExperimentConfig
from fedmoe.experiment.summary import gate_summary, majority_mask, summarise
from fedmoe.methods.gating import (
    Experts,
    FittedGate,
    GateConfig,
    GateMixture,
    cache_experts,
    evaluate_gate,
    fit_gate,
    image_inputs,
    log_prior_ratio,
)
from fedmoe.models import Network, Params, build_network

if TYPE_CHECKING:
    from fedmoe.experiment.protocol import Prepared

Bar = Callable[[str, int], ProgressFn]


def gate_config(cfg: ExperimentConfig) -> GateConfig:
    m = cfg.moe_plus
    return GateConfig(m.inputs, m.data, m.calibrate, m.prior, m.adjust)


@dataclass(frozen=True)
class _Splits:
    """Both experts' cached outputs on the train, validation, local-test and global-test
    splits, in that order."""

    train: Experts
    val: Experts
    test: Experts
    global_test: Experts

    def with_images(self, prep: Prepared) -> _Splits:
        """The same outputs with the raw inputs as the gate's inputs."""
        data = (prep.train, prep.val, prep.test, prep.global_test)
        ours = (self.train, self.val, self.test, self.global_test)
        return _Splits(
            *(replace(ex, gate_in=image_inputs(d)) for ex, d in zip(ours, data, strict=True))
        )


def _gate_net(cfg: ExperimentConfig, prep: Prepared, config: GateConfig) -> Network:
    if config.inputs == "image":
        return prep.gate_net
    shape = (prep.net.feature_size,)
    return build_network("mlp", shape, prep.dataset.num_classes, gate=True, dropout=cfg.dropout)


def run_moe_plus(
    cfg: ExperimentConfig,
    prep: Prepared,
    global_params: Params,
    specialists: Params,
    train_cfg: TrainConfig,
    store: Checkpoints,
    bar: Bar,
) -> dict[str, Any]:
    """Fit ``moe-plus`` (and, with ``moe_plus.ablation``, its variants) for every client
    and evaluate them. Returns ``{"method", "gate", "epochs", "ablation"}`` entries for
    results.json."""
    main = gate_config(cfg)
    variants = main.ablations() if cfg.moe_plus.ablation else {main.label: main}
    data = (prep.train, prep.val, prep.test, prep.global_test)
    features = _Splits(*(cache_experts(prep.net, specialists, global_params, d) for d in data))
    cached = {"features": features}
    if any(c.inputs == "image" for c in variants.values()):
        cached["image"] = features.with_images(prep)
    prior = log_prior_ratio(prep.train, prep.dataset.num_classes)
    clients = torch.arange(prep.partition.num_clients)
    majority = majority_mask(prep.partition, prep.dataset.num_classes, prep.train.x.device)
    saved = store.load("moe-plus") or {}
    out: dict[str, Any] = {"ablation": {}}
    for label, config in variants.items():
        splits = cached[config.inputs]
        gate_net = _gate_net(cfg, prep, config)
        if label in saved:
            fit = _restore(saved[label], config, gate_net, prep, prior)
        else:
            fit = fit_gate(
                prep.net,
                gate_net,
                splits.train,
                splits.val,
                prior,
                config,
                train_cfg,
                clients,
                cfg.seed,
                bar(f"MoE+ ({label}) epochs", train_cfg.epochs),
            )
            saved[label] = _state(fit)
            store.save("moe-plus", saved)
        entry: dict[str, Any] = {"options": asdict(config)}
        gates: dict[str, Any] = {}
        for split in ("test", "global_test"):
            ex: Experts = getattr(splits, split)
            ev, g = evaluate_gate(fit, ex)
            name = "local_test" if split == "test" else split
            entry[name] = summarise(ev.accuracy)
            gates[name] = gate_summary(g, ex.y, ex.valid(), majority)
        entry["gate"] = gates
        entry["temperature"] = {
            "specialist": summarise(fit.t_specialist),
            "global": summarise(fit.t_global),
        }
        out["ablation"][label] = entry
        if config == main:
            out["method"] = {s: entry[s] for s in ("local_test", "global_test")}
            out["gate"] = gates
            out["epochs"] = fit.epochs.tolist()
    if not cfg.moe_plus.ablation:
        del out["ablation"]
    return out


def _state(fit: FittedGate) -> dict[str, Any]:
    return {
        "params": fit.params,
        "t_specialist": fit.t_specialist,
        "t_global": fit.t_global,
        "epochs": fit.epochs,
        "best_loss": fit.best_loss,
    }


def _restore(
    state: dict[str, Any],
    config: GateConfig,
    gate_net: Network,
    prep: Prepared,
    prior: torch.Tensor,
) -> FittedGate:
    return FittedGate(
        config,
        GateMixture(gate_net, prep.dataset.num_classes),
        state["params"],
        state["t_specialist"],
        state["t_global"],
        prior,
        state["epochs"],
        state["best_loss"],
    )


def _pooled(data: ClientData, clients: np.ndarray) -> ClientData:
    """The examples of ``clients`` as one client's data."""
    rows = [data.index[k, : int(data.n[k])].cpu().numpy() for k in clients]
    return ClientData.from_indices(data.x, data.y, [np.concatenate(rows)])


def run_centralised(cfg: ExperimentConfig, prep: Prepared, store: Checkpoints, bar: Bar) -> Any:
    """Train one model on every client's pooled training data (the upper bound a
    federation could reach with all data in one place) and evaluate it like FedAvg."""
    c = cfg.centralised
    saved = store.load("centralised")
    if saved is None:
        everyone = np.arange(prep.partition.num_clients)
        x = prep.train.x
        init = prep.net.init(cfg.seed, torch.tensor([0]), "centralised/init", x.dtype, x.device)
        tcfg = TrainConfig(
            c.epochs,
            c.batch_size,
            OptimizerConfig("adam", lr=c.lr),
            EarlyStopping(1, c.patience, 0.0),
            cfg.max_cohort,
        )
        keys = rng.client_keys(cfg.seed, torch.tensor([0]), "centralised/train").to(x.device)
        res = train(
            Classifier(prep.net),
            init,
            _pooled(prep.train, everyone),
            tcfg,
            keys,
            _pooled(prep.val, everyone),
            bar("Centralised epochs", c.epochs),
        )
        saved = {"params": res.params, "epochs": res.epochs}
        store.save("centralised", saved)
    objective = Classifier(prep.net)
    return {
        "local_test": summarise(evaluate(objective, saved["params"], prep.test).accuracy),
        "global_test": summarise(evaluate(objective, saved["params"], prep.global_test).accuracy),
        "epochs": int(saved["epochs"][0]),
    }
