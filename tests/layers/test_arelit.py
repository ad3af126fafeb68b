"""AReLiT (arXiv 2310.15719, DESIGN §5.11): the five mixer invariants (the tick travels with the
state), the layer against a token loop of the r cosine-modulated traces written here from the
equations, a SeqLM that learns, greedy generate, config errors. float64, tolerance 1e-10."""
import math

import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.testing import (
    assert_rel_close,
    build_mixer,
    check_generate_matches_forward,
    check_mixer_contract,
    train_toy_sequence,
)

TOL64 = 1e-10


def cfg_for(**options):
    return ModelConfig(vocab_size=64, d_model=30, n_heads=2, head_dim_k=5, head_dim_v=7, mixer="arelit", chunk_size=16,
                       mixer_options={"arelit": {"eta": 3, "r": 3, **options}})


@pytest.mark.parametrize("r", [1, 3])
def test_mixer_contract(r):
    mixer = check_mixer_contract(cfg_for(r=r))
    x = torch.randn(1, 37, 30, dtype=torch.float64)
    with torch.no_grad():
        assert mixer(x, return_state=True)[1].tick == 37


def token_loop_reference(mixer, x, r, eps=1e-5):
    """k̃_j, ṽ_j, s and o_t of the paper's approximation, one token at a time (t = 1, 2, ...)."""
    B, T, _ = x.shape
    H, dk, dv, eta = 2, 5, 7, 3
    heads = lambda t: t.view(B, T, H, -1)  # noqa: E731
    relu, sig = torch.relu, torch.sigmoid
    q, k, v = heads(mixer.q_proj(x)), heads(mixer.k_proj(x)), heads(mixer.v_proj(x))
    p1, p2, p3 = heads(mixer.p_proj(x)).split(eta, dim=-1)
    beta, g = sig(heads(mixer.beta_proj(x))), sig(heads(mixer.gamma_proj(x)))
    outer = lambda a, b: torch.einsum("bhn,bhd->bhnd", a, b).reshape(B, H, eta * dk)  # noqa: E731
    omega = [-math.pi + 2 * math.pi * j / (r - 1) for j in range(r)] if r > 1 else [-math.pi]
    k_tr = [x.new_zeros(B, H, eta * dk) for _ in range(r)]
    v_tr = [x.new_zeros(B, H, dv) for _ in range(r)]
    s = x.new_zeros(B, H, eta * dk)
    outs = []
    for t in range(T):
        phi_k, phi_q = outer(relu(p1[:, t]), relu(k[:, t])), outer(relu(p2[:, t]), relu(q[:, t]))
        gamma, b = outer(sig(p3[:, t]), g[:, t]), beta[:, t]
        for j in range(r):
            c = math.cos(omega[j] * (t + 1))
            k_tr[j] = (1 - gamma) * k_tr[j] + c * gamma * phi_k
            v_tr[j] = (1 - b) * v_tr[j] + c * b * v[:, t]
        s = (1 - gamma) * s + gamma * phi_k
        num = sum(v_tr[j] * (k_tr[j] * phi_q).sum(-1, keepdim=True) for j in range(r))
        outs.append(num / (2 * r * (s * phi_q).sum(-1, keepdim=True) + eps))
    return mixer.o_proj(torch.stack(outs, 1).reshape(B, T, H * dv))


@pytest.mark.parametrize("r", [1, 4])
def test_matches_token_loop_of_the_equations(r):
    mixer = build_mixer(cfg_for(r=r))
    with torch.no_grad():  # strong gates: log-decays of several units
        for proj in (mixer.beta_proj, mixer.gamma_proj, mixer.p_proj):
            proj.weight.mul_(5.0)
    x = torch.randn(2, 37, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_rel_close(mixer(x)[0], token_loop_reference(mixer, x, r), TOL64, "arelit vs token loop of the traces")


def test_seqlm_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, mixer="arelit", chunk_size=16, max_seq_len=128,
                      mixer_options={"arelit": {"eta": 2, "r": 2}})
    first, last, model = train_toy_sequence(cfg, steps=50)
    assert first > 3.0 and last < 0.5, (first, last)
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize(
    "options, match",
    [({"r": 0}, "mixer_options.arelit.r must be a positive integer"), ({"eta": 0}, "mixer_options.arelit.eta must be")],
)
def test_bad_config_raises(options, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(d_model=32, n_heads=2, mixer="arelit", mixer_options={"arelit": options})
