"""RetNet multi-scale retention (arXiv 2307.08621, Eqs. 5-8; docs/architecture.md §5.2).

float64 equivalences at relative error <= 1e-10; fla's float32 reference at <= 1e-5.
"""
import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.layers.retnet import retention_log_decay
from seqmodels.testing import assert_rel_close, build_mixer, check_mixer_contract

TOL64, TOL32 = 1e-10, 1e-5


def small(**overrides):
    values = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, head_dim_k=16, head_dim_v=32,
                  mixer="retnet", mlp="gelu", mlp_ratio=2, chunk_size=16)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.mark.parametrize("head_norm", ["rmsnorm", "groupnorm"])
def test_mixer_contract(head_norm):
    check_mixer_contract(small(mixer_options={"retnet": {"head_norm": head_norm}}))


def test_decays_are_the_papers():
    expected = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(4)], dtype=torch.float64).log()
    assert_rel_close(retention_log_decay(4), expected, 1e-15, "ln gamma_h")


def test_raw_retention_matches_fla_naive_retention():
    fla_naive = pytest.importorskip("fla.ops.retention.naive", reason="flash-linear-attention not installed")
    cfg = small()
    mixer = build_mixer(cfg)
    x = torch.randn(2, 37, cfg.d_model, dtype=torch.float64)
    q, k, v = mixer.project(x, 0)
    expected = fla_naive.naive_retention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    y, _ = mixer(x)
    assert_rel_close(y, mixer.output(expected.double(), x), TOL32, "retnet layer vs fla naive_retention (float32)")


def torchscale_normalized_retention(q, k, v, log_decay):
    """§2.2's normalized parallel form (torchscale): D_nm / sqrt(Σ_m D_nm), then scores divided
    by clamp(Σ_m |scores|, 1). q, k [B, T, H, Dk], v [B, T, H, Dv], log_decay [H]."""
    time = q.shape[1]
    n = torch.arange(time, dtype=torch.float64)
    diff = n[:, None] - n[None, :]
    decay = (diff[None] * log_decay[:, None, None]).masked_fill(diff[None] < 0, float("-inf")).exp()  # [H,T,T]
    decay = decay / decay.sum(-1, keepdim=True).sqrt()
    scores = torch.einsum("bthd,bshd->bhts", q, k * q.shape[-1] ** -0.5) * decay
    scores = scores / scores.abs().sum(-1, keepdim=True).clamp(min=1)
    return torch.einsum("bhts,bshd->bthd", scores, v)


@pytest.mark.parametrize("head_norm", ["rmsnorm", "groupnorm"])
def test_torchscale_normalized_form_agrees_after_head_norm(head_norm):
    """docs/architecture.md §5.2: normalization scalars are positive per (head, row), so they vanish in the
    per-head norm; with norm eps 1e-12 the remaining difference is below 1e-8."""
    cfg = small(norm_eps=1e-12, mixer_options={"retnet": {"head_norm": head_norm}})
    mixer = build_mixer(cfg)
    x = torch.randn(2, 37, cfg.d_model, dtype=torch.float64)
    q, k, v = mixer.project(x, 0)
    normalized = torchscale_normalized_retention(q, k, v, retention_log_decay(cfg.n_heads))
    y, _ = mixer(x)
    assert_rel_close(y, mixer.output(normalized, x), 1e-8, "torchscale normalized retention after head norm")


def test_recurrent_state_is_retention_sum():
    """The state after T tokens is Σ_s γ^{T-1-s} k_s v_sᵀ (Eq. 6 unrolled), rotary included."""
    cfg = small()
    mixer = build_mixer(cfg)
    x = torch.randn(1, 21, cfg.d_model, dtype=torch.float64)
    _, state = mixer(x, return_state=True)
    _, k, v = mixer.project(x, 0)
    powers = torch.arange(20, -1, -1, dtype=torch.float64)[:, None] * retention_log_decay(cfg.n_heads)[None]
    expected = torch.einsum("th,bthi,bthj->bhij", powers.exp(), k, v)
    assert_rel_close(state.kv, expected, TOL64, "final state")
    assert state.seen_tokens == 21


def test_bad_config():
    with pytest.raises(ValueError, match="head_norm='batchnorm' is not one of"):
        small(mixer_options={"retnet": {"head_norm": "batchnorm"}})
    with pytest.raises(ValueError, match="even head_dim_k, got 15"):
        small(head_dim_k=15)
    with pytest.raises(ValueError, match="unknown option"):
        small(mixer_options={"retnet": {"gamma": 0.9}})


def torchscale_theta_shift(x, positions, head_dim):
    """Transcription of torchscale's RetNetRelPos + theta_shift: angle = 1 / 10000 ** linspace(0, 1,
    head_dim // 2), each angle repeated for an adjacent channel pair; rotate_every_two; float64."""
    angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 2, dtype=torch.float64))
    angle = angle.unsqueeze(-1).repeat(1, 2).flatten()
    sin = torch.sin(positions[:, None].double() * angle[None, :])[:, None, :]
    cos = torch.cos(positions[:, None].double() * angle[None, :])[:, None, :]
    x1, x2 = x[..., ::2], x[..., 1::2]
    rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
    return x * cos + rotated * sin


def test_torchscale_rotary_schedule_matches_its_theta_shift():
    cfg = small(mixer_options={"retnet": {"rotary_schedule": "torchscale"}})
    layer = build_mixer(cfg)
    x = torch.randn(2, 13, cfg.d_model, dtype=torch.float64)
    with torch.no_grad():
        q, k, _ = layer.project(x, offset=5)
        positions = torch.arange(5, 18)
        raw_q, raw_k = layer.split_heads(layer.q_proj(x), layer.dk), layer.split_heads(layer.k_proj(x), layer.dk)
        assert_rel_close(q, torchscale_theta_shift(raw_q, positions, layer.dk), 1e-13, "q vs torchscale theta_shift")
        assert_rel_close(k, torchscale_theta_shift(raw_k, positions, layer.dk), 1e-13, "k vs torchscale theta_shift")
        default = build_mixer(small())
        q_rope, _, _ = default.project(x, offset=5)
        assert (q_rope - q).abs().max() > 1e-2  # the two schedules really differ


def test_torchscale_rotary_schedule_contract():
    check_mixer_contract(small(mixer_options={"retnet": {"rotary_schedule": "torchscale"}}))


def test_bad_rotary_schedule():
    with pytest.raises(ValueError, match=r"rotary_schedule='xpos' is not one of \['rope', 'torchscale'\]"):
        small(mixer_options={"retnet": {"rotary_schedule": "xpos"}})
