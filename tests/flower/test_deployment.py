"""The Deployment Engine for real: a SuperLink and SuperNodes on 127.0.0.1.

TLS run: 4 SuperNodes, client 3 opted out by its node config; after round 0 client 1's
node is killed for good and client 2's node is killed and started again (a new node for
the same client). The run must complete, the server must have received no parameters
from the opt-out node, client 2 must have rejoined, and results.json must list every
surviving client. Insecure run: 2 SuperNodes, one round; it is started before the TLS
run and runs alongside it (most of a deployment's time is Flower's polling, not CPU).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")

from stack import Proc, Stack, make_certificates, wait_for, watch

from fedmoe.experiment import config
from fedmoe.flower.config import FlowerOptions, run_config, run_config_args

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")


#: Seconds a round waits for replies. Each message starts a fresh ClientApp process
#: (import torch, load the dataset, partition it): seconds on an idle machine, beyond
#: half a minute on a loaded one, so give it minutes. A dead node does not hold a round
#: that long: the SuperLink reports it unavailable once it misses its heartbeats.
ROUND_TIMEOUT = 120.0


def _run_config(clients: int, rounds: int, out: Path, round_timeout: float) -> str:
    cfg = config.from_dict(
        {
            "model": "mlp",
            "data": {"global_test_examples": 500},
            "partition": {"clients": clients, "train": 20, "val": 20, "test": 20},
            "federated": {
                "rounds": rounds,
                "clients_per_round": 3,
                "local_epochs": 1,
                "lr": 1e-3,
            },
            "personalise": {"epochs": 2, "lr": 1e-3, "stopping": {"check_every": 1, "patience": 1}},
            "method": {"moe": {"lr": 1e-3}},
        }
    )
    options = FlowerOptions(
        out=str(out),
        round_timeout=round_timeout,
        personalise_timeout=240.0,
        join_timeout=120.0,
        # Client 1's node is killed for good: how long personalisation waits for it.
        rejoin_timeout=20.0,
        poll_interval=0.2,
    )
    return run_config_args(run_config(cfg, options))


def _results(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


@pytest.fixture(scope="module")
def insecure_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Proc, Path]]:
    """An insecure federation of 2 SuperNodes running one round, started at once."""
    root = tmp_path_factory.mktemp("insecure")
    out = root / "out"
    with Stack(root) as stack:
        stack.superlink()
        for i in range(2):
            stack.supernode(f"node{i}", f"partition-id={i} num-partitions=2")
        yield stack, stack.flwr_run(_run_config(2, 1, out, round_timeout=ROUND_TIMEOUT)), out


def test_tls_deployment_with_opt_out_and_dying_nodes(
    tmp_path: Path, insecure_run: tuple[Stack, Proc, Path]
) -> None:
    out = tmp_path / "out"
    with Stack(tmp_path, tls=make_certificates(tmp_path / "certs")) as stack:
        stack.superlink()
        nodes = {
            i: stack.supernode(
                f"node{i}",
                f"partition-id={i} num-partitions=4" + (" opt-out=true" if i == 3 else ""),
            )
            for i in range(4)
        }
        run = stack.flwr_run(_run_config(4, 2, out, round_timeout=ROUND_TIMEOUT))
        watch(run, "fedmoe: fedavg round 0:", 600, stack.procs)
        stack.kill(nodes[1])
        stack.kill(nodes[2])
        stack.supernode("node2-restarted", "partition-id=2 num-partitions=4")
        wait_for(lambda: run.popen.poll() is not None, 900, "the run to end", stack.procs)
        log = run.log.read_text(errors="replace")
        leftover = stack.close()
    assert leftover == [], f"processes needed SIGKILL: {leftover}"
    res = _results(out)
    # The run completed without the dead node; the restarted one came back.
    assert res["clients"] == [0, 2, 3]
    assert res["flower"]["lost_clients"] == [1]
    assert list(res["flower"]["lost_reasons"]) == ["1"]
    assert res["flower"]["lost_reasons"]["1"].startswith("personalise: ")
    assert "client 2 rejoined" in log
    assert list(res["methods"]) == ["fedavg", "local", "finetune", "moe"]
    for method in res["methods"].values():
        for split in ("local_test", "global_test"):
            assert len(method[split]["per_client"]) == 3
    assert res["partition"]["opt_out"] == [False, False, True]
    # Round 1 completed with what arrived before its timeout. Which replies made it is
    # the machine's timing (client 1's node may answer round 1 before the kill reaches
    # it; on a loaded machine client 0's fresh ClientApp may miss the timeout), so the
    # round must account for each sampled client exactly once, and aggregate only
    # updates that really came from a node in round 1.
    assert list(res["flower"]["rounds"]) == ["fedavg"]
    rounds = res["flower"]["rounds"]["fedavg"]
    assert [r["round"] for r in rounds] == [0, 1]
    second = rounds[1]
    audit = res["flower"]["audit"]
    rejected = [
        r["client"] for r in res["flower"]["rejected"] if (r["phase"], r["round"]) == ("fedavg", 1)
    ]
    assert sorted(second["aggregated"] + second["absent"] + rejected) == sorted(second["sampled"])
    answered = {
        a["client"]
        for a in audit
        if (a["phase"], a["round"], a["message_type"]) == ("fedavg", 1, "train")
        and a["error"] is None
        and a["arrays"] > 0
    }
    assert set(second["aggregated"]) <= answered
    # The opt-out node was never asked to train and sent no parameters at all.
    from_opt_out = [a for a in audit if a["client"] == 3]
    assert {a["message_type"] for a in from_opt_out} == {
        "query.hello",
        "train.personalise",
        "evaluate.personalise",
    }
    assert all(a["arrays"] == 0 and a["array_bytes"] == 0 for a in from_opt_out)
    assert all(3 not in r["sampled"] for r in rounds)
    # Opt-in nodes did send their updates (the audit sees parameters when there are some).
    assert any(a["client"] == 0 and a["message_type"] == "train" and a["arrays"] > 0 for a in audit)
    # One torch thread in every ClientApp process.
    assert set(res["flower"]["client_threads"].values()) == {1}
    assert (out / "results.md").read_text().startswith("# fedmoe results")


def test_insecure_deployment(insecure_run: tuple[Stack, Proc, Path]) -> None:
    stack, run, out = insecure_run
    wait_for(lambda: run.popen.poll() is not None, 900, "the run to end", stack.procs)
    assert stack.close() == []
    res = _results(out)
    assert res["clients"] == [0, 1]
    assert res["methods"]["fedavg"]["federation"]["rounds_run"] == 1
    assert res["flower"]["rounds"]["fedavg"][0]["aggregated"] == [0, 1]
    assert res["flower"]["lost_clients"] == [] and res["flower"]["lost_reasons"] == {}
    assert set(res["flower"]["client_threads"].values()) == {1}
