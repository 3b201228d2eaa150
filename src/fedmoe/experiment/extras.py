"""Methods beyond the paper's four, run when the config enables them: ``moe-plus`` (with
its ablation), ``ifca`` and ``moe-ifca`` over clustered global models, and a
centralised-training upper bound."""

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
from fedmoe.methods.fedavg import FedAvgResult, best_models, evaluate_each
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
class Splits:
    """Both experts' cached outputs on the train, validation, local-test and global-test
    splits, in that order."""

    train: Experts
    val: Experts
    test: Experts
    global_test: Experts

    def _each(self) -> tuple[Experts, ...]:
        return (self.train, self.val, self.test, self.global_test)

    def with_images(self, prep: Prepared) -> Splits:
        """The same outputs with the raw inputs as the gate's inputs."""
        data = (prep.train, prep.val, prep.test, prep.global_test)
        pairs = zip(self._each(), data, strict=True)
        return Splits(*(replace(ex, gate_in=image_inputs(d)) for ex, d in pairs))

    def without_clusters(self) -> Splits:
        """The same outputs without the cluster models'."""
        return Splits(*(replace(ex, log_pc=None) for ex in self._each()))


def plus_gate_net(
    cfg: ExperimentConfig,
    net: Network,
    gate_net: Network,
    input_shape: tuple[int, ...],
    num_classes: int,
    config: GateConfig,
    clusters: int = 0,
) -> Network:
    """The gate network of ``moe-plus`` (``clusters`` > 0: of ``moe-ifca``): an MLP over
    ``net``'s features, or the paper's gate architecture (``gate_net``) over the image."""
    if config.inputs == "image":
        shape, arch = input_shape, gate_net.name.removesuffix("-gate")
    else:
        shape, arch = (net.feature_size,), "mlp"
    return build_network(
        arch, shape, num_classes, gate=True, dropout=cfg.dropout, gate_outputs=1 + clusters
    )


def gate_experts(
    net: Network,
    specialists: Params,
    global_params: Params,
    data: ClientData,
    config: GateConfig,
    clusters: Params | None = None,
) -> Experts:
    """The frozen experts' outputs on ``data`` (with the ``clusters`` models' too, if
    given) with the gate inputs ``config`` asks for."""
    experts = cache_experts(net, specialists, global_params, data, clusters)
    return replace(experts, gate_in=image_inputs(data)) if config.inputs == "image" else experts


@dataclass(frozen=True)
class _Gating:
    """What every gate of a run shares: the config and prepared data, the gate's
    training settings, the checkpoint store and the progress bars."""

    cfg: ExperimentConfig
    prep: Prepared
    train_cfg: TrainConfig
    store: Checkpoints
    bar: Bar

    @property
    def clients(self) -> torch.Tensor:
        return torch.arange(self.prep.partition.num_clients)

    def fit(self, stage: str, label: str, config: GateConfig, splits: Splits) -> dict[str, Any]:
        """Fit (or restore from ``store[stage][label]``) the gate ``config`` over
        ``splits`` and evaluate it: the results.json entry (options, accuracies, gate
        statistics, temperatures, epochs)."""
        prep = self.prep
        prior = log_prior_ratio(prep.train, prep.dataset.num_classes)
        gate_net = plus_gate_net(
            self.cfg,
            prep.net,
            prep.gate_net,
            prep.dataset.input_shape,
            prep.dataset.num_classes,
            config,
            splits.test.num_clusters,
        )
        saved = self.store.load(stage) or {}
        if label in saved:
            fit = restored_gate(saved[label], config, gate_net, prep.dataset.num_classes, prior)
        else:
            fit = fit_gate(
                prep.net,
                gate_net,
                splits.train,
                splits.val,
                prior,
                config,
                self.train_cfg,
                self.clients,
                self.cfg.seed,
                self.bar(f"{stage} ({label}) epochs", self.train_cfg.epochs),
            )
            saved[label] = gate_state(fit)
            self.store.save(stage, saved)
        majority = majority_mask(prep.partition, prep.dataset.num_classes, prep.train.x.device)
        entry: dict[str, Any] = {"options": asdict(config), "gate": {}}
        for split in ("test", "global_test"):
            ex: Experts = getattr(splits, split)
            ev, g = evaluate_gate(fit, ex)
            name = "local_test" if split == "test" else split
            entry[name] = summarise(ev.accuracy)
            entry["gate"][name] = gate_summary(g, ex.y, ex.valid(), majority)
        entry["temperature"] = {
            "specialist": summarise(fit.t_specialist),
            "global": summarise(fit.t_global),
        }
        entry["epochs"] = fit.epochs.tolist()
        return entry


def cache_splits(
    prep: Prepared, global_params: Params, specialists: Params, clusters: Params | None = None
) -> Splits:
    """The frozen experts' outputs on every split, computed once for every gate."""
    data = (prep.train, prep.val, prep.test, prep.global_test)
    return Splits(*(cache_experts(prep.net, specialists, global_params, d, clusters) for d in data))


def run_moe_plus(
    cfg: ExperimentConfig,
    prep: Prepared,
    splits: Splits,
    train_cfg: TrainConfig,
    store: Checkpoints,
    bar: Bar,
) -> dict[str, Any]:
    """Fit ``moe-plus`` (and, with ``moe_plus.ablation``, its variants) for every client
    over the specialist and the global expert of ``splits`` and evaluate them. Returns
    ``{"method", "gate", "epochs", "ablation"}`` entries for results.json."""
    main = gate_config(cfg)
    variants = main.ablations() if cfg.moe_plus.ablation else {main.label: main}
    features = splits.without_clusters()
    cached = {"features": features}
    if any(c.inputs == "image" for c in variants.values()):
        cached["image"] = features.with_images(prep)
    gating = _Gating(cfg, prep, train_cfg, store, bar)
    out: dict[str, Any] = {"ablation": {}}
    for label, config in variants.items():
        entry = gating.fit("moe-plus", label, config, cached[config.inputs])
        epochs = entry.pop("epochs")
        out["ablation"][label] = entry
        if config == main:
            out["method"] = {s: entry[s] for s in ("local_test", "global_test")}
            out["gate"] = entry["gate"]
            out["epochs"] = epochs
    if not cfg.moe_plus.ablation:
        del out["ablation"]
    return out


def run_moe_ifca(
    cfg: ExperimentConfig,
    prep: Prepared,
    splits: Splits,
    clustered: FedAvgResult,
    train_cfg: TrainConfig,
    store: Checkpoints,
    bar: Bar,
) -> dict[str, Any]:
    """Evaluate ``ifca`` (each client's cluster model with the lowest validation loss)
    and fit ``moe-ifca`` (the ``moe-plus`` gate over the specialist, the global model
    and the cluster models of ``splits``). Returns ``{"ifca", "method", "gate",
    "epochs", "clustered"}`` entries for results.json."""
    clusters = clustered.params
    objective = Classifier(prep.net)
    chosen = best_models(objective, clusters, prep.val)
    ifca = {}
    for split, data in (("local_test", prep.test), ("global_test", prep.global_test)):
        acc = evaluate_each(objective, clusters, data).accuracy
        ifca[split] = summarise(acc.gather(0, chosen.unsqueeze(0))[0])
    config = gate_config(cfg)
    if config.inputs == "image":
        splits = splits.with_images(prep)
    gating = _Gating(cfg, prep, train_cfg, store, bar)
    entry = gating.fit("moe-ifca", config.label, config, splits)
    counts = torch.bincount(chosen.cpu(), minlength=cfg.clustered.models)
    return {
        "ifca": ifca,
        "method": {s: entry[s] for s in ("local_test", "global_test")},
        "gate": entry["gate"],
        "epochs": entry["epochs"],
        "clustered": {
            "models": cfg.clustered.models,
            "best_round": clustered.best_round,
            "rounds_run": len(clustered.history),
            "clients_per_model": counts.tolist(),
            "model_of_client": chosen.tolist(),
        },
    }


def gate_state(fit: FittedGate) -> dict[str, Any]:
    """What :func:`restored_gate` needs to rebuild ``fit``: its tensors."""
    return {
        "params": fit.params,
        "t_specialist": fit.t_specialist,
        "t_global": fit.t_global,
        "t_clusters": fit.t_clusters,
        "epochs": fit.epochs,
        "best_loss": fit.best_loss,
    }


def restored_gate(
    state: dict[str, Any],
    config: GateConfig,
    gate_net: Network,
    num_classes: int,
    prior: torch.Tensor,
) -> FittedGate:
    """The fitted gate :func:`gate_state` saved (``prior``: the clients'
    :func:`~fedmoe.methods.gating.log_prior_ratio`)."""
    t_clusters = state.get("t_clusters")
    clusters = 0 if t_clusters is None else int(t_clusters.shape[1])
    return FittedGate(
        config,
        GateMixture(gate_net, num_classes, clusters),
        state["params"],
        state["t_specialist"],
        state["t_global"],
        prior,
        state["epochs"],
        state["best_loss"],
        t_clusters,
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
