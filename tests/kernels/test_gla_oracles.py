"""gla against flash-linear-attention's pure-PyTorch references (an external oracle, docs/architecture.md §8).

fla's naive functions compute in float32 (they cast), so those comparisons use float64 inputs on
our side and the float32 tolerance 1e-5; naive_parallel_based keeps float64, compared at 1e-10.
Layouts: fla's gla/simple_gla references take [B, T, H, D]; retention and based take [B, H, T, D].
"""
import pytest
import torch

from seqmodels.kernels.gla import gla
from seqmodels.testing import assert_rel_close

fla = pytest.importorskip("fla", reason="flash-linear-attention is not installed: fla oracle tests skipped")

B, T, H, DK, DV = 2, 37, 3, 8, 6
F32_TOL = 1e-5


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gates(*shape, seed):
    return -5 * torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) ** 2


@pytest.mark.parametrize("reverse", [False, True])
def test_matches_naive_recurrent_gla(reverse):
    from fla.ops.gla.naive import naive_recurrent_gla

    q, k, v = rand(B, T, H, DK, seed=0), rand(B, T, H, DK, seed=1), rand(B, T, H, DV, seed=2)
    gk, s0 = gates(B, T, H, DK, seed=3), rand(B, H, DK, DV, seed=4)
    flip = (lambda x: x.flip(1)) if reverse else (lambda x: x)  # fla's reverse scan == time flipped
    o_ref, s_ref = naive_recurrent_gla(flip(q), flip(k), flip(v), flip(gk), initial_state=s0, output_final_state=True)
    o, s = gla(q, k, v, gk, initial_state=s0, output_final_state=True, reverse=reverse, chunk_size=16)
    assert_rel_close(o, flip(o_ref), F32_TOL, "output vs naive_recurrent_gla")
    assert_rel_close(s, s_ref, F32_TOL, "final state vs naive_recurrent_gla")


def test_matches_naive_recurrent_simple_gla():
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    q, k, v = rand(B, T, H, DK, seed=5), rand(B, T, H, DK, seed=6), rand(B, T, H, DV, seed=7)
    g, s0 = gates(B, T, H, seed=8), rand(B, H, DK, DV, seed=9)
    o_ref, s_ref = naive_recurrent_simple_gla(q, k, v, g, scale=0.3, initial_state=s0, output_final_state=True)
    o, s = gla(q, k, v, g, scale=0.3, initial_state=s0, output_final_state=True, chunk_size=16)
    assert_rel_close(o, o_ref, F32_TOL, "output vs naive_recurrent_simple_gla")
    assert_rel_close(s, s_ref, F32_TOL, "final state vs naive_recurrent_simple_gla")


@pytest.mark.parametrize("with_decay", [True, False])
def test_matches_naive_parallel_simple_gla(with_decay):
    from fla.ops.simple_gla.naive import naive_parallel_simple_gla

    q, k, v = rand(B, T, H, DK, seed=10), rand(B, T, H, DK, seed=11), rand(B, T, H, DV, seed=12)
    g = gates(B, T, H, seed=13) if with_decay else None
    # fla's reference cannot take g=None (it rearranges it): a zero gate is "no decay" there
    o_ref, _ = naive_parallel_simple_gla(q, k, v, torch.zeros(B, T, H, dtype=torch.float64) if g is None else g)
    o, _ = gla(q, k, v, g, chunk_size=16)
    assert_rel_close(o, o_ref.double(), F32_TOL, "output vs naive_parallel_simple_gla")


def test_matches_naive_retention():
    """RetNet (arXiv 2307.08621, Eq. 5-6): per-head decay γ_h = 1 - 2^{-5-h}, a constant [B, T, H] gate."""
    from fla.ops.retention.naive import naive_retention

    q, k, v = rand(B, H, T, DK, seed=14), rand(B, H, T, DK, seed=15), rand(B, H, T, DV, seed=16)
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float64))
    log_decay = gamma.log().expand(B, T, H)  # broadcast, no copy
    o_ref = naive_retention(q, k, v)
    o, _ = gla(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), log_decay, chunk_size=16)
    assert_rel_close(o, o_ref.transpose(1, 2).double(), F32_TOL, "output vs naive_retention")


def based_features(x):
    """Based's 2nd-order Taylor map (arXiv 2402.18668, Eq. 4): φ(q)·φ(k) = 1 + q·k + (q·k)²/2."""
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / 2 ** 0.5
    return torch.cat([torch.ones_like(x[..., :1]), x, outer], dim=-1)


def test_matches_naive_parallel_based():
    """Based = normalized linear attention with the Taylor map; the normalizer comes from a ones column."""
    from fla.ops.based.naive import naive_parallel_based

    dk = 4
    q, k, v = rand(B, H, T, dk, seed=17), rand(B, H, T, dk, seed=18), rand(B, H, T, DV, seed=19)
    o_ref = naive_parallel_based(q, k, v)  # scale dk ** -0.5 applied to q; o / (z + 1e-6)
    fq, fk = based_features(q.transpose(1, 2) * dk ** -0.5), based_features(k.transpose(1, 2))
    v_ones = torch.cat([v.transpose(1, 2), torch.ones_like(v.transpose(1, 2)[..., :1])], dim=-1)
    o_aug, _ = gla(fq, fk, v_ones, scale=1.0, chunk_size=16)
    o = o_aug[..., :-1] / (o_aug[..., -1:] + 1e-6)
    assert_rel_close(o, o_ref.transpose(1, 2), 1e-10, "output vs naive_parallel_based (float64)")
