"""A covariate shift: client groups whose images are rotated (``partition.rotations``).

With ``rotations = R`` (1, 2 or 4), client ``k``'s images (train, validation and local
test alike) are turned by ``k mod R`` quarter turns times ``4 / R``: R = 4 gives four
groups at 0, 90, 180 and 270 degrees, R = 2 two groups at 0 and 180. Labels follow the
partition scheme as usual (``iid`` for a pure covariate shift). The global test set is
the mixture of the groups' distributions: its ``j``-th example is turned as client ``j``'s
would be. The simulator and a Flower node apply the same functions, so client ``k`` sees
the same tensors on both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmoe.engine import ClientData
from fedmoe.errors import ConfigError


def check(rotations: int, input_shape: tuple[int, ...]) -> None:
    """A one-line ConfigError unless ``rotations`` can turn inputs of ``input_shape``."""
    if rotations == 1:
        return
    square = len(input_shape) == 3 and input_shape[1] == input_shape[2]
    if not square:
        raise ConfigError(
            f"partition.rotations = {rotations} turns square images (C, H, H); "
            f"this dataset's inputs are {input_shape}"
        )


def turns(client: int, rotations: int) -> int:
    """Quarter turns of ``client``'s images."""
    return (client % rotations) * (4 // rotations)


def rotate_clients(data: ClientData, clients: Sequence[int], rotations: int) -> ClientData:
    """``data`` (the cohort of ``clients``) with each client's examples turned: the turned
    rows are appended to the inputs, each client's index points at its own."""
    if rotations == 1:
        return data
    by_client = torch.tensor([turns(c, rotations) for c in clients])
    xs, ys, index = [data.x], [data.y], data.index.clone()
    offset = data.x.shape[0]
    for quarter in sorted(set(by_client.tolist()) - {0}):
        mine = (by_client == quarter).nonzero().squeeze(1).to(data.index.device)
        rows = torch.unique(data.index[mine])  # sorted
        xs.append(torch.rot90(data.x[rows], quarter, dims=(-2, -1)))
        ys.append(data.y[rows])
        index[mine] = offset + torch.searchsorted(rows, data.index[mine])
        offset += len(rows)
    return ClientData(torch.cat(xs), torch.cat(ys), index, data.n, data.shared)


def rotate_examples(x: torch.Tensor, rotations: int) -> torch.Tensor:
    """The global test set's inputs with example ``j`` turned as client ``j``'s are."""
    if rotations == 1:
        return x
    out = x.clone()
    for group in range(1, rotations):
        out[group::rotations] = torch.rot90(x[group::rotations], turns(group, rotations), (-2, -1))
    return out
