"""The counter-based generator: exact 32-bit arithmetic, uniformity, independence."""

import torch

from fedmoe import rng


def _lowbias32(x: int) -> int:
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def test_hash_matches_python_integers_including_overflowing_products() -> None:
    values = [0, 1, 12345, 2**31, 2**32 - 1, 0xDEADBEEF]
    got = rng._hash32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [_lowbias32(v) for v in values]


def test_uniform_is_uniform_and_keys_are_independent() -> None:
    keys = rng.client_keys(0, torch.arange(4), "test")
    u = rng.uniform(keys, 3, (20000,), torch.float64)
    assert u.min() >= 0 and u.max() < 1
    assert torch.allclose(u.mean(1), torch.full((4,), 0.5, dtype=torch.float64), atol=0.01)
    hist = torch.histc(u[0], bins=10, min=0, max=1)
    assert (hist - 2000).abs().max() < 200
    corr = torch.corrcoef(u)
    assert (corr - torch.eye(4, dtype=torch.float64)).abs().max() < 0.05
    assert not torch.equal(u, rng.uniform(keys, 4, (20000,), torch.float64))


def test_streams_do_not_depend_on_cohort_composition() -> None:
    a = rng.uniform(rng.client_keys(1, torch.tensor([3]), "p"), 0, (7,))
    b = rng.uniform(rng.client_keys(1, torch.tensor([9, 3]), "p"), 0, (7,))
    assert torch.equal(a[0], b[1])
    c = rng.uniform(rng.client_keys(1, torch.tensor([3]), "q"), 0, (7,))
    d = rng.uniform(rng.client_keys(2, torch.tensor([3]), "p"), 0, (7,))
    assert not torch.equal(a, c) and not torch.equal(a, d)


def test_permutations_are_permutations() -> None:
    perm = rng.permutations(rng.client_keys(0, torch.arange(3), "perm"), 0, 50)
    for row in perm:
        assert sorted(row.tolist()) == list(range(50))
    assert not torch.equal(perm[0], perm[1])


def test_hash_int_mixes_large_and_ordered_parts() -> None:
    assert rng.hash_int(1, 2) != rng.hash_int(2, 1)
    assert rng.hash_int(2**40) != rng.hash_int(0)
    assert 0 <= rng.hash_int(-5) < 2**32
