"""LightNet (arXiv 2405.21022; docs/architecture.md §5.5): the additive recurrence and its decoding state.

float64 equivalences at relative error <= 1e-10.
"""
import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.kernels.gla import gla
from seqmodels.layers.lightnet import additive_gates
from seqmodels.testing import assert_rel_close, build_mixer, check_mixer_contract

TOL64 = 1e-10


def small(**overrides):
    values = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, head_dim_k=12, head_dim_v=16,
                  mixer="lightnet", chunk_size=16, mixer_options={"lightnet": {"gate_rank": 8}})
    values.update(overrides)
    return ModelConfig(**values)


def softmax_weighted_sum(q, k, v, scale):
    """o_t = scale Σ_c q_t[c] Σ_{s≤t} (e^{k_s[c]} / Σ_{j≤t} e^{k_j[c]}) v_s — the closed form.
    q, k [B, T, H, Dk], v [B, T, H, Dv]; -inf keys weigh nothing."""
    time = q.shape[1]
    causal = torch.ones(time, time, dtype=torch.bool).tril()  # [t, s]
    logits = k[:, None].expand(-1, time, -1, -1, -1).masked_fill(~causal[None, :, :, None, None], float("-inf"))
    weights = torch.nan_to_num(logits.softmax(dim=2))  # [B, t, s, H, Dk]; a row of -inf only -> 0
    return scale * torch.einsum("bthc,btshc,bshd->bthd", q, weights, v)


def test_mixer_contract():
    check_mixer_contract(small())


@pytest.mark.parametrize("key_gain", [1.0, 8.0])
def test_recurrence_equals_softmax_weighted_sum(key_gain):
    """key_gain 8 makes |k| ~ 10: log-decays far below -5 per step, naive and chunked alike."""
    cfg = small()
    mixer = build_mixer(cfg)
    with torch.no_grad():
        mixer.k_proj.weight.mul_(key_gain)
    x = 2 * torch.randn(2, 37, cfg.d_model, dtype=torch.float64)
    q, k, v = mixer.project(x)
    expected = mixer.output(softmax_weighted_sum(q, k, v, cfg.dk ** -0.5), x)
    for backend in ("naive", "torch"):
        mixer.cfg = small(kernel_backend=backend)
        y, _ = mixer(x)
        assert_rel_close(y, expected, TOL64, f"LightNet layer ({backend}) vs closed form")
    _, log_decay, _ = additive_gates(k)
    assert log_decay.min() < -5 or key_gain == 1.0


def test_padding_keys_at_minus_inf_are_skipped():
    """Leading and inner pads (k = -inf) give finite gates and exactly the closed form."""
    torch.manual_seed(1)
    q, k = torch.randn(2, 2, 23, 3, 5, dtype=torch.float64)
    v = torch.randn(2, 23, 3, 4, dtype=torch.float64)
    k[:, :4] = float("-inf")
    k[1, 10:13] = float("-inf")
    k_tilde, log_decay, z_last = additive_gates(k)
    assert torch.isfinite(k_tilde).all() and torch.isfinite(log_decay).all() and (log_decay <= 0).all()
    for backend in ("naive", "torch"):
        o, _ = gla(q, k_tilde, v, log_decay, scale=1.0, chunk_size=8, backend=backend)
        assert_rel_close(o, softmax_weighted_sum(q, k, v, 1.0), TOL64, f"padded keys ({backend})")
    assert_rel_close(z_last, torch.logsumexp(k, dim=1), TOL64, "z_T")


def test_state_carries_log_normalizer():
    cfg = small()
    mixer = build_mixer(cfg)
    x = torch.randn(2, 29, cfg.d_model, dtype=torch.float64)
    _, state = mixer(x, return_state=True)
    _, k, v = mixer.project(x)
    assert_rel_close(state.log_normalizer, torch.logsumexp(k, dim=1), TOL64, "z after the prefix")
    weights = torch.softmax(k, dim=1)  # S_T = Σ_s softmax_s(k)[c] v_s
    assert_rel_close(state.kv, torch.einsum("bshc,bshd->bhcd", weights, v), TOL64, "S after the prefix")


def test_bad_config():
    with pytest.raises(ValueError, match="gate_rank must be a positive integer, got 0"):
        small(mixer_options={"lightnet": {"gate_rank": 0}})
    with pytest.raises(ValueError, match="unknown option"):
        small(mixer_options={"lightnet": {"rank": 4}})
