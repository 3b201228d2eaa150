"""``moe-plus``: the mixture with a gate fitted over cached, frozen experts.

The paper's gate sees raw images, is trained on the client's training split (which the
specialist has memorised) and mixes uncalibrated experts, so it trusts the specialist on
almost every input, the classes the client rarely sees included. ``moe-plus`` keeps the
same mixture ``g p_s + (1 - g) p_g`` and changes how ``g`` is fitted; each choice is an
option of :class:`GateConfig`, so every one can be ablated:

- ``inputs="features"``: the gate reads the frozen global expert's last hidden layer,
  which was trained on every client's classes, instead of the raw image;
- ``data="heldout"``: the gate is fitted on the first half of the client's validation
  split and early-stopped on the second half, data the specialist never trained on, so
  the gate learns where the specialist is actually right;
- ``calibrate``: each expert's log-probabilities are temperature-scaled per client
  (temperature fitted on the validation split) before mixing;
- ``prior``: the gate logit gets ``s * sum_y p_g(y|x) log(C pi(y))`` added, with
  ``pi`` the client's (smoothed) training label frequencies and ``s`` learnt per client
  (starting at 1): inputs the global expert assigns to classes the client rarely sees
  start out leaning to the global expert;
- ``adjust``: the global expert is corrected for the client's label shift,
  ``p_g(y|x) C pi(y)`` renormalised (Bayes' rule when the federation's labels are
  balanced and only the label distribution differs between clients), so the second
  expert knows every class *and* the client's class frequencies.

A rule for clients that will meet classes they never trained on (off by default):

- ``fallback``: where the (calibrated, unadjusted) global expert puts less than this
  share of its probability on the classes the client has training examples of, the
  prediction is the global expert's alone (the specialist's weight is 0). The gate is
  fitted as before; the rule overrides it at prediction. The client's own data shows
  its gate no input of another class, so a gate fitted on it cannot learn this.

Both experts are frozen (the specialist is the client's fine-tuned model), so their
outputs are computed once per split and the gate trains on rows
``[gate input | log p_s | log p_g | prior feature]`` with the ordinary engine.

More global experts (the ``M`` cluster models of IFCA, see :mod:`fedmoe.methods.fedavg`)
join as ``log p_c`` columns; the gate then has ``1 + M`` outputs, the logits of the
specialist and of each cluster model against the federation's global expert (logit 0),
and the mixture weights are their softmax (with ``M = 0``: ``g = sigmoid(a)``, the same
mixture). Calibration and ``adjust`` apply to every global expert alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch

from fedmoe import rng
from fedmoe.engine import ClientData, Dropout, TrainConfig, train
from fedmoe.engine.evaluate import Evaluation, Tally, batches, nll
from fedmoe.engine.train import ProgressFn
from fedmoe.methods.mixture import GATE, combine
from fedmoe.methods.params import prefixed, unprefixed
from fedmoe.models import Model, Params

GateInputs = Literal["features", "image"]
#: Further global experts (cluster models, say): inputs ``(1, N, ...)`` to their
#: log-probabilities ``(M, N, C)``.
ClusterExperts = Callable[[torch.Tensor], torch.Tensor]
GateData = Literal["heldout", "train"]
PRIOR_SCALE = "prior.scale"
#: Temperatures tried when calibrating an expert (log-spaced, 0.1 to 10).
TEMPERATURES = torch.logspace(-1.0, 1.0, 41, dtype=torch.float64)
#: Examples (summed over clients) per evaluation chunk.
CHUNK = 50_000


@dataclass(frozen=True)
class GateConfig:
    """How ``moe-plus`` fits its gate (see the module docstring); the defaults are the
    best combination measured (docs/results/fashion-mnist/)."""

    inputs: GateInputs = "features"
    data: GateData = "heldout"
    calibrate: bool = True
    prior: bool = True
    adjust: bool = True
    fallback: float = 0.0

    @property
    def label(self) -> str:
        parts = [
            "global features" if self.inputs == "features" else "image",
            "held-out" if self.data == "heldout" else "train split",
        ]
        parts += ["calibrated"] if self.calibrate else []
        parts += ["prior"] if self.prior else []
        parts += ["adjusted global"] if self.adjust else []
        parts += [f"fallback {self.fallback:g}"] if self.fallback else []
        return ", ".join(parts)

    def ablations(self) -> dict[str, GateConfig]:
        """This configuration, each option switched in turn, and all of them switched."""
        flipped = {
            "inputs": replace(self, inputs="image" if self.inputs == "features" else "features"),
            "data": replace(self, data="train" if self.data == "heldout" else "heldout"),
            "calibrate": replace(self, calibrate=not self.calibrate),
            "prior": replace(self, prior=not self.prior),
            "adjust": replace(self, adjust=not self.adjust),
        }
        every = replace(
            self,
            inputs=flipped["inputs"].inputs,
            data=flipped["data"].data,
            calibrate=flipped["calibrate"].calibrate,
            prior=flipped["prior"].prior,
            adjust=flipped["adjust"].adjust,
        )
        return {c.label: c for c in (self, *flipped.values(), every)}


@dataclass(frozen=True)
class Experts:
    """The experts' outputs on one split of K clients (axis 0 of length 1 where every
    client shares the rows, as on the global test set).

    ``gate_in`` ``(K|1, N, P)``: the gate's inputs, flattened; ``log_ps`` ``(K, N, C)``
    and ``log_pg`` ``(K|1, N, C)``: specialist and global log-probabilities; ``y``
    ``(K|1, N)``; ``n`` ``(K,)``: real examples per client; ``log_pc`` ``(K|1, N, M, C)``:
    the log-probabilities of ``M`` further global experts (cluster models), if any."""

    gate_in: torch.Tensor
    log_ps: torch.Tensor
    log_pg: torch.Tensor
    y: torch.Tensor
    n: torch.Tensor
    log_pc: torch.Tensor | None = None

    @property
    def num_clusters(self) -> int:
        return 0 if self.log_pc is None else int(self.log_pc.shape[2])

    @property
    def num_clients(self) -> int:
        return int(self.n.shape[0])

    def valid(self) -> torch.Tensor:
        """``(K, N)``: which positions are real examples."""
        positions = torch.arange(self.log_ps.shape[1], device=self.n.device)
        return positions.unsqueeze(0) < self.n.unsqueeze(1)


@torch.no_grad()
def cache_experts(
    net: Model,
    specialists: Params,
    global_params: Params,
    data: ClientData,
    clusters: ClusterExperts | None = None,
) -> Experts:
    """Run the (frozen, eval-mode) experts once over ``data``: the clients'
    ``specialists``, the global model and the ``clusters`` experts, if any. The gate
    inputs are the global expert's features (see :func:`image_inputs` for the raw
    inputs)."""
    parts: list[list[torch.Tensor]] = []
    for x, y, _ in batches(data):
        log_ps = net.forward(specialists, x)
        # Models shared by every client: their inputs form one batch.
        flat = x.reshape(1, -1, *x.shape[2:])
        flat_feats = net.features(global_params, flat)
        feats = flat_feats.reshape(*x.shape[:2], -1)
        log_pg = net.head(global_params, flat_feats).reshape(*x.shape[:2], -1)
        part = [feats, log_ps, log_pg, y[:1] if data.shared else y]
        if clusters is not None:
            log_pc = clusters(flat)  # (M, K*B, C)
            part.append(log_pc.reshape(-1, *x.shape[:2], log_pc.shape[-1]).permute(1, 2, 0, 3))
        parts.append(part)
    cat = [torch.cat(t, 1) for t in zip(*parts, strict=True)]
    return Experts(cat[0], cat[1], cat[2], cat[3], data.n, cat[4] if clusters is not None else None)


def image_inputs(data: ClientData) -> torch.Tensor:
    """The raw inputs of ``data``, flattened: ``(K|1, N, P)``, as :class:`Experts` holds
    gate inputs."""
    rows = data.index[:1] if data.shared else data.index
    return data.x[rows].flatten(2)


def fit_temperature(log_p: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-client temperature ``(K,)`` minimising the NLL of ``log_softmax(log_p / T)``
    on the valid examples, over :data:`TEMPERATURES`."""
    log_p = log_p.to(torch.float64)
    losses = []
    for t in TEMPERATURES.tolist():
        scaled = torch.log_softmax(log_p / t, -1)
        losses.append(torch.where(valid, nll(scaled, y.expand_as(valid)), 0.0).sum(1))
    best = torch.stack(losses).argmin(0)
    return TEMPERATURES.to(log_p.device)[best]


def scaled(log_p: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``log_softmax(log_p / T_k)`` per client (``log_p`` may be shared: ``(1, N, C)``)."""
    t = temperature.to(log_p.dtype).reshape(-1, 1, 1)
    return torch.log_softmax(log_p / t, -1)


def label_counts(train: ClientData, num_classes: int) -> torch.Tensor:
    """Each client's training examples per class, ``(K, C)`` (float64)."""
    positions = torch.arange(train.capacity, device=train.n.device).expand(train.num_clients, -1)
    _, y, valid = train.batch(positions)
    counts = torch.zeros(train.num_clients, num_classes, dtype=torch.float64, device=y.device)
    return counts.scatter_add_(1, y, valid.to(torch.float64))


def log_prior_ratio(counts: torch.Tensor) -> torch.Tensor:
    """``log(C pi_k(y))`` ``(K, C)`` from each client's :func:`label_counts`, add-one
    smoothed: positive for classes the client sees more than uniformly, negative for
    those it rarely sees."""
    num_classes = counts.shape[1]
    freq = (counts + 1.0) / (counts.sum(1, keepdim=True) + num_classes)
    return torch.log(freq * num_classes)


@dataclass(frozen=True)
class GateMixture:
    """The ``moe-plus`` objective over rows
    ``[gate input | log p_s | log p_g | log p_c (M x C) | prior]``; trains ``gate.*``
    (and ``prior.scale`` ``(K, 1)`` when ``prior``). The gate network has ``1 + M``
    outputs."""

    gate: Model
    num_classes: int
    clusters: int = 0

    @property
    def width(self) -> int:
        return math.prod(self.gate.input_shape)

    def logits(self, params: Params, rows: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
        """Gate logits: ``(K, B)`` for the specialist against the global expert, or
        ``(K, B, 1 + M)`` with cluster models (specialist first)."""
        k, b = rows.shape[:2]
        gate_in = rows[..., : self.width].reshape(k, b, *self.gate.input_shape)
        mask = None if dropout is None else dropout.mask(self.gate, b, rows.dtype)
        a = self.gate.forward(unprefixed(params, GATE), gate_in, mask)
        if PRIOR_SCALE in params:
            shift = params[PRIOR_SCALE] * rows[..., -1]
            if self.clusters:
                a = torch.cat([a[..., :1] + shift.unsqueeze(-1), a[..., 1:]], -1)
            else:
                a = a + shift
        return a

    def weights(self, logits: torch.Tensor) -> torch.Tensor:
        """Log mixture weights ``(K, B, 2 + M)`` (specialist, global, clusters) of
        :meth:`logits` with clusters."""
        zero = torch.zeros_like(logits[..., :1])
        return torch.log_softmax(torch.cat([logits[..., :1], zero, logits[..., 1:]], -1), -1)

    def specialist_weight(self, logits: torch.Tensor) -> torch.Tensor:
        """The weight ``(K, B)`` the mixture gives the specialist."""
        if self.clusters:
            return self.weights(logits)[..., 0].exp()
        return torch.sigmoid(logits)

    def log_probs(
        self, params: Params, rows: torch.Tensor, dropout: Dropout | None
    ) -> torch.Tensor:
        c, w = self.num_classes, self.width
        logits = self.logits(params, rows, dropout)
        if not self.clusters:
            log_ps, log_pg = rows[..., w : w + c], rows[..., w + c : w + 2 * c]
            return combine(log_ps, log_pg, logits, "probability")
        experts = rows[..., w : w + (2 + self.clusters) * c].reshape(*rows.shape[:2], -1, c)
        return torch.logsumexp(self.weights(logits).unsqueeze(-1) + experts, -2)


@dataclass(frozen=True)
class FittedGate:
    """A fitted ``moe-plus``: gate parameters, per-client temperatures of the specialist
    and the global expert, the clients' :func:`log_prior_ratio`, epochs trained and best
    stopping loss; ``seen`` ``(K, C)``: which classes each client has training examples
    of (what ``fallback`` needs)."""

    config: GateConfig
    objective: GateMixture
    params: Params
    t_specialist: torch.Tensor
    t_global: torch.Tensor
    ratio: torch.Tensor
    epochs: torch.Tensor
    best_loss: torch.Tensor
    #: ``(K, M)`` temperatures of the cluster models, if any.
    t_clusters: torch.Tensor | None = None
    seen: torch.Tensor | None = None


def _rows(fit: FittedGate, ex: Experts, start: int, stop: int) -> torch.Tensor:
    """Rows ``(K, stop - start, D)`` of ``ex`` as the gate objective reads them."""
    k = ex.num_clients
    log_ps = scaled(ex.log_ps[:, start:stop], fit.t_specialist)
    log_pg = scaled(ex.log_pg[:, start:stop], fit.t_global).expand(k, -1, -1)
    ratio = fit.ratio.unsqueeze(1).to(log_pg.dtype)
    prior = (log_pg.exp() * ratio).sum(-1, keepdim=True)
    if not fit.config.prior:
        prior = torch.zeros_like(prior)
    others = [log_pg]
    if ex.log_pc is not None and fit.t_clusters is not None:
        log_pc = ex.log_pc[:, start:stop]
        others += [scaled(log_pc[:, :, m], fit.t_clusters[:, m]) for m in range(ex.num_clusters)]
    if fit.config.adjust:
        others = [torch.log_softmax(o + ratio, -1) for o in others]
    gate_in = ex.gate_in[:, start:stop].expand(k, -1, -1)
    return torch.cat([gate_in, log_ps, *(o.expand(k, -1, -1) for o in others), prior], -1)


def _client_data(fit: FittedGate, ex: Experts, lo: torch.Tensor, hi: torch.Tensor) -> ClientData:
    """Positions ``[lo_k, hi_k)`` of each client's rows as a cohort the engine trains on."""
    rows = _rows(fit, ex, 0, ex.log_ps.shape[1])
    k, n = rows.shape[:2]
    y = ex.y.expand(k, -1).reshape(-1)
    index = [(i * n + torch.arange(int(lo[i]), int(hi[i]))).cpu().numpy() for i in range(k)]
    return ClientData.from_indices(rows.reshape(k * n, -1), y, index)


def fit_gate(
    net: Model,
    gate_net: Model,
    train_experts: Experts,
    val_experts: Experts,
    counts: torch.Tensor,
    config: GateConfig,
    train_cfg: TrainConfig,
    clients: torch.Tensor,
    seed: int,
    progress: ProgressFn | None = None,
) -> FittedGate:
    """Fit each client's gate (``gate_net``'s input shape must match ``config.inputs``).

    ``counts``: the clients' :func:`label_counts` of their training labels."""
    k, device = val_experts.num_clients, val_experts.n.device
    m = val_experts.num_clusters
    ones = torch.ones(k, dtype=torch.float64, device=device)
    t_s, t_g = ones, ones
    t_c = torch.ones(k, m, dtype=torch.float64, device=device) if m else None
    if config.calibrate:
        valid = val_experts.valid()
        t_s = fit_temperature(val_experts.log_ps, val_experts.y, valid)
        t_g = fit_temperature(val_experts.log_pg, val_experts.y, valid)
        if val_experts.log_pc is not None:
            cols = [val_experts.log_pc[:, :, j] for j in range(m)]
            t_c = torch.stack([fit_temperature(c, val_experts.y, valid) for c in cols], 1)
    if gate_net.num_outputs != 1 + m:
        raise ValueError(f"a gate over {m} cluster models needs {1 + m} outputs")
    dtype = val_experts.log_ps.dtype
    gate = gate_net.init(seed, clients.cpu(), "moe-plus/gate-init", dtype=dtype, device=device)
    params = prefixed(gate, GATE)
    if config.prior:
        params[PRIOR_SCALE] = torch.ones(k, 1, dtype=dtype, device=device)
    objective = GateMixture(gate_net, net.num_outputs, m)
    ratio = log_prior_ratio(counts)
    fit = FittedGate(config, objective, params, t_s, t_g, ratio, ones, ones, t_c, counts > 0)
    zero = torch.zeros_like(val_experts.n)
    if config.data == "heldout":
        half = val_experts.n // 2
        fit_data = _client_data(fit, val_experts, zero, half)
        stop_data = _client_data(fit, val_experts, half, val_experts.n)
    else:
        fit_data = _client_data(fit, train_experts, zero, train_experts.n)
        stop_data = _client_data(fit, val_experts, zero, val_experts.n)
    keys = rng.client_keys(seed, clients.cpu(), "moe-plus/train").to(device)
    res = train(objective, params, fit_data, train_cfg, keys, stop_data, progress)
    return replace(fit, params=res.params, epochs=res.epochs, best_loss=res.best_loss)


def _chunks(ex: Experts) -> Iterator[tuple[int, int]]:
    n = ex.log_ps.shape[1]
    width = max(1, CHUNK // max(ex.num_clients, 1))
    for start in range(0, n, width):
        yield start, min(start + width, n)


def _fall_back(
    fit: FittedGate, ex: Experts, start: int, stop: int, log_probs: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixture's log-probabilities and specialist weights on positions
    ``[start, stop)`` with the ``fallback`` rule applied (see the module docstring)."""
    if not fit.config.fallback:
        return log_probs, g
    if fit.seen is None:
        raise ValueError("fallback needs the classes each client has seen (FittedGate.seen)")
    log_pg = scaled(ex.log_pg[:, start:stop], fit.t_global).expand_as(log_probs)
    mass = (log_pg.exp() * fit.seen.unsqueeze(1).to(log_pg.dtype)).sum(-1)
    out = mass < fit.config.fallback
    return torch.where(out.unsqueeze(-1), log_pg, log_probs), torch.where(out, 0.0, g)


@torch.no_grad()
def evaluate_gate(fit: FittedGate, ex: Experts) -> tuple[Evaluation, torch.Tensor]:
    """The mixture's per-client evaluation on ``ex`` and its gate values ``g`` ``(K, N)``
    (the weight on the specialist; meaningful where :meth:`Experts.valid`)."""
    k = ex.num_clients
    tally = Tally.zeros(k, ex.n.device)
    gates = []
    valid = ex.valid()
    for start, stop in _chunks(ex):
        rows = _rows(fit, ex, start, stop)
        log_probs = fit.objective.log_probs(fit.params, rows, None)
        g = fit.objective.specialist_weight(fit.objective.logits(fit.params, rows, None))
        log_probs, g = _fall_back(fit, ex, start, stop, log_probs, g)
        gates.append(g)
        tally.add(log_probs, ex.y[:, start:stop].expand(k, -1), valid[:, start:stop])
    return tally.result(ex.n), torch.cat(gates, 1)
