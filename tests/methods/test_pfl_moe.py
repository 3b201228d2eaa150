"""PFL-MoE: the gate's quarter is held out from fine-tuning, the gate trains on it alone
and equals a plain PyTorch loop of the paper's gate (a linear gate mixing the experts'
outputs before the softmax, Adam), the global expert stays frozen, opt-out clients get
the same, the Flower app runs it as the simulator does, bad options are one-line
errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pfl_toys import (
    assert_one_line_config_error,
    batches,
    blocks,
    client_index,
    client_rows,
    flower_parity,
    load,
    needs_fashion,
    personalise_section,
    toy_clients,
    toy_run,
)

from fedmoe import rng
from fedmoe.data.holdout import held_out_count
from fedmoe.engine import Classifier, ClientData, batch_order, train
from fedmoe.errors import ConfigError
from fedmoe.experiment import config
from fedmoe.federation import Clients
from fedmoe.methods.base import Output, RunSpec, federated_output
from fedmoe.methods.params import broadcast, unprefixed
from fedmoe.methods.pfl_moe import PflMoe, PflMoeOptions, init_gate, split_for_gate
from fedmoe.models import unstack

SIZES = [13, 10, 17]
VAL = 7
OPTIONS = PflMoeOptions(lr=0.05, epochs=8)


def _problem(opt_out: list[bool] | None = None) -> tuple[RunSpec, Clients, dict[str, Output]]:
    """Three clients of unequal sizes, float64, no dropout, and a global model."""
    run = toy_run({"personalise": personalise_section(4, 4, 2, lr=1e-2)})
    # Client i sees classes 2i and 2i + 1, each input near its class's centre: a
    # fine-tuned copy soon beats the global model there, so the gate has work to do.
    gen = torch.Generator().manual_seed(1)
    sizes = [*SIZES, *[VAL] * len(SIZES)]
    y = torch.cat(
        [
            2 * (i % len(SIZES)) + torch.randint(0, 2, (n,), generator=gen)
            for i, n in enumerate(sizes)
        ]
    )
    centres = torch.randn(10, 1, 8, 8, generator=gen, dtype=torch.float64)
    x = centres[y] + 0.5 * torch.randn(len(y), 1, 8, 8, generator=gen, dtype=torch.float64)
    val_rows = blocks([VAL] * len(SIZES), sum(SIZES))
    clients = toy_clients(x, y, blocks(SIZES), val_rows, opt_out)
    glob = run.net.init(5, torch.tensor([0]), "test/global", torch.float64)
    return run, clients, {"fedavg": federated_output(glob, {}, {})}


def test_the_gate_quarter_is_held_out_from_fine_tuning() -> None:
    run, clients, inputs = _problem()
    keys = clients.keys(run.seed, "pfl-moe/split")
    fit, held = split_for_gate(clients.train, keys, 0.25)
    for i, n in enumerate(SIZES):
        tuned, gated = set(client_index(fit, i).tolist()), set(client_index(held, i).tolist())
        assert not tuned & gated
        assert tuned | gated == set(client_index(clients.train, i).tolist())
        assert len(gated) == held_out_count(n, 0.25)
    # A client splits the same alone (a Flower node) as in a cohort.
    one = torch.tensor([2])
    _, alone = split_for_gate(clients.train.select(one), keys[one], 0.25)
    assert torch.equal(client_index(alone, 0), client_index(held, 2))
    # The personal expert is FT on the rest only, early stopped on validation.
    out = PflMoe().personalise(run, OPTIONS, clients, inputs, None)
    start = broadcast(unprefixed(inputs["fedavg"].state, "global"), len(SIZES))
    expected = train(
        Classifier(run.net),
        start,
        fit,
        run.personalise,
        clients.keys(run.seed, "pfl-moe/finetune"),
        clients.val,
    )
    for name, p in expected.params.items():
        assert torch.equal(out.state[f"specialist.{name}"], p)


def _paper_gate(
    run: RunSpec,
    options: PflMoeOptions,
    clients: Clients,
    personal: dict[str, torch.Tensor],
    glob: dict[str, torch.Tensor],
    i: int,
) -> torch.nn.Linear:
    """Client i's gate as the paper trains it, in plain PyTorch: a random quarter of its
    training data, a linear gate on the frozen global model's last hidden layer (or the
    flattened input), softmax(g z_personal + (1 - g) z_global), Adam, early stopped on
    the validation loss (fedmoe's stopping rule)."""
    net = run.net
    specialist, shared = load(net, personal).eval(), load(net, glob).eval()
    rows = client_index(clients.train, i)
    split_key = rng.client_keys(run.seed, clients.ids[i : i + 1], "pfl-moe/split")
    order = batch_order(split_key, 0, torch.tensor([len(rows)]), len(rows))[0]
    held = rows[order[: held_out_count(len(rows), options.gate_fraction)]]
    x, y = clients.train.x[held], clients.train.y[held]
    vx, vy = client_rows(clients.val, i)
    width = run.net.feature_size if options.gate_input == "features" else x[0].numel()
    gate = torch.nn.Linear(width, 1).double()
    init = init_gate(run.seed, clients.ids[i : i + 1], width, torch.float64, torch.device("cpu"))
    gate.load_state_dict({"weight": init["gate.weight"][0], "bias": init["gate.bias"][0]})

    def mixture(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z_personal, z_global = specialist(batch), shared(batch)
            flat = batch.flatten(1)
            hidden = F.relu(shared.fc2(F.relu(shared.fc1(flat))))  # type: ignore[operator]
            h = hidden if options.gate_input == "features" else flat
        g = torch.sigmoid(gate(h))
        return F.log_softmax(g * z_personal + (1 - g) * z_global, -1)

    def val_loss() -> float:
        with torch.no_grad():
            return float(F.nll_loss(mixture(vx), vy))

    opt = torch.optim.Adam(gate.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    es, bs = run.personalise.early_stopping, run.personalise.batch_size
    assert es is not None
    key = rng.client_keys(run.seed, clients.ids[i : i + 1], "pfl-moe/gate")
    best, best_loss, wait = copy.deepcopy(gate.state_dict()), val_loss(), 0
    for epoch in range(options.epochs):
        for idx in batches(key, epoch, len(y), bs):
            opt.zero_grad()
            F.nll_loss(mixture(x[idx]), y[idx]).backward()
            opt.step()
        if (epoch + 1) % es.check_every == 0 or epoch + 1 == options.epochs:
            loss = val_loss()
            if loss < best_loss - es.min_delta:
                best, best_loss, wait = copy.deepcopy(gate.state_dict()), loss, 0
            else:
                wait += 1
                if wait >= es.patience:
                    break
    gate.load_state_dict(best)
    return gate


@pytest.mark.parametrize("gate_input", ["features", "input"])
def test_the_gate_equals_the_papers_gate_trained_on_the_held_out_quarter(gate_input: str) -> None:
    run, clients, inputs = _problem()
    options = PflMoeOptions(gate_input=gate_input, lr=0.05, epochs=8)  # type: ignore[arg-type]
    glob = unprefixed(inputs["fedavg"].state, "global")
    frozen = {n: p.clone() for n, p in glob.items()}
    method = PflMoe()
    out = method.personalise(run, options, clients, inputs, None)
    assert set(out.state) == {f"specialist.{n}" for n in glob} | {"gate.weight", "gate.bias"}
    personal = unprefixed(out.state, "specialist")
    width = out.state["gate.weight"].shape[-1]
    assert width == (64 if gate_input == "features" else 8 * 8)
    start = init_gate(run.seed, clients.ids, width, torch.float64, torch.device("cpu"))
    assert not torch.equal(out.state["gate.weight"], start["gate.weight"])  # it trained
    for i, mine in enumerate(unstack(personal)):
        gate = _paper_gate(run, options, clients, mine, unstack(glob)[0], i)
        torch.testing.assert_close(out.state["gate.weight"][i], gate.weight, rtol=0, atol=1e-9)
        torch.testing.assert_close(out.state["gate.bias"][i], gate.bias, rtol=0, atol=1e-9)
    # The global expert is frozen: unchanged, and not part of the output.
    ev = method.evaluate(run, options, out, inputs, clients.val)
    for name, p in frozen.items():
        assert torch.equal(glob[name], p)
    # The mixture is evaluated as it was trained: its accuracy and gate values.
    assert ev.gate is not None and ev.gate.g.shape == (len(SIZES), VAL)
    assert bool(((ev.gate.g > 0) & (ev.gate.g < 1)).all())
    for i, mine in enumerate(unstack(personal)):
        gate = _paper_gate(run, options, clients, mine, unstack(glob)[0], i)
        specialist, shared = load(run.net, mine).eval(), load(run.net, unstack(glob)[0]).eval()
        vx, vy = client_rows(clients.val, i)
        with torch.no_grad():
            flat = vx.flatten(1)
            hidden = F.relu(shared.fc2(F.relu(shared.fc1(flat))))  # type: ignore[operator]
            g = torch.sigmoid(gate(hidden if gate_input == "features" else flat))[:, 0]
            log_pp, log_pg = specialist(vx), shared(vx)
            mixed = F.log_softmax(g[:, None] * log_pp + (1 - g[:, None]) * log_pg, -1)
        torch.testing.assert_close(ev.gate.g[i], g, rtol=0, atol=1e-9)
        assert float(ev.accuracy[i]) == float((mixed.argmax(-1) == vy).double().mean())
        # The gate matters: the mixture is neither expert.
        assert float((mixed - log_pp).abs().max()) > 1e-3
        assert float((mixed - log_pg).abs().max()) > 1e-3


def test_opt_out_clients_get_the_same_and_the_global_test_set_is_scored() -> None:
    run, clients, inputs = _problem()
    _, with_opt_out, _ = _problem([False, True, False])
    method = PflMoe()
    a = method.personalise(run, OPTIONS, clients, inputs, None)
    b = method.personalise(run, OPTIONS, with_opt_out, inputs, None)
    for name, p in a.state.items():
        assert torch.equal(b.state[name], p)
    # Every example of the run as one shared set (a global test set).
    x, y = clients.val.x, clients.val.y
    shared = ClientData.common(x, y, len(SIZES))
    ev = method.evaluate(run, OPTIONS, a, inputs, shared)
    assert ev.gate is not None and ev.gate.g.shape == (len(SIZES), len(y))
    # The mixture of each client, on its own rows of the shared set, is scored the same.
    own = method.evaluate(run, OPTIONS, a, inputs, clients.val)
    assert own.gate is not None
    for i in range(len(SIZES)):
        rows = client_index(clients.val, i)
        torch.testing.assert_close(ev.gate.g[i, rows], own.gate.g[i], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"lr": 0.0}, r"method\.pfl-moe\.lr must be positive, got 0\.0"),
        ({"weight_decay": -1.0}, r"method\.pfl-moe\.weight_decay must be >= 0"),
        ({"epochs": 0}, r"method\.pfl-moe\.epochs must be at least 1, got 0"),
        ({"gate_fraction": 1.0}, r"method\.pfl-moe\.gate_fraction must be in \(0, 1\)"),
        ({"gate_input": "image"}, r"method\.pfl-moe\.gate_input must be one of 'features'"),
    ],
)
def test_bad_options_are_one_line_errors(section: dict[str, Any], match: str) -> None:
    assert_one_line_config_error(
        {"methods": ["fedavg", "pfl-moe"], "method": {"pfl-moe": section}}, match
    )
    with pytest.raises(ConfigError, match="needs 'fedavg'"):
        config.from_dict({"methods": ["pfl-moe"]})


SMALL: dict[str, Any] = {
    "model": "mlp",
    "dtype": "float64",
    "methods": ["fedavg", "pfl-moe"],
    "partition": {"clients": 4, "train": 20, "val": 20, "test": 20, "opt_out": 0.25},
    "federated": {"rounds": 2, "clients_per_round": 2, "local_epochs": 1, "lr": 1e-3},
    "personalise": {"epochs": 2, "lr": 1e-3, "stopping": {"check_every": 1, "patience": 1}},
    "method": {"pfl-moe": {"epochs": 3}},
}


@needs_fashion
def test_the_flower_app_runs_it_as_the_simulator_and_opt_out_nodes_send_nothing() -> None:
    parity = flower_parity(SMALL)
    embedded = parity.embedded
    for name in parity.cfg.methods:
        assert parity.flower["methods"][name] == embedded["methods"][name], name
    entry = embedded["methods"]["pfl-moe"]
    assert entry["baselines"] == {
        "local_test": ["finetune", "local"],
        "global_test": ["fedavg", "finetune"],
    }
    assert len(entry["gate"]["local_test"]["all"]) == 4
    assert len(parity.opted_out) == 1
    parity.assert_opt_out_nodes_send_nothing()
