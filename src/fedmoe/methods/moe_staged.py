"""MoE (staged): the paper's mixture trained with the staged schedule (the gate alone
with both experts frozen, then specialist and gate jointly), for comparison with the
joint schedule of ``moe``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedmoe.federation import Clients
from fedmoe.methods.base import Output, RunSpec
from fedmoe.methods.mixture import Pool
from fedmoe.methods.moe import Moe, MoeOptions, SpecialistStart, train_mixture


@dataclass(frozen=True)
class MoeStagedOptions:
    """As ``moe``'s options (see :class:`~fedmoe.methods.moe.MoeOptions`), the
    schedule fixed to ``staged``."""

    lr: float = 1e-5
    pool: Pool = "probability"
    train_specialist: bool = True
    gate_bias: float = 0.0
    specialist: SpecialistStart = "finetune"

    def validate(self, where: str) -> None:
        self.as_moe().validate(where)

    def as_moe(self) -> MoeOptions:
        return MoeOptions(
            self.lr, self.pool, self.train_specialist, self.gate_bias, "staged", self.specialist
        )


class MoeStaged(Moe):
    name = "moe-staged"
    label = "MoE (staged)"
    description = "the paper's mixture trained gate first, then jointly"
    options = MoeStagedOptions  # type: ignore[assignment]

    def validate(self, options: Any, config: Mapping[str, Any]) -> None:
        super().validate(options.as_moe(), config)

    def personalise(
        self,
        run: RunSpec,
        options: Any,
        clients: Clients,
        inputs: Mapping[str, Output],
        federated: Output | None,
    ) -> Output:
        return train_mixture(run, options.as_moe(), clients, inputs, "MoE (staged) epochs")
