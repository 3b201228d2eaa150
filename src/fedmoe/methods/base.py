"""What a method is: a value that declares its options, its federated phase (if any),
its personalisation (if any) and how it predicts.

A method is a subclass of :class:`Method` in one file under ``methods/``, registered
with :func:`fedmoe.methods.registry.register`. The simulator's driver
(:mod:`fedmoe.experiment.run`) and the Flower app (:mod:`fedmoe.flower`) run every
method through these hooks alone: the simulator calls them with a cohort of K clients,
a Flower node with K = 1, so there is one implementation of each method.

- ``federated``: the method's federated phase (:class:`Federated`): server
  initialisation, the client update on a cohort, the aggregation and the validation score
  for early stopping. :mod:`fedmoe.federation` runs the rounds.
- :meth:`Method.personalise`: what each client builds from the outputs of the methods
  it ``needs`` (and of its own federated phase): the trained parameters and anything
  else it must keep, as a flat :class:`State`.
- :meth:`Method.evaluate`: each client's accuracy on a split and, for a mixture, the
  gate's weight on the specialist per example, so the gate analysis is generic.

Outputs are flat dicts of tensors, so they checkpoint (``torch.save``) and travel in
Flower records unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from fedmoe.engine import ClientData, Evaluation, TrainConfig
from fedmoe.engine.train import ProgressFn
from fedmoe.federation import Clients, FederationConfig, State, Update, weighted_mean
from fedmoe.methods.params import prefixed, unprefixed
from fedmoe.models import Model, Params

#: ``progress(description, total)`` returns the callback a phase reports to.
ProgressFactory = Callable[[str, int], ProgressFn]


def _no_progress(description: str, total: int) -> ProgressFn:
    del description, total

    def report(done: int, active: int) -> None:
        del done, active

    return report


@dataclass(frozen=True)
class RunSpec:
    """What every method of a run sees, in the simulator and on a Flower node alike:
    the seed, the networks (classifier, the paper's gate architecture, specialist), the data's
    shape, the shared federated and personalisation settings, and progress bars."""

    seed: int
    net: Model
    gate_net: Model
    #: The specialists' network: ``net`` unless the config names another
    #: (``specialist_model``), for mixtures of experts of different kinds.
    specialist_net: Model
    input_shape: tuple[int, ...]
    num_classes: int
    dropout: float
    dtype: torch.dtype
    device: torch.device
    federation: FederationConfig
    personalise: TrainConfig
    progress: ProgressFactory = _no_progress

    def personalise_with(self, lr: float) -> TrainConfig:
        """The shared personalisation settings with the learning rate ``lr``."""
        return replace(self.personalise, optimizer=replace(self.personalise.optimizer, lr=lr))


@dataclass
class Output:
    """What a stage leaves for evaluation and for the methods after it.

    ``state``: its tensors (see :data:`State`); ``epochs`` and ``best_loss``: per client
    ``(K,)`` for trained personal models (one entry for a model all clients share),
    ``None`` where nothing was trained per client; ``info``: JSON-able facts (a
    federation's history, say)."""

    state: State
    epochs: torch.Tensor | None = None
    best_loss: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The output as a checkpoint."""
        return {
            "state": self.state,
            "epochs": self.epochs,
            "best_loss": self.best_loss,
            "info": self.info,
        }

    @staticmethod
    def from_dict(saved: Mapping[str, Any]) -> Output:
        """The output :meth:`to_dict` saved."""
        return Output(saved["state"], saved["epochs"], saved["best_loss"], saved["info"])


#: The prefix of the server model(s) in a federated output; ``client.`` prefixes the
#: clients' state kept across rounds.
GLOBAL, CLIENT = "global", "client"


def federated_output(best: Params, summary: dict[str, Any], clients: State) -> Output:
    """A federated phase's output: the best server model(s), the clients' state and the
    phase's summary (``info["federation"]``)."""
    state = prefixed(best, GLOBAL) | prefixed(clients, CLIENT)
    return Output(state, info={"federation": summary})


def global_model(output: Output) -> Params:
    """The server model(s) (leading axis: one row per model) of a federated output."""
    return unprefixed(output.state, GLOBAL)


def client_state(output: Output) -> State:
    """The clients' state (rows per client) of a federated output."""
    return unprefixed(output.state, CLIENT)


@dataclass(frozen=True)
class GateValues:
    """A mixture's weight on its specialist per example ``g`` ``(K, N)``, with the
    labels ``y`` ``(K|1, N)`` and which positions are real examples ``valid``
    ``(K, N)``."""

    g: torch.Tensor
    y: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True)
class Evaluated:
    """Each client's ``accuracy`` ``(K,)`` on one split; a mixture's ``gate`` values;
    ``variants``: the same for each variant the method fits (an ablation), by label;
    ``scalars``: further per-client numbers ``(K,)`` the method reports (see
    :meth:`Method.details`)."""

    accuracy: torch.Tensor
    gate: GateValues | None = None
    variants: dict[str, Evaluated] = field(default_factory=dict)
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)


class Federated:
    """A method's federated phase, as hooks :mod:`fedmoe.federation` calls each round.

    The server holds ``Params`` with a leading axis of one row per server model (one
    for FedAvg). The defaults are FedAvg's: a sample-weighted mean of the updates.
    Early stopping keeps the best round's server model(s) *and* the clients' state of
    that round, so what a method predicts with after federation comes from one round."""

    def init(self, run: RunSpec, options: Any, device: torch.device) -> Params:
        """The server's initial model(s)."""
        raise NotImplementedError

    def init_client_state(self, run: RunSpec, options: Any, clients: Clients) -> State:
        """Per-client state kept across rounds, before the first round (default: none)."""
        del run, options, clients
        return {}

    def client_update(
        self,
        run: RunSpec,
        options: Any,
        server: Params,
        clients: Clients,
        round_: int,
        state: State,
    ) -> Update:
        """Train the cohort ``clients`` (their ``state`` rows) from the server's model(s)
        in ``round_``."""
        raise NotImplementedError

    def aggregate(self, server: Params, update: Update, weights: torch.Tensor) -> Params:
        """The server's new model(s) from a round's ``update`` (``weights``: the
        clients' training-set sizes ``(K,)``)."""
        del server
        return weighted_mean(update.params, weights)

    def validate(
        self, run: RunSpec, options: Any, server: Params, clients: Clients, state: State
    ) -> Evaluation:
        """The per-client validation loss and accuracy early stopping uses (the simulator
        calls it with the opt-in clients, a Flower node with itself): of the model the
        method predicts with on ``clients.val``, so a method with client state (a personal
        head, say) scores the server model(s) with the clients' ``state`` rows
        (``clients``' order), and one that adapts before predicting (Per-FedAvg) adapts on
        ``clients.train`` first."""
        raise NotImplementedError


class Method:
    """A personalised-FL method (see the module docstring). Subclasses set the class
    attributes and override the hooks they need."""

    #: The name in configs, results and on the command line.
    name: ClassVar[str]
    #: The display name in tables and plots.
    label: ClassVar[str]
    #: One line for report tables.
    description: ClassVar[str]
    #: The dataclass of its ``[method.<name>]`` config section (``None``: no options).
    options: ClassVar[type | None] = None
    #: The methods whose outputs it builds on (they run before it).
    needs: ClassVar[tuple[str, ...]] = ()
    #: Its federated phase, or ``None``.
    federated: ClassVar[Federated | None] = None
    #: Whether it is a method under test (fedmoe's mixtures; a new method of yours):
    #: the leaderboard sets it in bold and pairs it, seed by seed, with the cell's best
    #: method that is not (a baseline).
    contender: ClassVar[bool] = False
    #: For mixtures: the methods paired differences compare it with, per split.
    baselines: ClassVar[dict[str, tuple[str, ...]] | None] = None
    #: Whether its output is one model every client shares (evaluated the same for all).
    shared: ClassVar[bool] = False

    def validate(self, options: Any, config: Mapping[str, Any]) -> None:
        """Raise a one-line ConfigError if ``options`` cannot run with the rest of the
        experiment ``config`` (a dict of the resolved config)."""
        del options, config

    def node_support(self, options: Any) -> str | None:
        """Why this method cannot run on Flower nodes (``None``: it can)."""
        del options
        return None

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        """Each client's personal model(s) from ``inputs`` (the outputs of
        :attr:`needs`) and ``federated`` (this method's own federated output, if it has a
        federated phase). The default keeps the federated output as it is."""
        del run, options, clients, inputs
        if federated is None:
            raise NotImplementedError(
                f"{self.name} has neither a federated phase nor personalisation"
            )
        return federated

    def evaluate(
        self,
        run: RunSpec,
        options: Any,
        own: Output,
        inputs: Mapping[str, Output],
        data: ClientData,
    ) -> Evaluated:
        """Each client's accuracy on ``data`` (its local test set, or the global test set
        shared by all) with the model(s) in ``own``."""
        raise NotImplementedError

    def details(
        self, options: Any, scalars: Mapping[str, list[float]], variant: str | None = None
    ) -> dict[str, Any]:
        """The results.json ``details`` of the method (or of its ``variant``) from the
        per-client :attr:`Evaluated.scalars` of every client (lists in client order)."""
        del options, scalars, variant
        return {}
