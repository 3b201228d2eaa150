"""Model parameters <-> Flower ``ArrayRecord``, and the checks every received model passes.

fedmoe keeps one model as a parameter dict whose tensors carry a client axis of length
1 (:data:`fedmoe.models.Params`); on the wire a model is an ``ArrayRecord`` of the
same names without that axis, each array serialised by NumPy (``allow_pickle=False``).

:func:`params_from_record` is the only way a received model enters fedmoe: it checks the
keys, shapes, dtypes and finiteness against a reference model and raises
:class:`UpdateRejected` naming the first problem, so a malformed or poisoned update is
dropped with a reason instead of being averaged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedmoe.errors import FedmoeError
from fedmoe.federation import State, num_models
from fedmoe.models import Params


class UpdateRejected(FedmoeError):
    """A received model failed validation; the message says which check and where."""


def params_to_record(params: Params) -> ArrayRecord:
    """One model (every tensor ``(1, ...)``) as an ``ArrayRecord`` of ``(...)`` arrays."""
    arrays: dict[str, Array] = {}
    for name, tensor in params.items():
        if tensor.shape[:1] != (1,):
            raise ValueError(
                f"{name}: expected a client axis of length 1, got {tuple(tensor.shape)}"
            )
        arrays[name] = Array(tensor.detach()[0].cpu().contiguous().numpy())
    return ArrayRecord(arrays)


def params_from_record(record: ArrayRecord, reference: Params) -> Params:
    """The model in ``record``, checked against ``reference`` (one model, ``(1, ...)``).

    Every key of ``reference`` must be present and no other; each array must decode,
    have the reference's shape (without the client axis) and dtype, and hold only
    finite values. Returns tensors with a client axis of length 1 on the reference's
    device. Raises :class:`UpdateRejected` otherwise.
    """
    if not isinstance(record, ArrayRecord):
        raise UpdateRejected(f"expected an ArrayRecord, got {type(record).__name__}")
    missing = sorted(set(reference) - set(record.keys()))
    extra = sorted(set(record.keys()) - set(reference))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected keys {', '.join(extra)}")
        raise UpdateRejected("; ".join(parts))
    out: Params = {}
    for name, ref in reference.items():
        expected_shape = tuple(ref.shape[1:])
        expected_dtype = np.dtype(str(ref.dtype).removeprefix("torch."))
        array = _decode(name, record[name])
        if array.dtype != expected_dtype:
            raise UpdateRejected(f"{name}: dtype {array.dtype}, expected {expected_dtype}")
        if array.shape != expected_shape:
            raise UpdateRejected(f"{name}: shape {array.shape}, expected {expected_shape}")
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise UpdateRejected(f"{name}: {bad} non-finite value(s)")
        out[name] = torch.from_numpy(array.copy()).unsqueeze(0).to(ref.device)
    return out


def models_to_records(params: Params, prefix: str) -> dict[str, ArrayRecord]:
    """Several models (leading axis ``M``) as records ``<prefix>.0`` .. ``<prefix>.<M-1>``."""
    return {
        f"{prefix}.{j}": params_to_record({n: p[j : j + 1] for n, p in params.items()})
        for j in range(num_models(params))
    }


def models_from_content(
    content: RecordDict, prefix: str, count: int, reference: Params
) -> Params | None:
    """The ``count`` models :func:`models_to_records` put in ``content``, stacked on the
    leading axis and each checked by :func:`params_from_record`; ``None`` when the content
    has none of them. Raises :class:`UpdateRejected` when some are missing or extra."""
    names = {k for k in content.array_records if k.startswith(f"{prefix}.")}
    if not names:
        return None
    expected = [f"{prefix}.{j}" for j in range(count)]
    if names != set(expected):
        raise UpdateRejected(
            f"expected the {count} models {', '.join(expected)}, got {', '.join(sorted(names))}"
        )
    models = [params_from_record(content.array_records[k], reference) for k in expected]
    return {n: torch.cat([m[n] for m in models]) for n in reference}


def server_to_records(params: Params, name: str) -> dict[str, ArrayRecord]:
    """A server's model(s) as records: ``name`` for one model, ``name.0`` ... for
    several (leading axis)."""
    if num_models(params) == 1:
        return {name: params_to_record(params)}
    return models_to_records(params, name)


def server_from_content(content: RecordDict, name: str, reference: Params) -> Params:
    """The server model(s) :func:`server_to_records` put in ``content`` under ``name``,
    each checked against ``reference`` (the method's initial server model(s), whose
    leading axis says how many); :class:`UpdateRejected` when absent or malformed."""
    count = num_models(reference)
    one = {n: p[:1] for n, p in reference.items()}
    if count == 1:
        if name not in content.array_records:
            raise UpdateRejected(f"the message carries no {name!r} model")
        return params_from_record(content.array_records[name], one)
    models = models_from_content(content, name, count, one)
    if models is None:
        raise UpdateRejected(f"the message carries none of the {count} {name!r} models")
    return models


def state_to_record(state: State) -> ArrayRecord:
    """A node's own state (any shapes) as an ArrayRecord, for ``context.state``."""
    return ArrayRecord({n: Array(t.detach().cpu().contiguous().numpy()) for n, t in state.items()})


def state_from_record(record: ArrayRecord, device: torch.device) -> State:
    """The state :func:`state_to_record` kept (the node's own: not validated further)."""
    return {n: torch.from_numpy(_decode(n, record[n]).copy()).to(device) for n in record}


def _decode(name: str, array: Any) -> np.ndarray:
    if not isinstance(array, Array):
        raise UpdateRejected(f"{name}: not an Array")
    try:
        decoded = array.numpy()
    except Exception as exc:  # any decoding failure is the sender's fault
        raise UpdateRejected(f"{name}: cannot decode array ({type(exc).__name__}: {exc})") from None
    if not isinstance(decoded, np.ndarray):
        raise UpdateRejected(f"{name}: decoded to {type(decoded).__name__}, not an array")
    if array.dtype != str(decoded.dtype) or tuple(array.shape) != decoded.shape:
        raise UpdateRejected(
            f"{name}: declared {array.dtype} {tuple(array.shape)} but holds "
            f"{decoded.dtype} {decoded.shape}"
        )
    return decoded


def number(value: object, key: str) -> float:
    """A record's scalar as a float; ValueError naming ``key`` unless it is an int or a
    float (not a bool, not a list)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} must be a number, got {value!r}")
    return float(value)


def count_arrays(content: RecordDict) -> tuple[int, int]:
    """How many arrays and how many bytes of array data a message's content carries."""
    arrays = 0
    nbytes = 0
    for record in content.array_records.values():
        for array in record.values():
            arrays += 1
            nbytes += len(array.data)
    return arrays, nbytes
