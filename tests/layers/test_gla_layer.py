"""GLA layer (arXiv 2312.06635 §4.1-4.4; docs/architecture.md §5.4).

float64 equivalences at relative error <= 1e-10; fla's float32 reference at <= 1e-5.
"""
import pytest
import torch
import torch.nn.functional as F

from seqmodels import ModelConfig
from seqmodels.testing import assert_rel_close, build_mixer, check_mixer_contract

TOL32 = 1e-5


def small(**overrides):
    values = dict(vocab_size=64, d_model=48, n_layers=2, n_heads=4, mixer="gla", chunk_size=16)
    values.update(overrides)
    return ModelConfig(**values)


def test_mixer_contract():
    check_mixer_contract(small())


def test_mixer_contract_strong_gates_odd_dims():
    """Gates near e^{-5} per step (τ = 0.2) and odd head dims (expand_k 0.75 -> Dk 9)."""
    cfg = small(mixer_options={"gla": {"gate_normalizer": 0.2, "expand_k": 0.75}})
    mixer = check_mixer_contract(cfg)
    assert mixer.dk == 9 and mixer.dv == 12


def test_gate_is_low_rank_logsigmoid_over_tau():
    cfg = small()
    mixer = build_mixer(cfg)
    x = torch.randn(2, 5, cfg.d_model, dtype=torch.float64)
    _, _, _, log_decay = mixer.project(x)
    expected = F.logsigmoid(x @ mixer.gate_down.weight.T @ mixer.gate_up.weight.T + mixer.gate_up.bias) / 16
    assert_rel_close(log_decay.flatten(-2), expected, 1e-14, "log alpha")
    assert mixer.gate_down.weight.shape == (16, 48) and mixer.gate_up.weight.shape == (24, 16)


def test_matches_fla_naive_recurrent_gla():
    fla_naive = pytest.importorskip("fla.ops.gla.naive", reason="flash-linear-attention not installed")
    cfg = small()
    mixer = build_mixer(cfg)
    x = torch.randn(2, 37, cfg.d_model, dtype=torch.float64)
    q, k, v, log_decay = mixer.project(x)
    expected, _ = fla_naive.naive_recurrent_gla(q, k, v, log_decay)
    y, _ = mixer(x)
    assert_rel_close(y, mixer.output(expected.double(), x), TOL32, "gla layer vs fla naive_recurrent_gla (float32)")


def test_bad_config():
    with pytest.raises(ValueError, match=r"head_dim_k=16 does not match expand_k=0.5"):
        small(head_dim_k=16)
    with pytest.raises(ValueError, match=r"expand_k=0.3 gives width 14.4"):
        small(mixer_options={"gla": {"expand_k": 0.3}})
    with pytest.raises(ValueError, match=r"gate_normalizer must be > 0"):
        small(mixer_options={"gla": {"gate_normalizer": 0}})
