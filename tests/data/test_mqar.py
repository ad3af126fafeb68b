"""MQAR generator: labels are the values paired with the queried keys, vocab halves,
power-law query gaps (chi-square with a fixed seed), determinism, argument errors."""
import math

import numpy as np
import pytest
import torch

from seqmodels.data.mqar import IGNORE_INDEX, mqar


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z=3.09: upper 0.1%)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("vocab,seq_len,k", [(8192, 64, 4), (130, 128, 32), (512, 256, 64)])
def test_labels_are_paired_values(vocab, seq_len, k):
    x, y = mqar(vocab, seq_len, k, 200, seed=3)
    assert x.shape == y.shape == (200, seq_len) and x.dtype == y.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) < vocab
    for row, lab in zip(x.tolist(), y.tolist()):
        keys, values = row[0:2 * k:2], row[1:2 * k:2]
        assert len(set(keys)) == k and all(1 <= t < vocab // 2 for t in keys)
        assert len(set(values)) == k and all(vocab // 2 <= t < vocab for t in values)
        pairs = dict(zip(keys, values))
        queried = [p for p, t in enumerate(lab) if t != IGNORE_INDEX]
        assert len(queried) == k
        assert all(p >= 2 * k and (p - 2 * k) % 2 == 0 for p in queried)
        assert sorted(row[p] for p in queried) == sorted(keys)  # each key queried once
        assert all(lab[p] == pairs[row[p]] for p in queried)


def test_no_random_filler_and_determinism():
    x, y = mqar(1024, 128, 8, 50, random_non_queries=False, seed=0)
    filler = (y == IGNORE_INDEX)
    filler[:, :16] = False
    assert (x[filler] == 0).all()
    a, b = mqar(1024, 128, 8, 50, seed=11), mqar(1024, 128, 8, 50, seed=11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], mqar(1024, 128, 8, 50, seed=12)[0])


@pytest.mark.parametrize("power_a", [0.01, 1.0])
def test_first_query_gap_follows_power_law(power_a):
    """The first draw of a without-replacement sample has exactly the law P(g) ~ (g+1)^(a-1),
    so the first pair's query gap is tested against it (20k examples, chi-square at 0.1%)."""
    n, seq_len, k = 20_000, 64, 4
    x, y = mqar(8192, seq_len, k, n, power_a=power_a, seed=0)
    space = (seq_len - 2 * k) // 2
    first_key = x[:, 0:1]
    query_pos = ((x[:, 2 * k:] == first_key) & (y[:, 2 * k:] != IGNORE_INDEX)).int().argmax(dim=1)
    gaps = (query_pos // 2).numpy()
    counts = np.bincount(gaps, minlength=space)
    p = np.arange(1, space + 1, dtype=float) ** (power_a - 1)
    p /= p.sum()
    expected = n * p
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < chi2_critical(space - 1), chi2
    print(f"power_a={power_a}: chi2={chi2:.1f} (df={space - 1}, 0.1% critical {chi2_critical(space - 1):.1f})")
    if power_a < 1:  # and a uniform law is clearly rejected
        uniform = np.full(space, n / space)
        assert ((counts - uniform) ** 2 / uniform).sum() > 10 * chi2_critical(space - 1)


def test_mqar_errors():
    with pytest.raises(ValueError, match="seq_len must be even, got 65"):
        mqar(1000, 65, 4, 10)
    with pytest.raises(ValueError, match=r"seq_len=60 must be >= 4 \* num_kv_pairs = 64"):
        mqar(1000, 60, 16, 10)
    with pytest.raises(ValueError, match="vocab_size=64 must be > seq_len=64"):
        mqar(64, 64, 4, 10)
    with pytest.raises(ValueError, match="num_examples must be a positive integer, got 0"):
        mqar(1000, 64, 4, 0)
    with pytest.raises(ValueError, match="power_a must be a positive number"):
        mqar(1000, 64, 4, 10, power_a=0.0)
