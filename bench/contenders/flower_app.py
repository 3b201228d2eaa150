"""The Flower app of the Flower contender: a ServerApp that sends one round of work and
a ClientApp that does one client's training (importable, so Ray workers can load it).

The ServerApp runs in the driver process; :func:`configure` hands it the job, and it
records its timings in :data:`TIMINGS`. The ClientApp reads the data the driver wrote
(:func:`write_data`) from the directory named in each message, once per worker process,
trains with one torch thread, and replies with its trained model (W1, W3) or keeps its
personalised mixture in its own state and replies with metrics only (W2).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from bench.contenders.reference import average, train_classifier, train_mixture
from bench.workloads import Data, Job, global_params, networks, row, specialist_params

TIMINGS: dict[str, float] = {}
_JOB: dict[str, object] = {}

client_app = ClientApp()
server_app = ServerApp()


def configure(job: Job, data_dir: Path) -> None:
    """Tell the ServerApp what to run (before ``run_simulation``)."""
    _JOB.update(job=job, data_dir=str(data_dir))
    TIMINGS.clear()


def write_data(data: Data, directory: Path) -> None:
    """Store the workload's data where every Ray worker can memory-map it."""
    np.save(directory / "x.npy", data.x.numpy())
    np.save(directory / "y.npy", data.y.numpy())
    np.save(directory / "index.npy", np.stack(data.clients))


@functools.cache
def _client_data(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = Path(directory)
    return (
        np.load(d / "x.npy", mmap_mode="r"),
        np.load(d / "y.npy", mmap_mode="r"),
        np.load(d / "index.npy", mmap_mode="r"),
    )


def _int(record: Mapping[str, object], key: str) -> int:
    value = record[key]
    if not isinstance(value, int):
        raise TypeError(f"{key!r} should be an int, got {value!r}")
    return value


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One client's local training, as the per-client loop does it."""
    torch.set_num_threads(1)
    cfg = msg.content.config_records["config"]
    x_all, y_all, index = _client_data(str(cfg["data_dir"]))
    partition = _int(context.node_config, "partition-id")
    rows = np.asarray(index[partition])[: _int(cfg, "samples")]
    x = torch.from_numpy(np.ascontiguousarray(x_all[rows]))
    y = torch.from_numpy(np.asarray(y_all[rows], dtype=np.int64))
    batch, epochs = _int(cfg, "batch_size"), _int(cfg, "epochs")
    net, gate_net = networks()
    global_model = net.module()
    global_model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    metrics = MetricRecord({"num-examples": len(y)})
    if cfg["workload"] == "W2":
        specialist = net.module()
        init = specialist_params(net, np.array([partition]), _int(cfg, "seed"))
        specialist.load_state_dict(row(init, 0))
        mixture = train_mixture(specialist, gate_net.module(), global_model, x, y, batch, epochs)
        trained = {n: p.detach() for n, p in mixture.named_parameters() if p.requires_grad}
        context.state["personal"] = ArrayRecord(trained)
        content = RecordDict({"metrics": metrics})
    else:
        model = train_classifier(global_model, x, y, batch, epochs)
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def _messages(
    nodes: list[int], arrays: ArrayRecord, job: Job, samples: int, epochs: int
) -> list[Message]:
    cfg = ConfigRecord(
        {
            "workload": job.workload,
            "data_dir": str(_JOB["data_dir"]),
            "samples": samples,
            "batch_size": job.batch_size,
            "epochs": epochs,
            "seed": job.seed,
        }
    )
    return [
        Message(RecordDict({"arrays": arrays, "config": cfg}), dst_node_id=n, message_type="train")
        for n in nodes
    ]


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """A warm-up round (one batch on as many nodes as there are workers), then the timed
    round: W1/W2 on the first ``participants`` nodes, W3 on a seeded 10% sample, with
    FedAvg aggregation of the replies in W3."""
    job = _JOB["job"]
    assert isinstance(job, Job)
    while len(nodes := sorted(grid.get_node_ids())) < job.clients:
        time.sleep(0.05)
    net, _ = networks()
    arrays = ArrayRecord({n: t[0] for n, t in global_params(net, job.seed).items()})
    warm = nodes[: min(job.threads, job.participants)]
    _check(grid.send_and_receive(_messages(warm, arrays, job, job.batch_size, 1)))
    if job.workload == "W3":
        rng = np.random.default_rng([job.seed, 3])
        picks = rng.choice(len(nodes), size=job.participants, replace=False)
        chosen = sorted(nodes[int(i)] for i in picks)
    else:
        chosen = nodes[: job.participants]
    TIMINGS["round_start"] = time.perf_counter()
    replies = _check(
        grid.send_and_receive(_messages(chosen, arrays, job, job.samples_per_client, job.epochs))
    )
    if job.workload == "W3":
        states = [r.content.array_records["arrays"].to_torch_state_dict() for r in replies]
        weights = [
            float(_int(r.content.metric_records["metrics"], "num-examples")) for r in replies
        ]
        ArrayRecord(torch_state_dict=average(states, weights))
    TIMINGS["round_end"] = time.perf_counter()


def _check(replies: Iterable[Message]) -> list[Message]:
    out = list(replies)
    for r in out:
        if r.has_error():
            raise RuntimeError(f"a ClientApp failed: {r.error.reason}")
    return out
