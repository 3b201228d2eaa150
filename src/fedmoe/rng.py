"""Counter-based random numbers, vectorised over clients.

Every random draw in fedmoe (weight initialisation, batch order, dropout masks, client
sampling) is a pure function of ``(seed, client, phase, counter)``. Draws for K clients
are one tensor computation, and a client's numbers do not depend on which other clients
share its cohort, so results are the same however clients are chunked.

The generator is a 32-bit integer hash (Chris Wellons' ``lowbias32``) applied to a
per-client key mixed with a counter; it is bijective on 32-bit words and passes the
avalanche tests its author reports, which is plenty for shuffling and dropout. Arithmetic
is done in int64 and masked to 32 bits; torch's int64 multiply wraps, which keeps the
low 32 bits exact.
"""

from __future__ import annotations

import zlib

import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` on int64 tensors holding values in ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def hash_int(*parts: int) -> int:
    """Mix integers (any size) into one 32-bit key, order-sensitive."""
    acc = torch.zeros((), dtype=torch.int64)
    for part in parts:
        word = int(part) & _MASK32
        high = (int(part) >> 32) & _MASK32
        acc = _hash32((acc + _GOLDEN + word) & _MASK32)
        if high:
            acc = _hash32((acc + _GOLDEN + high) & _MASK32)
    return int(acc)


def phase_id(name: str) -> int:
    """A stable integer for a phase name (``"init/local"``, ``"dropout/moe"``, ...)."""
    return zlib.crc32(name.encode())


def client_keys(seed: int, clients: torch.Tensor, phase: str) -> torch.Tensor:
    """Per-client 32-bit keys for one phase.

    ``clients`` is an int64 tensor of client ids, shape ``(K,)``; returns int64 ``(K,)``.
    """
    base = hash_int(seed, phase_id(phase))
    return _hash32((_hash32((clients.to(torch.int64) + base) & _MASK32) + _GOLDEN) & _MASK32)


def random_words(keys: torch.Tensor, counter: int, n: int) -> torch.Tensor:
    """``n`` random 32-bit words per key for one counter value: int64 ``(K, n)``."""
    stream = _hash32((keys + hash_int(counter)) & _MASK32)
    idx = torch.arange(n, dtype=torch.int64, device=keys.device)
    return _hash32((stream[:, None] * 0x01000193 + idx[None, :] * _GOLDEN) & _MASK32)


def uniform(
    keys: torch.Tensor,
    counter: int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform numbers in ``[0, 1)`` of shape ``(K, *shape)``, one stream per key."""
    n = 1
    for d in shape:
        n *= d
    words = random_words(keys, counter, n)
    return (words.to(torch.float64) / 2.0**32).to(dtype).reshape(keys.shape[0], *shape)


def permutations(keys: torch.Tensor, counter: int, n: int) -> torch.Tensor:
    """A random permutation of ``range(n)`` per key: int64 ``(K, n)``."""
    return torch.argsort(random_words(keys, counter, n), dim=1, stable=True)


def subkeys(keys: torch.Tensor, purpose: int) -> torch.Tensor:
    """Independent keys for a sub-purpose (batch order, dropout, ...) of each key."""
    return _hash32((keys + hash_int(purpose, 0x5EED)) & _MASK32)
