"""Text end to end: AG News-format files, the train-split vocabulary, and the paper's
BiLSTM classifier and gate (chosen by ``model = "auto"`` for ``agnews:`` data) through
FedAvg, Local, FT and MoE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from userfiles import write_agnews

from fedmoe.experiment import config
from fedmoe.experiment.prepare import prepare
from fedmoe.experiment.run import run_experiment

TOPICS = {
    1: ["match", "goal", "team", "season", "coach"],
    2: ["market", "shares", "profit", "bank", "trade"],
    3: ["chip", "software", "network", "phone", "data"],
    4: ["vote", "minister", "border", "treaty", "war"],
}


def _rows(n: int, seed: int) -> list[tuple[int, str, str]]:
    gen = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(i % 4) + 1
        words = (
            gen.choice(TOPICS[label], size=6).tolist() + gen.choice(["the", "a", "of"], 2).tolist()
        )
        rows.append((label, " ".join(words[:2]).title(), " ".join(words[2:]) + "."))
    return rows


def test_agnews_files_train_the_papers_bilstm(tmp_path: Path) -> None:
    root = write_agnews(tmp_path / "news", _rows(400, 0), _rows(160, 1))
    cfg = config.from_dict(
        {
            "dataset": f"agnews:{root}",
            "data": {"max_length": 8, "vocab_size": 50},
            "partition": {"clients": 4, "train": 20, "val": 10, "test": 10, "p": 0.8},
            "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-2},
            "personalise": {"epochs": 2, "lr": 1e-2, "stopping": {"check_every": 1, "patience": 1}},
            "method": {"moe": {"lr": 1e-2}},
        }
    )
    prep = prepare(cfg)
    assert prep.net.name == "bilstm" and prep.gate_net.num_outputs == 1
    assert prep.train.x.dtype.is_floating_point is False  # token ids, not standardised
    res = run_experiment(cfg)
    assert list(res["methods"]) == ["fedavg", "local", "finetune", "moe"]
    # Embedding (vocab 50 + padding + unknown) x 100, BiLSTM 64, linear 128 -> 4.
    lstm = 2 * (4 * 64 * 100 + 4 * 64 * 64 + 2 * 4 * 64)
    assert res["dataset"]["model_params"] == 52 * 100 + lstm + 128 * 4 + 4
    for entry in res["methods"].values():
        assert len(entry["local_test"]["per_client"]) == 4
    assert all(0.0 < g < 1.0 for g in res["methods"]["moe"]["gate"]["local_test"]["all"])
