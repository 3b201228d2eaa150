"""The work every contender does: data, model, hyper-parameters (issue 4's workloads).

- ``W1`` local training: 100 clients x 200 real Fashion-MNIST samples, batch 20, Adam,
  one epoch each, all from one global model.
- ``W2`` MoE personalisation: 100 clients x 100 samples, batch 10, 20 epochs of specialist
  + gate training on the probability mixture against a frozen global expert (eval mode).
- ``W3`` scale: one FedAvg round (1 local epoch, batch 20, Adam) at 10% participation of
  a population of synthetic clients of 200 samples each.

Every contender gets the same :class:`Job`, the same data (:func:`load_data`), the same
network (:func:`networks`; the plain ``nn.Module`` via ``Network.module()``) and the same
initial parameters (:func:`global_params`, :func:`specialist_params`).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fedmoe.data import MajoritySpec, Sizes, load_dataset, make_partition
from fedmoe.models import Network, Params, build_network

WORKLOADS = ("W1", "W2", "W3")
ARCH = "fmnist-cnn"
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
LR = 1e-3
SEED = 0
#: W3's clients index a shared pool of this many synthetic images (the size of
#: Fashion-MNIST's train split): the population costs index arrays, not image copies.
SYNTHETIC_POOL = 60_000
W3_PARTICIPATION = 0.1


@dataclass(frozen=True)
class Job:
    """One contender's run of one workload.

    ``clients``: the population; ``participants``: how many of them train (all of them in
    W1/W2 unless scaled down, ``clients // 10`` in W3); each trains ``epochs`` epochs over
    its ``samples_per_client`` examples in batches of ``batch_size``, with ``threads``
    intra-op threads.
    """

    workload: str
    clients: int
    participants: int
    samples_per_client: int
    batch_size: int
    epochs: int
    threads: int
    seed: int = SEED

    @property
    def samples(self) -> int:
        """Training examples processed (forward + backward) in the timed region."""
        return self.participants * self.samples_per_client * self.epochs

    def argv(self) -> list[str]:
        """Command-line arguments that :func:`parse_job` turns back into this job."""
        return [f"--{k.replace('_', '-')}={v}" for k, v in asdict(self).items()]


def parse_job(argv: list[str] | None = None) -> Job:
    """Parse the arguments written by :meth:`Job.argv`."""
    parser = argparse.ArgumentParser(description="Run one benchmark job.")
    parser.add_argument("--workload", choices=WORKLOADS, required=True)
    for name in ("clients", "participants", "samples-per-client", "batch-size", "epochs"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, default=SEED)
    ns = parser.parse_args(argv)
    return Job(
        ns.workload,
        ns.clients,
        ns.participants,
        ns.samples_per_client,
        ns.batch_size,
        ns.epochs,
        ns.threads,
        ns.seed,
    )


def standard_job(workload: str, threads: int, clients: int = 100) -> Job:
    """The issue's definition of ``workload`` (``clients`` sets W3's population)."""
    if workload == "W1":
        return Job("W1", 100, 100, 200, 20, 1, threads)
    if workload == "W2":
        return Job("W2", 100, 100, 100, 10, 20, threads)
    if workload == "W3":
        return Job("W3", clients, max(1, int(clients * W3_PARTICIPATION)), 200, 20, 1, threads)
    raise ValueError(f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")


@dataclass(frozen=True)
class Data:
    """``x``: ``(N, 1, 28, 28)`` float32 normalised images; ``y``: ``(N,)`` int64 labels;
    ``clients``: each client's rows of ``x`` (the whole population, ``job.clients``)."""

    x: torch.Tensor
    y: torch.Tensor
    clients: list[np.ndarray]

    def client(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client ``k``'s examples as dense tensors (a copy, as a per-client loop holds)."""
        rows = torch.from_numpy(self.clients[k])
        return self.x[rows], self.y[rows]


def load_data(job: Job) -> Data:
    """Real Fashion-MNIST (W1, W2) split by the paper's majority-class scheme, or a
    synthetic pool (W3), normalised as ``(x / 255 - mean) / std`` with the train split's
    mean and std. Only the rows some client holds are kept."""
    if job.workload == "W3":
        return _synthetic(job)
    ds = load_dataset("fashion-mnist")
    sizes = Sizes(job.clients, job.samples_per_client, 0, 0)
    partition = make_partition(MajoritySpec(sizes, p=0.8), ds.y_train, ds.y_test, 10, job.seed)
    held = [np.array(c.train, dtype=np.int64) for c in partition.clients]
    rows = np.concatenate(held)
    x = torch.from_numpy(ds.x_train[rows]).to(torch.float32)
    y = torch.from_numpy(ds.y_train[rows].astype(np.int64))
    local = np.split(np.arange(len(rows), dtype=np.int64), np.cumsum([len(h) for h in held])[:-1])
    return Data(_normalise(x, *_pixel_stats(ds.x_train)), y, local)


def _pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of ``x / 255`` over uint8 ``images``, from their histogram."""
    flat = images.reshape(-1)
    chunk = 1 << 20  # bincount widens to int64: count in chunks, not one 8x copy
    counts = sum(
        (np.bincount(flat[i : i + chunk], minlength=256) for i in range(0, flat.size, chunk)),
        np.zeros(256, dtype=np.int64),
    ).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = float((counts * values).sum() / counts.sum())
    var = float((counts * (values - mean) ** 2).sum() / counts.sum())
    return mean, var**0.5


def _normalise(raw: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(raw / 255 - mean) / std`` in place on a float32 tensor of pixel values."""
    return raw.div_(255.0).sub_(mean).div_(std)


def _synthetic(job: Job) -> Data:
    gen = torch.Generator().manual_seed(job.seed)
    raw = torch.randint(0, 256, (SYNTHETIC_POOL, *INPUT_SHAPE), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, NUM_CLASSES, (SYNTHETIC_POOL,), generator=gen)
    x = _normalise(raw.to(torch.float32), *_pixel_stats(raw.numpy()))
    rng = np.random.default_rng(job.seed)
    rows = rng.integers(0, SYNTHETIC_POOL, size=(job.clients, job.samples_per_client))
    return Data(x, y, list(rows.astype(np.int64)))


def participants(job: Job) -> np.ndarray:
    """The clients that train: the first ``participants`` in W1/W2, a seeded sample
    without replacement in W3 (every client holds the same amount of data, so any
    sample is the same work)."""
    if job.workload != "W3":
        return np.arange(job.participants, dtype=np.int64)
    rng = np.random.default_rng([job.seed, 3])
    return np.sort(rng.choice(job.clients, size=job.participants, replace=False))


def networks() -> tuple[Network, Network]:
    """The paper's Fashion-MNIST CNN (dropout 0.5) and its gate (same trunk, one logit)."""
    net = build_network(ARCH, INPUT_SHAPE, NUM_CLASSES)
    gate = build_network(ARCH, INPUT_SHAPE, NUM_CLASSES, gate=True)
    return net, gate


def global_params(net: Network, seed: int = SEED) -> Params:
    """The global model every client starts from (W1, W3) or mixes with (W2):
    a client axis of length 1."""
    return net.init(seed, torch.tensor([0]), "bench/global")


def specialist_params(net: Network, clients: np.ndarray, seed: int = SEED) -> Params:
    """W2's per-client specialists (standing in for fine-tuned models), stacked."""
    return net.init(seed, torch.as_tensor(clients), "bench/specialist")


def row(params: Params, k: int) -> dict[str, torch.Tensor]:
    """Client ``k``'s parameters as an ``nn.Module`` state dict."""
    return {n: p[k].clone() for n, p in params.items()}
