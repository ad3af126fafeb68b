"""AReLiT against the authors' released equations (github.com/subho406/agalite,
src/models/relit/arelit.py), transcribed here as a plain float64 token loop from the raw
projections (no gla, no shared feature code): memory tick 1 before the first token, token t of a
call at tick + t (so the first token at tick 2), ω = linspace(-π, π, r), traces decayed by 1-γ and
1-β, s accumulating γ⊙φ(k) before modulation, o = (Σ_j ṽ_j (k̃_j·φ(q)) + eps) / (2r s·φ(q) + eps).
Tolerance 1e-10 relative in float64."""
import math

import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.testing import assert_rel_close, build_mixer, rel_rms_err

TOL64 = 1e-10
D, H, DK, DV, ETA = 24, 2, 4, 5, 3


def cfg(r, **options):
    return ModelConfig(vocab_size=64, d_model=D, n_heads=H, head_dim_k=DK, head_dim_v=DV, mixer="arelit", chunk_size=16,
                       mixer_options={"arelit": {"eta": ETA, "r": r, **options}})


def released_arelit(mixer, x, r, eps=1e-5, first_tick=2, numerator_eps=True):
    """The released forward pass one token at a time. Features are flattened dk-major (the layer
    uses η-major): every sum below runs over the same pairs, so the order must not matter."""
    B, T, _ = x.shape
    split = lambda t: t.reshape(B, T, H, -1)  # noqa: E731
    q, k, v = split(mixer.q_proj(x)), split(mixer.k_proj(x)), split(mixer.v_proj(x))
    p = split(mixer.p_proj(x))
    p1, p2, p3 = p[..., :ETA], p[..., ETA:2 * ETA], p[..., 2 * ETA:]
    beta, gamma_raw = torch.sigmoid(split(mixer.beta_proj(x))), torch.sigmoid(split(mixer.gamma_proj(x)))
    feat = lambda a, b: (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2)  # a [.., dk], b [.., η] -> dk-major
    omegas = [-math.pi + 2 * math.pi * j / (r - 1) for j in range(r)] if r > 1 else [-math.pi]
    f = ETA * DK
    tilde_k = x.new_zeros(B, r, H, f)
    tilde_v = x.new_zeros(B, r, H, DV)
    s = x.new_zeros(B, H, f)
    tick = first_tick - 1  # the memory's tick before the first token
    outs = []
    for t in range(T):
        tick_t = tick + (t + 1)
        occil = x.new_tensor([math.cos(tick_t * w) for w in omegas])  # [r]
        keys = feat(torch.relu(k[:, t]), torch.relu(p1[:, t]))
        queries = feat(torch.relu(q[:, t]), torch.relu(p2[:, t]))
        gammas = feat(gamma_raw[:, t], torch.sigmoid(p3[:, t]))
        values = v[:, t] * beta[:, t]
        keys = keys * gammas
        s_new = keys
        keys_r = occil[None, :, None, None] * keys[:, None]
        values_r = occil[None, :, None, None] * values[:, None]
        tilde_k = (1 - gammas[:, None]) * tilde_k + keys_r
        tilde_v = (1 - beta[:, t][:, None]) * tilde_v + values_r
        s = (1 - gammas) * s + s_new
        kdq = (tilde_k * queries[:, None]).sum(-1)  # [B, r, H]
        kv = (tilde_v * kdq[..., None]).sum(1)  # [B, H, DV]
        norm = (s * queries).sum(-1, keepdim=True)
        outs.append(((kv + eps) if numerator_eps else kv) / (2 * r * norm + eps))
    return mixer.o_proj(torch.stack(outs, 1).reshape(B, T, H * DV))


def strong(mixer):
    with torch.no_grad():
        for proj in (mixer.beta_proj, mixer.gamma_proj, mixer.p_proj):
            proj.weight.mul_(4.0)
    return mixer


X = torch.randn(2, 29, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.mark.parametrize("r", [2, 3, 4, 5])
def test_defaults_match_released_equations(r):
    mixer = strong(build_mixer(cfg(r)))
    with torch.no_grad():
        assert_rel_close(mixer(X)[0], released_arelit(mixer, X, r), TOL64, f"arelit r={r} vs released equations")


@pytest.mark.parametrize("r", [2, 5])
def test_prefill_then_step_keeps_the_released_ticks(r):
    # the tick travels with the state: a prefill of 11 tokens then single steps equal the full pass
    mixer = strong(build_mixer(cfg(r)))
    with torch.no_grad():
        ref = released_arelit(mixer, X, r)
        y, state = mixer(X[:, :11], return_state=True)
        ys = [y]
        for t in range(11, X.shape[1]):
            y_t, state = mixer.step(X[:, t], state)
            ys.append(y_t[:, None])
    assert_rel_close(torch.cat(ys, 1), ref, TOL64, "prefill + steps vs released equations")


@pytest.mark.parametrize("r", [2, 3, 4, 5])
def test_options_reproduce_one_based_ticks_and_plain_numerator(r):
    mixer = strong(build_mixer(cfg(r, first_tick=1, numerator_eps=False)))
    with torch.no_grad():
        ref = released_arelit(mixer, X, r, first_tick=1, numerator_eps=False)
        assert_rel_close(mixer(X)[0], ref, TOL64, "first_tick 1, no numerator eps")


def test_tick_offset_is_invisible_only_up_to_r_3():
    # ω_j ∈ {0, ±π} for r <= 3: a shift of every tick flips both traces' signs together; from r = 4 on it does not
    gaps = {}
    for r in (2, 3, 4, 5):
        mixer = build_mixer(cfg(r))
        with torch.no_grad():
            gaps[r] = rel_rms_err(released_arelit(mixer, X, r, first_tick=1), released_arelit(mixer, X, r))
    assert gaps[2] < 1e-12 and gaps[3] < 1e-12, gaps
    assert gaps[4] > 0.05 and gaps[5] > 0.05, gaps


def test_bad_options_raise():
    with pytest.raises(ValueError, match="mixer_options.arelit.first_tick must be a positive integer"):
        cfg(2, first_tick=0)
    with pytest.raises(ValueError, match="mixer_options.arelit.numerator_eps must be true or false"):
        cfg(2, numerator_eps="yes")
