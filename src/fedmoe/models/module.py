"""Any ``torch.nn.Module`` as a :class:`~fedmoe.models.base.Model`, through
``torch.func``: K clients' parameters are stacked on a leading axis and the module runs
once for all of them (``functional_call`` under ``vmap``).

The user names a *factory* ``make_model(input_shape, num_outputs) -> nn.Module``
(``model = "package.module:make_model"`` in the config). The module returns logits
``(batch, num_outputs)``; fedmoe applies ``log_softmax`` (a module that already returns
log-probabilities is unchanged by it). The head is the last submodule that holds
parameters (or the one a parameter-name prefix names); the body's output is the head's
input, captured by a forward pre-hook.

Randomness: each client's initial parameters are the module's own initialisation drawn
under a seed from the counter-based stream of (seed, client, phase), so a client starts
the same wherever it runs. Dropout in training is drawn by torch's generator, seeded per
step from the cohort's keys: deterministic for a given cohort, but (unlike the fused
built-in networks, whose masks are per-client streams) a client's draws depend on which
clients share its cohort. Tests that compare cohorts with single clients turn it off.

Modules with running statistics (BatchNorm) are refused: a client's statistics would
have to be kept and averaged like parameters, which fedmoe does not do; GroupNorm or
LayerNorm normalise per example and work.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, vmap

from fedmoe import rng
from fedmoe.errors import ConfigError
from fedmoe.models.base import Params, ParamSpec, finish

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
Output = Literal["log_softmax", "logit"]

_SEED_MASK = (1 << 62) - 1


_FACTORIES: dict[str, ModelFactory] = {}


def register_model(name: str, factory: ModelFactory) -> None:
    """Make ``factory`` the model a config names ``name`` (in this process: the Python
    API's way to pass a model; a Flower deployment names ``package.module:function``)."""
    if ":" in name or not name:
        raise ConfigError(f"a registered model's name must be non-empty without ':', got {name!r}")
    _FACTORIES[name] = factory


def registered_model(name: str) -> ModelFactory | None:
    """The factory :func:`register_model` registered as ``name``, if any."""
    return _FACTORIES.get(name)


def load_factory(spec: str) -> ModelFactory:
    """The factory ``"package.module:function"`` names (or one registered under that
    name); a one-line ConfigError when it cannot be imported or is not callable."""
    if spec in _FACTORIES:
        return _FACTORIES[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a broken user module must not be a bare traceback
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"model {spec!r}: cannot import {module_name!r}: {reason}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model {spec!r}: {module_name} has no function {attr!r}")
    return factory  # type: ignore[no-any-return]


def _seed(key: torch.Tensor) -> int:
    return int(key) & _SEED_MASK


@dataclass(frozen=True, eq=False)
class ModuleNetwork:
    """A user ``nn.Module`` from ``factory`` with ``num_outputs`` outputs on inputs of
    ``input_shape``: log-probabilities (``output="log_softmax"``) or gate logits
    (``"logit"``). ``head`` names the head submodule (``""``: the last one with
    parameters)."""

    name: str
    input_shape: tuple[int, ...]
    num_outputs: int
    factory: ModelFactory
    output: Output = "log_softmax"
    head_name: str = ""
    _template: nn.Module = field(init=False, repr=False)
    _specs: tuple[ParamSpec, ...] = field(init=False, repr=False)
    _buffers: dict[str, torch.Tensor] = field(init=False, repr=False)
    _feature_size: int = field(init=False, repr=False)
    _vmaps: bool = field(init=False, repr=False)
    _input_dtype: torch.dtype = field(init=False, repr=False)

    def __post_init__(self) -> None:
        template = self._build()
        set_ = object.__setattr__
        set_(self, "_template", template)
        specs = []
        for name, p in template.named_parameters():
            fan_in = math.prod(p.shape[1:]) if p.dim() > 1 else p.shape[0]
            specs.append(ParamSpec(name, tuple(p.shape), int(fan_in)))
        if not specs:
            raise ConfigError(f"model {self.name!r} has no parameters to train")
        set_(self, "_specs", tuple(specs))
        set_(self, "_buffers", dict(template.named_buffers()))
        head = self.head_name or _last_with_parameters(template)
        if head not in dict(template.named_modules()):
            raise ConfigError(f"model {self.name!r} has no submodule {head!r} to use as head")
        set_(self, "head_name", head)
        set_(self, "_input_dtype", self._input_kind())
        set_(self, "_feature_size", self._check_shapes())
        set_(self, "_vmaps", True)
        set_(self, "_vmaps", self._vmap_works())

    # ------------------------------------------------------------------ building

    def _build(self) -> nn.Module:
        try:
            module = self.factory(self.input_shape, self.num_outputs)
        except Exception as exc:  # user code: one line, not a traceback
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(f"model {self.name!r}: the factory failed: {reason}") from None
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"model {self.name!r}: the factory returned {type(module).__name__}, "
                "not a torch.nn.Module"
            )
        for sub_name, sub in module.named_modules():
            norm = isinstance(sub, nn.modules.batchnorm._BatchNorm)
            if norm and sub.track_running_stats:
                raise ConfigError(
                    f"model {self.name!r}: {sub_name or 'the module'} is a BatchNorm with "
                    "running statistics, which fedmoe cannot keep per client; use "
                    "GroupNorm or LayerNorm (or track_running_stats=False)"
                )
        return module

    def _check_shapes(self) -> int:
        """Run the template once on two dummy inputs: the output must be (2, outputs)
        (or (2,) for a one-output gate). Returns the head's input width."""
        x = self._dummy(2)
        seen: list[torch.Tensor] = []
        head = dict(self._template.named_modules())[self.head_name]
        handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        try:
            with torch.no_grad():
                self._template.eval()
                out = self._template(x)
        except Exception as exc:  # user code: one line, not a traceback
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(
                f"model {self.name!r} fails on inputs of shape {(2, *self.input_shape)}: {reason}"
            ) from None
        finally:
            handle.remove()
        allowed = [(2, self.num_outputs)] + ([(2,)] if self.num_outputs == 1 else [])
        if not isinstance(out, torch.Tensor) or tuple(out.shape) not in allowed:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"model {self.name!r} returned {shape} for a batch of 2; it must return "
                f"(batch, {self.num_outputs}) logits"
            )
        if not seen or seen[0].dim() != 2:
            raise ConfigError(
                f"model {self.name!r}: the input of its head {self.head_name!r} must be "
                "(batch, features); name another head"
            )
        return int(seen[0].shape[1])

    def _vmap_works(self) -> bool:
        """Whether ``vmap`` runs the module (recurrent layers, for one, have no batching
        rule: such a module runs client by client)."""
        params = {n: torch.stack([p.detach()] * 2) for n, p in self._template.named_parameters()}
        try:
            with torch.no_grad():
                self._run(params, self._dummy(3).unsqueeze(0), None, capture=False)
        except RuntimeError:
            return False
        return True

    def _input_kind(self) -> torch.dtype:
        """Float inputs, or integer ones (token ids) for a module that only takes those."""
        if not self.input_shape or any(d <= 0 for d in self.input_shape):
            raise ConfigError(f"model {self.name!r}: bad input shape {self.input_shape}")
        for dtype in (next(self._template.parameters()).dtype, torch.int64):
            try:
                with torch.no_grad():
                    self._template.eval()
                    self._template(torch.zeros(2, *self.input_shape, dtype=dtype))
            except Exception:
                continue
            return dtype
        return next(self._template.parameters()).dtype

    def _dummy(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape, dtype=self._input_dtype)

    def as_gate(self, outputs: int) -> ModuleNetwork:
        """The same architecture with ``outputs`` gate logits."""
        return ModuleNetwork(
            f"{self.name}-gate", self.input_shape, outputs, self.factory, "logit", ""
        )

    # ------------------------------------------------------------------ the Model contract

    @property
    def dropout(self) -> float:
        rates = [m.p for m in self._template.modules() if isinstance(m, nn.Dropout)]
        return float(max(rates, default=0.0))

    @property
    def feature_size(self) -> int:
        return self._feature_size

    @property
    def output_bias(self) -> str:
        return f"{self._head_prefix}bias"

    @property
    def _head_prefix(self) -> str:
        return f"{self.head_name}." if self.head_name else ""

    def param_specs(self) -> list[ParamSpec]:
        return list(self._specs)

    def num_params(self) -> int:
        return sum(math.prod(s.shape) for s in self._specs)

    def init(
        self,
        seed: int,
        clients: torch.Tensor,
        phase: str,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Params:
        """Each client's module initialised as the module does it, under the seed of
        its counter-based stream (torch's global generator is left as it was)."""
        keys = rng.client_keys(seed, clients.cpu(), phase)
        rows: list[dict[str, torch.Tensor]] = []
        for key in keys:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(key))
                module = self._build()
            rows.append({n: p.detach() for n, p in module.named_parameters()})
        return {
            s.name: torch.stack([r[s.name] for r in rows]).to(dtype=dtype, device=device)
            for s in self._specs
        }

    def _buffers_like(self, params: Params) -> dict[str, torch.Tensor]:
        ref = next(iter(params.values()))
        return {
            n: b.to(device=ref.device, dtype=ref.dtype if b.is_floating_point() else b.dtype)
            for n, b in self._buffers.items()
        }

    @contextmanager
    def _mode(self, seed: torch.Tensor | None) -> Iterator[str]:
        """Train mode with torch's generator seeded (dropout), or eval mode."""
        if seed is None:
            self._template.eval()
            yield "error"
            return
        self._template.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            yield "different"

    def _run(
        self, params: Params, x: torch.Tensor, seed: torch.Tensor | None, capture: bool
    ) -> torch.Tensor:
        k = next(iter(params.values())).shape[0]
        if x.shape[0] not in (1, k):
            raise ValueError(f"inputs for {x.shape[0]} clients but parameters for {k}")
        if x.shape[0] == 1 and k > 1:
            x = x.expand(k, *x.shape[1:])
        buffers = self._buffers_like(params)
        head = dict(self._template.named_modules())[self.head_name]
        template = self._template

        def one(p: Params, xi: torch.Tensor) -> torch.Tensor:
            if not capture:
                out: torch.Tensor = functional_call(template, (p, buffers), (xi,))
                return out
            seen: list[torch.Tensor] = []
            handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
            try:
                functional_call(template, (p, buffers), (xi,))
            finally:
                handle.remove()
            return seen[0]

        with self._mode(seed) as randomness:
            if not self._vmaps:
                rows = [one({n: p[i] for n, p in params.items()}, x[i]) for i in range(k)]
                return torch.stack(rows)
            out: torch.Tensor = vmap(one, randomness=randomness)(params, x)
            return out

    def forward(
        self, params: Params, x: torch.Tensor, dropout_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """As :meth:`Model.forward`; ``dropout_mask`` is this network's dropout seed
        (:meth:`dropout_mask`) or ``None`` (eval mode)."""
        return finish(self._run(params, x, dropout_mask, capture=False), self.output)

    def features(
        self, params: Params, x: torch.Tensor, dropout_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._run(params, x, dropout_mask, capture=True)

    def head(self, params: Params, features: torch.Tensor) -> torch.Tensor:
        prefix = self._head_prefix
        mine = {n[len(prefix) :]: p for n, p in params.items() if n.startswith(prefix)}
        k = next(iter(mine.values())).shape[0]
        if features.shape[0] == 1 and k > 1:
            features = features.expand(k, *features.shape[1:])
        layer = dict(self._template.named_modules())[self.head_name]

        def one(p: Params, f: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = functional_call(layer, p, (f,))
            return out

        if not self._vmaps:
            rows = [one({n: p[i] for n, p in mine.items()}, features[i]) for i in range(k)]
            return finish(torch.stack(rows), self.output)
        return finish(vmap(one)(mine, features), self.output)

    def dropout_mask(
        self, keys: torch.Tensor, counter: int, batch: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """A seed for torch's generator for this step (see the module docstring)."""
        del batch, dtype
        words = rng.random_words(keys.cpu(), counter, 1)[:, 0]
        mixed = int((words * torch.arange(1, len(words) + 1)).sum()) & _SEED_MASK
        return torch.tensor(mixed, dtype=torch.int64)

    def module(self) -> nn.Module:
        return self._build()


def _last_with_parameters(module: nn.Module) -> str:
    """The name of the last submodule (in registration order) that holds parameters of
    its own: a classifier's output layer, usually."""
    last: str | None = None
    for name, sub in module.named_modules():
        if any(True for _ in sub.parameters(recurse=False)):
            last = name
    if last is None:
        raise ConfigError("the model has no parameters to train")
    return last  # "" when the model is one layer: its body is the identity
