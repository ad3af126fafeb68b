"""ReLiT and AReLiT (arXiv 2310.15719, docs/architecture.md §5.11 separable decay): the five mixer invariants
(also with strong gates; AReLiT's token count travels with the state), each layer against a token loop
of its recurrence written here from the equations (ReLiT: C_t, s_t, o_t; AReLiT: the r
cosine-modulated traces), the stable log(1-γ), SeqLMs that learn, greedy generate, config
errors. float64, tolerance 1e-10."""
import dataclasses
import math

import pytest
import torch

from seqmodels import ModelConfig, SeqLM
from seqmodels.modules.relit_base import log1mexp
from seqmodels.testing import (
    assert_rel_close,
    build_mixer,
    check_generate_matches_forward,
    check_mixer_contract,
    train_toy_sequence,
)

TOL64 = 1e-10


def cfg_for(**options):
    return ModelConfig(vocab_size=64, d_model=30, n_heads=2, head_dim_k=5, head_dim_v=7, mixer="relit", chunk_size=16,
                       mixer_options={"relit": {"eta": 3, **options}})


def test_mixer_contract():
    check_mixer_contract(cfg_for())


def strong_gates(mixer, scale=6.0):
    with torch.no_grad():  # gate logits of a few units: log-decays down to about -5 per step
        for proj in (mixer.beta_proj, mixer.gamma_proj, mixer.p_proj):
            proj.weight.mul_(scale)
            proj.bias.uniform_(-3, 3)
    return mixer


def test_mixer_contract_strong_gates(monkeypatch):
    import seqmodels.testing as testing

    build = testing.build_mixer
    monkeypatch.setattr(testing, "build_mixer", lambda *a, **k: strong_gates(build(*a, **k)))
    check_mixer_contract(cfg_for())
    mixer = strong_gates(build_mixer(cfg_for()))
    x = torch.randn(2, 37, 30, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert mixer.features(x)[3].min() < -5  # the gates really are strong


def paper_features(mixer, x):
    """Yield, for t = 0..T-1, (φ(q_t), φ(k_t), v_t, β_t, γ_t) per head: φ = vec(relu(p) ⊗ relu(·)),
    γ = vec(σ(p3) ⊗ σ(W_γ x)), β = σ(W_β x); shapes [B, H, η·dk] / [B, H, dv]."""
    B, T, _ = x.shape
    H, eta = mixer.n_heads, mixer.eta
    heads = lambda t: t.view(B, T, H, -1)  # noqa: E731
    relu, sig = torch.relu, torch.sigmoid
    q, k, v = heads(mixer.q_proj(x)), heads(mixer.k_proj(x)), heads(mixer.v_proj(x))
    p1, p2, p3 = heads(mixer.p_proj(x)).split(eta, dim=-1)
    beta, g = sig(heads(mixer.beta_proj(x))), sig(heads(mixer.gamma_proj(x)))
    outer = lambda a, b: torch.einsum("bhn,bhd->bhnd", a, b).flatten(-2)  # noqa: E731
    for t in range(T):
        phi_q, phi_k = outer(relu(p2[:, t]), relu(q[:, t])), outer(relu(p1[:, t]), relu(k[:, t]))
        yield phi_q, phi_k, v[:, t], beta[:, t], outer(sig(p3[:, t]), g[:, t])


def token_loop_reference(mixer, x, eps):
    """The paper's recurrence C_t, s_t, o_t one token at a time (separable decay, docs/architecture.md §5.11)."""
    B, T, _ = x.shape
    H, dv, f = mixer.n_heads, mixer.head_dim_v, mixer.feature_dim
    C, s, outs = x.new_zeros(B, H, dv, f), x.new_zeros(B, H, f), []
    for phi_q, phi_k, v, beta, gamma in paper_features(mixer, x):
        C = (1 - beta).unsqueeze(-1) * (1 - gamma).unsqueeze(-2) * C + (beta * v).unsqueeze(-1) * (gamma * phi_k).unsqueeze(-2)
        s = (1 - gamma) * s + gamma * phi_k
        num = torch.einsum("bhvf,bhf->bhv", C, phi_q)
        outs.append(num / ((s * phi_q).sum(-1, keepdim=True) + eps))
    return mixer.o_proj(torch.stack(outs, 1).reshape(B, T, H * dv))


@pytest.mark.parametrize("strong", [False, True])
def test_matches_token_loop_of_the_equations(strong):
    mixer = build_mixer(cfg_for())
    if strong:
        strong_gates(mixer)
    x = torch.randn(2, 37, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_rel_close(mixer(x)[0], token_loop_reference(mixer, x, 1e-5), TOL64, "relit vs token loop of C_t, s_t")


def test_log1mexp_is_stable():
    x = -torch.logspace(-30, 3, 200, dtype=torch.float64)
    x.requires_grad_(True)
    y = log1mexp(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and (y <= 0).all() and torch.isfinite(x.grad).all()
    mid = x.detach()[(x.detach() > -30) & (x.detach() < -1e-6)]
    assert_rel_close(log1mexp(mid), torch.log(1 - torch.exp(mid)), 1e-9, "log1mexp vs log(1 - e^x)")


@pytest.mark.parametrize("mixer", ["relit", "arelit"])
def test_gtrxl_block_contract_and_gate(mixer):
    """block: gtrxl: x <- g(x, relu(Mixer(Norm(x)))) with GTrXL's GRU gate (arXiv 1910.06764 §3.1), written out here."""
    options = {"eta": 3, "block": "gtrxl", **({"r": 2} if mixer == "arelit" else {})}
    cfg = ModelConfig(vocab_size=64, d_model=30, n_heads=2, head_dim_k=5, head_dim_v=7, mixer=mixer, chunk_size=16,
                      norm="layernorm", mixer_options={mixer: options})
    layer = check_mixer_contract(cfg)
    x = torch.randn(2, 37, 30, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.relu(layer._mix(torch.nn.functional.layer_norm(x, (30,), eps=cfg.norm_eps), None, False)[0])
    gate = layer.gate
    Wr, Wz, Wg = gate.y_proj.weight.split(30)
    Ur, Uz = gate.x_proj.weight.split(30)
    r = torch.sigmoid(y @ Wr.T + x @ Ur.T)
    z = torch.sigmoid(y @ Wz.T + x @ Uz.T - 2.0)
    h = torch.tanh(y @ Wg.T + (r * x) @ gate.rx_proj.weight.T)
    assert_rel_close(layer(x)[0], (1 - z) * x + z * h, TOL64, "gtrxl block vs GRU gate formula")
    torch.manual_seed(0)
    model = SeqLM(dataclasses.replace(cfg, n_layers=2)).double()
    assert all(block.mixer_norm is None for block in model.blocks)
    check_generate_matches_forward(model, torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(5)))


def test_seqlm_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, mixer="relit", chunk_size=16, max_seq_len=128,
                      mixer_options={"relit": {"eta": 2}})
    first, last, model = train_toy_sequence(cfg, steps=50)
    assert first > 3.0 and last < 0.5, (first, last)
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize(
    "options, match",
    [({"eta": 0}, "eta must be a positive integer"), ({"eps": -1.0}, "eps must be > 0"), ({"block": "gru"}, "block must be one of")],
)
def test_bad_config_raises(options, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(d_model=32, n_heads=2, mixer="relit", mixer_options={"relit": options})


# ------------------------------------------------------------------- AReLiT
def arelit_cfg(**options):
    return ModelConfig(vocab_size=64, d_model=30, n_heads=2, head_dim_k=5, head_dim_v=7, mixer="arelit", chunk_size=16,
                       mixer_options={"arelit": {"eta": 3, "r": 3, **options}})


@pytest.mark.parametrize("r", [1, 3])
def test_arelit_mixer_contract(r):
    mixer = check_mixer_contract(arelit_cfg(r=r))
    x = torch.randn(1, 37, 30, dtype=torch.float64)
    with torch.no_grad():
        assert mixer(x, return_state=True)[1].seen_tokens == 37


def arelit_token_loop_reference(mixer, x, r, eps=1e-5):
    """k̃_j, ṽ_j, s and o_t of the paper's approximation, one token at a time (t = 1, 2, ...; eps in the
    denominator only: the layer's first_tick 1, numerator_eps false; the released defaults: test_arelit.py)."""
    B, T, _ = x.shape
    H, dv, f = mixer.n_heads, mixer.head_dim_v, mixer.feature_dim
    omega = [-math.pi + 2 * math.pi * j / (r - 1) for j in range(r)] if r > 1 else [-math.pi]
    k_tr, v_tr = [x.new_zeros(B, H, f) for _ in range(r)], [x.new_zeros(B, H, dv) for _ in range(r)]
    s, outs = x.new_zeros(B, H, f), []
    for t, (phi_q, phi_k, v, beta, gamma) in enumerate(paper_features(mixer, x), start=1):
        for j in range(r):
            c = math.cos(omega[j] * t)
            k_tr[j] = (1 - gamma) * k_tr[j] + c * gamma * phi_k
            v_tr[j] = (1 - beta) * v_tr[j] + c * beta * v
        s = (1 - gamma) * s + gamma * phi_k
        num = sum(v_tr[j] * (k_tr[j] * phi_q).sum(-1, keepdim=True) for j in range(r))
        outs.append(num / (2 * r * (s * phi_q).sum(-1, keepdim=True) + eps))
    return mixer.o_proj(torch.stack(outs, 1).reshape(B, T, H * dv))


@pytest.mark.parametrize("r", [1, 4])
def test_arelit_matches_token_loop_of_the_equations(r):
    mixer = build_mixer(arelit_cfg(r=r, first_tick=1, numerator_eps=False))
    with torch.no_grad():  # strong gates: log-decays of several units
        for proj in (mixer.beta_proj, mixer.gamma_proj, mixer.p_proj):
            proj.weight.mul_(5.0)
    x = torch.randn(2, 37, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_rel_close(mixer(x)[0], arelit_token_loop_reference(mixer, x, r), TOL64, "arelit vs token loop of the traces")


def test_arelit_seqlm_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, mixer="arelit", chunk_size=16, max_seq_len=128,
                      mixer_options={"arelit": {"eta": 2, "r": 2}})
    # 80 steps: with the released numerator eps (a token with φ(q) = 0 outputs 1) the toy loss is
    # 0.77 after 50 steps and 0.28 after 80 (0.27 after 50 without it)
    first, last, model = train_toy_sequence(cfg, steps=80)
    assert first > 3.0 and last < 0.5, (first, last)
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize(
    "options, match",
    [({"r": 0}, "mixer_options.arelit.r must be a positive integer"), ({"eta": 0}, "mixer_options.arelit.eta must be")],
)
def test_arelit_bad_config_raises(options, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(d_model=32, n_heads=2, mixer="arelit", mixer_options={"arelit": options})
