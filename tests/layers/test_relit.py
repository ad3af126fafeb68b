"""ReLiT (arXiv 2310.15719, DESIGN §5.11 separable decay): the five mixer invariants (also with
strong gates), the layer against a token loop of the recurrence written here from the equations
(C_t, s_t, o_t), the stable log(1-γ), a SeqLM that learns, greedy generate, config errors.
float64, tolerance 1e-10."""
import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.layers.relit import log1mexp
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


def token_loop_reference(mixer, x, eps):
    """The paper's recurrence, one token at a time, from the layer's own projections."""
    B, T, _ = x.shape
    H, dk, dv, eta = 2, 5, 7, 3
    heads = lambda t: t.view(B, T, H, -1)  # noqa: E731
    relu, sig = torch.relu, torch.sigmoid
    q, k, v = heads(mixer.q_proj(x)), heads(mixer.k_proj(x)), heads(mixer.v_proj(x))
    p1, p2, p3 = heads(mixer.p_proj(x)).split(eta, dim=-1)
    beta, g = sig(heads(mixer.beta_proj(x))), sig(heads(mixer.gamma_proj(x)))
    outer = lambda a, b: torch.einsum("bhn,bhd->bhnd", a, b).reshape(B, H, eta * dk)  # noqa: E731
    C = x.new_zeros(B, H, dv, eta * dk)
    s = x.new_zeros(B, H, eta * dk)
    outs = []
    for t in range(T):
        phi_k, phi_q = outer(relu(p1[:, t]), relu(k[:, t])), outer(relu(p2[:, t]), relu(q[:, t]))
        gamma = outer(sig(p3[:, t]), g[:, t])
        C = (1 - beta[:, t]).unsqueeze(-1) * (1 - gamma).unsqueeze(-2) * C \
            + (beta[:, t] * v[:, t]).unsqueeze(-1) * (gamma * phi_k).unsqueeze(-2)
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


def test_seqlm_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, mixer="relit", chunk_size=16, max_seq_len=128,
                      mixer_options={"relit": {"eta": 2}})
    first, last, model = train_toy_sequence(cfg, steps=50)
    assert first > 3.0 and last < 0.5, (first, last)
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("options, match", [({"eta": 0}, "eta must be a positive integer"), ({"eps": -1.0}, "eps must be > 0")])
def test_bad_config_raises(options, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(d_model=32, n_heads=2, mixer="relit", mixer_options={"relit": options})
