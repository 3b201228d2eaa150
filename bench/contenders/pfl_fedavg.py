"""Contender: Apple's pfl (0.6) simulating the workload with its PyTorch model.

W1 and W3: ``FederatedAveraging`` for one central iteration whose cohort is every
participant (1 local epoch, batch 20, a fresh local Adam per user; the central optimiser
applies the averaged update). pfl's per-user evaluation before and after local training
is switched off (it would add two forward passes per user). pfl iterates each user's
data in a fixed order: it does not reshuffle per epoch.

W2: pfl has no mixture-of-experts personalisation, but its algorithm API expresses it in
a few lines (:class:`MixturePersonalisation`): per user, load the user's specialist and
a fresh gate into a mixture module whose global expert is frozen, train with pfl's local
SGD bridge, keep the result as the user's model and send nothing to the server.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Any

os.environ.setdefault("PFL_PYTORCH_DEVICE", "cpu")

import torch
import torch.nn.functional as F
from pfl.aggregate.simulate import SimulatedBackend
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.algorithm.base import FederatedNNAlgorithm
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import MinimizeReuseUserSampler
from pfl.hyperparam import NNTrainHyperParams
from pfl.internal.bridge import FrameworkBridgeFactory as bridges
from pfl.metrics import Metrics, Weighted
from pfl.model.pytorch import PyTorchModel
from torch import nn

from bench.contenders.reference import MixtureModule, fit
from bench.harness import Measurement, contender_main
from bench.workloads import (
    LR,
    Job,
    global_params,
    load_data,
    networks,
    participants,
    row,
    specialist_params,
)


class PflModule(nn.Module):
    """A model with the ``loss`` and ``metrics`` methods pfl's ``PyTorchModel`` needs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.train()
        return F.nll_loss(self(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Weighted]:
        self.eval()
        return {"loss": Weighted(float(F.nll_loss(self(x), y, reduction="sum")), len(y))}


def _no_local_eval(central_context: Any) -> Any:
    """Skip pfl's evaluation of every user before and after local training."""
    return dataclasses.replace(central_context, do_evaluation=False)


class FedAvgWithoutLocalEval(FederatedAveraging):
    """FedAvg, training only."""

    def simulate_one_user(self, model: Any, user_dataset: Any, central_context: Any) -> Any:
        return super().simulate_one_user(model, user_dataset, _no_local_eval(central_context))


class MixturePersonalisation(FederatedNNAlgorithm):
    """W2 in pfl: train each user's mixture locally; nothing is aggregated."""

    def __init__(self, specialists: dict[str, dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.specialists = specialists
        self.personalised: dict[str, dict[str, torch.Tensor]] = {}

    def simulate_one_user(self, model: Any, user_dataset: Any, central_context: Any) -> Any:
        return super().simulate_one_user(model, user_dataset, _no_local_eval(central_context))

    def train_one_user(
        self, initial_model_state: Any, model: Any, user_dataset: Any, central_context: Any
    ) -> tuple[None, Metrics]:
        mixture: MixtureModule = model.pytorch_model.model
        mixture.specialist.load_state_dict(self.specialists[user_dataset.user_id])
        for layer in mixture.gate.modules():
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset()  # a fresh gate
        bridges.sgd_bridge().do_sgd(model, user_dataset, central_context.model_train_params)
        self.personalised[user_dataset.user_id] = {
            n: p.detach().clone() for n, p in mixture.named_parameters() if p.requires_grad
        }
        return None, Metrics()

    def process_aggregated_statistics(self, *args: Any) -> Any:
        raise AssertionError("personalisation sends no statistics")

    def process_aggregated_statistics_from_all_contexts(
        self, stats_context_pairs: Any, aggregate_metrics: Metrics, model: Any
    ) -> tuple[Any, Metrics]:
        return model, Metrics()


def run(job: Job) -> Measurement:
    data = load_data(job)
    net, gate_net = networks()
    global_model = net.module()
    global_model.load_state_dict(row(global_params(net, job.seed), 0))
    clients = participants(job)
    train_params = NNTrainHyperParams(
        local_batch_size=job.batch_size, local_num_epochs=job.epochs, local_learning_rate=LR
    )
    algorithm_params = NNAlgorithmParams(
        central_num_iterations=1,
        evaluation_frequency=1,
        train_cohort_size=len(clients),
        val_cohort_size=0,
    )
    algorithm: FederatedNNAlgorithm
    if job.workload == "W2":
        init = specialist_params(net, clients, job.seed)
        specialists = {str(k): row(init, i) for i, k in enumerate(clients)}
        module = PflModule(MixtureModule(net.module(), gate_net.module(), global_model))
        algorithm = MixturePersonalisation(specialists)
    else:
        module = PflModule(global_model)
        algorithm = FedAvgWithoutLocalEval()
    model = PyTorchModel(
        module,
        local_optimizer_create=torch.optim.Adam,
        central_optimizer=torch.optim.SGD(
            [p for p in module.parameters() if p.requires_grad], lr=1.0
        ),
    )
    federated = FederatedDataset(
        lambda uid: Dataset(data.client(int(uid)), user_id=uid),
        MinimizeReuseUserSampler([str(k) for k in clients]),
    )
    backend = SimulatedBackend(training_data=federated, val_data=federated)
    x0, y0 = data.client(int(clients[0]))
    b = job.batch_size
    fit(copy.deepcopy(module), x0[:b], y0[:b], b, 1)  # warm-up: one step
    start = time.perf_counter()
    algorithm.run(algorithm_params, backend, model, train_params)
    return Measurement(time.perf_counter() - start)


if __name__ == "__main__":
    contender_main("pfl", run)
