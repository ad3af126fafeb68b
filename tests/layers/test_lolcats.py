"""LoLCATs (arXiv 2410.10254; docs/architecture.md §5.10): the layer against a float64 transcription of the released
sliding-window equations written here as a plain token loop (rotary q/k before both branches, window terms × γ,
linear terms × 1 or × (1 − γ), one shared normalizer), values and gradients; the five mixer invariants; step,
prefill and continuation for every option set; from_attention (weights and the teacher's rotary switch copied,
kaiming or identity feature maps, σ(w_h) = 0.1) with implied attention weights that are non-negative, sum to 1 and
reproduce the layer; a SeqLM that learns, greedy generate, presets, config errors. float64, tolerance 1e-10."""
import math

import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.layers.lolcats import LolcatsAttention
from seqmodels.testing import (
    assert_rel_close,
    build_mixer,
    check_generate_matches_forward,
    check_mixer_contract,
    check_prefill_continuation,
    check_prefill_in_pieces,
    check_step_matches_forward,
    train_toy_sequence,
)

TOL64 = 1e-10
THETA = 500.0  # small rope_theta: the rotations change a lot over the test's 23-37 positions
TODAY = {"linear_factor": "one_minus_gamma", "rope": False, "feature_dim": None, "feature_init": "identity"}
OPTION_SETS = [{}, TODAY, {"linear_factor": "one_minus_gamma"}, {"rope": False, "feature_dim": 5}]


def cfg_for(n_kv_heads=None, **options):
    options = {"window": 8, "feature_dim": 10, **options}
    return ModelConfig(vocab_size=64, d_model=36, n_heads=3, n_kv_heads=n_kv_heads, mixer="lolcats", chunk_size=16,
                       rope_theta=THETA, mixer_options={"lolcats": options})


def randomize(mixer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (mixer.feature_q, mixer.feature_k, mixer.window_logit):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return mixer


def _x(T=37, seed=1):
    return torch.randn(2, T, 36, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ the released equations, written out
def rotate_at(x, position, theta):
    """Llama rotary of x [..., D] at one integer position: pairs (r, r + D/2) turned by position·θ^(−2r/D),
    the angles in float32 as Hugging Face's Llama computes them."""
    D = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    angle = torch.tensor(float(position), dtype=torch.float32) * inv_freq
    cos, sin = angle.cos().double(), angle.sin().double()
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def hedgehog(u):
    """φ(u) = max([softmax(u), softmax(−u)], 1e-12), u [F] -> [2F]."""
    e_pos, e_neg = torch.exp(u - u.max()), torch.exp(-u - (-u).max())
    return torch.cat([e_pos / e_pos.sum(), e_neg / e_neg.sum()]).clamp(min=1e-12)


def released_reference(mixer, x):
    """y [B, T, d_model] by the released sliding-window LoLCATs equations, one token, head and key at a time."""
    opts, (B, T, _) = mixer.options, x.shape
    H, Hkv, D, w = mixer.n_heads, mixer.n_kv_heads, mixer.dk, opts.window
    q = (x @ mixer.q_proj.weight.T).view(B, T, H, D)
    k = (x @ mixer.k_proj.weight.T).view(B, T, Hkv, D)
    v = (x @ mixer.v_proj.weight.T).view(B, T, Hkv, mixer.dv)
    gamma = 1 / (1 + torch.exp(-mixer.window_logit))
    out = []
    for b in range(B):
        rows = []
        for i in range(T):
            heads = []
            for h in range(H):
                g = h // (H // Hkv)  # the query head's key/value head
                def key(j):
                    return rotate_at(k[b, j, g], j, THETA) if opts.rope else k[b, j, g]
                q_i = rotate_at(q[b, i, h], i, THETA) if opts.rope else q[b, i, h]
                window = list(range(max(0, i - w + 1), i + 1))
                scores = [torch.dot(q_i, key(j)) / math.sqrt(D) for j in window]
                m = max(scores)
                lam = 1.0 if opts.linear_factor == "released" else 1 - gamma[h]
                num, den = 0.0, 0.0
                for s, j in zip(scores, window):
                    num, den = num + gamma[h] * torch.exp(s - m) * v[b, j, g], den + gamma[h] * torch.exp(s - m)
                phi_q = hedgehog(q_i @ mixer.feature_q[h])
                for j in range(0, i - w + 1):
                    a = lam * torch.dot(phi_q, hedgehog(key(j) @ mixer.feature_k[h]))
                    num, den = num + a * v[b, j, g], den + a
                heads.append(num / den)
            rows.append(torch.cat(heads))
        out.append(torch.stack(rows))
    return torch.stack(out) @ mixer.o_proj.weight.T


@pytest.mark.parametrize("n_kv_heads, options", [(1, {}), (None, {}), (1, {"linear_factor": "one_minus_gamma"}),
                                                 (1, TODAY), (1, {"window": 1})])
def test_matches_released_equations_values_and_gradients(n_kv_heads, options):
    mixer = randomize(build_mixer(cfg_for(n_kv_heads, **options)))
    x = _x(T=23).requires_grad_(True)
    weight = torch.randn(2, 23, 36, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    params = [x, mixer.feature_q, mixer.feature_k, mixer.window_logit, mixer.q_proj.weight, mixer.v_proj.weight]
    y, _ = mixer(x)
    grads = torch.autograd.grad((y * weight).sum(), params)
    expected = released_reference(mixer, x)
    expected_grads = torch.autograd.grad((expected * weight).sum(), params)
    assert_rel_close(y, expected, TOL64, "layer vs released equations")
    for name, got, want in zip(["x", "feature_q", "feature_k", "window_logit", "q_proj", "v_proj"], grads,
                               expected_grads):
        assert_rel_close(got, want, 1e-9, f"gradient of {name}")


@pytest.mark.parametrize("T, options", [(37, {}), (23, {"window": 1}), (8, {}), (16, {}), (5, {}), (40, TODAY),
                                      (33, {"linear_factor": "one_minus_gamma"}), (37, {"branch_off": True})])
def test_blocked_training_form_matches_the_masked_form(T, options):
    """forward without state or pads (`_mix_blocked`, O(T·w)) = the T × T masked form it runs with a state
    (an empty one here), values and gradients, float64; T below, at and across multiples of the window."""
    options = dict(options)
    branch_off = options.pop("branch_off", False)
    mixer = randomize(build_mixer(cfg_for(1, **options)))
    mixer.linear_branch_enabled = not branch_off
    x = _x(T=T).requires_grad_(True)
    weight = torch.randn(2, T, 36, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    params = [x, mixer.feature_q, mixer.feature_k, mixer.window_logit, mixer.q_proj.weight, mixer.k_proj.weight]
    y, _ = mixer(x)
    grads = torch.autograd.grad((y * weight).sum(), params, allow_unused=True, materialize_grads=True)
    expected, _ = mixer(x, state=mixer.init_state(2))
    expected_grads = torch.autograd.grad((expected * weight).sum(), params, allow_unused=True,
                                         materialize_grads=True)
    assert_rel_close(y, expected, TOL64, "blocked vs masked form")
    for name, got, want in zip(["x", "feature_q", "feature_k", "window_logit", "q_proj", "k_proj"], grads,
                               expected_grads):
        if want.abs().max() < 1e-12:  # γ cancels while no key has left the window; φ unused with the branch off
            assert got.abs().max() < 1e-12, name
            continue
        assert_rel_close(got, want, TOL64, f"gradient of {name}")


def test_released_and_today_differ_once_keys_leave_the_window():
    """The defaults are not today's behaviour: each released switch changes the output of a trained-looking layer."""
    x = _x(T=23)
    base = randomize(build_mixer(cfg_for(1)))
    y = base(x)[0]
    for option in ({"linear_factor": "one_minus_gamma"}, {"rope": False}):
        other = build_mixer(cfg_for(1, **option))
        other.load_state_dict(base.state_dict())
        assert (other(x)[0] - y).abs().max() > 1e-3 * y.abs().max(), option


# ----------------------------------------------------------------------------- invariants and decoding
@pytest.mark.parametrize("n_kv_heads, options", [(None, {}), (1, {}), (1, {"window": 1}), (None, {"window": 40}),
                                                 (1, TODAY)])
def test_mixer_contract(n_kv_heads, options):
    check_mixer_contract(cfg_for(n_kv_heads, **options))


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("split", [3, 21])
def test_step_prefill_and_continuation_with_random_parameters(options, split):
    mixer = randomize(build_mixer(cfg_for(1, **options)))
    x = _x()
    check_step_matches_forward(mixer, x, TOL64)
    check_prefill_continuation(mixer, x, split, TOL64)
    check_prefill_in_pieces(mixer, x, [split, 5, 37 - split - 5], TOL64)


def test_float32_step_matches_forward():
    """float32: forward == token-by-token step within 1e-5 relative (states accumulate in float32)."""
    mixer = build_mixer(cfg_for(), dtype=torch.float32)
    x = torch.randn(2, 37, 36, generator=torch.Generator().manual_seed(7))
    check_step_matches_forward(mixer, x, 1e-5)


# -------------------------------------------------------------------------------------- from_attention
def _teacher(rope=True):
    cfg = ModelConfig(vocab_size=64, d_model=36, n_heads=3, n_kv_heads=1, mixer="attention", rope_theta=THETA,
                      mixer_options={"attention": {"rope": rope}})
    teacher = build_mixer(cfg)
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0.0, 0.3)
    return teacher


def implied_weights(mixer, x):
    """A [B,H,T,T]: (γ e^{s_ij - m_i} [window] + λ φ_q·φ_k [older]) / one shared sum, on rotated q/k."""
    T, w = x.shape[1], mixer.options.window
    q, k, _ = mixer.project(x)
    q, k = mixer.rotate(q, k, 0)
    k = mixer.expand_kv(k)
    def phi(t, W):
        u = torch.einsum("bthd,hdf->bthf", t, W)
        return torch.cat([u.softmax(-1), (-u).softmax(-1)], -1).clamp(min=1e-12)
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    in_window = (s <= t) & (s > t - w)
    scores = (torch.einsum("bthd,bshd->bhts", q, k) / mixer.dk ** 0.5).masked_fill(~in_window, float("-inf"))
    gamma = torch.sigmoid(mixer.window_logit)[:, None, None]
    lam = 1.0 if mixer.options.linear_factor == "released" else 1 - gamma
    window = gamma * torch.exp(scores - scores.amax(-1, keepdim=True))
    linear = lam * torch.einsum("bthf,bshf->bhts", phi(q, mixer.feature_q), phi(k, mixer.feature_k)) * (s <= t - w)
    raw = window + linear
    return raw / raw.sum(-1, keepdim=True)


@pytest.mark.parametrize("options, random_new", [({}, False), ({}, True), (TODAY, False), (TODAY, True)])
def test_from_attention_implied_weights(options, random_new):
    teacher = _teacher()
    mixer = LolcatsAttention.from_attention(teacher, window=6, **options)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert torch.equal(getattr(mixer, name).weight, getattr(teacher, name).weight)
    assert mixer.options.rope == (options.get("rope", True)) and mixer.cfg.rope_theta == THETA
    if options == TODAY:
        assert torch.equal(mixer.feature_k, torch.eye(12, dtype=torch.float64).expand(3, 12, 12))
    else:  # released: F = 64, kaiming_uniform_ over fan_in = Dk·F (bound √(6 / fan_in))
        bound = math.sqrt(6 / (12 * 64))
        for W in (mixer.feature_q, mixer.feature_k):
            assert W.shape == (3, 12, 64) and W.abs().max() <= bound and W.abs().max() > 0.95 * bound
        assert not torch.equal(mixer.feature_q, mixer.feature_k)
    assert torch.allclose(torch.sigmoid(mixer.window_logit), torch.full((3,), 0.1, dtype=torch.float64))
    if random_new:
        randomize(mixer)
    x = _x(T=23)
    with torch.no_grad():
        y, _ = mixer(x)
        assert torch.isfinite(y).all()
        A = implied_weights(mixer, x)
        assert (A >= 0).all()
        assert_rel_close(A.sum(-1), torch.ones(A.shape[:-1], dtype=torch.float64), TOL64, "weights sum")
        v = mixer.expand_kv(mixer.project(x)[2])
        assert_rel_close(y, mixer.o_proj(torch.einsum("bhts,bshd->bthd", A, v).reshape(2, 23, -1)), TOL64, "layer vs weights")


def test_from_attention_takes_the_teachers_rotary_switch():
    assert LolcatsAttention.from_attention(_teacher(rope=False)).options.rope is False
    assert LolcatsAttention.from_attention(_teacher(rope=True)).options.rope is True
    assert LolcatsAttention.from_attention(_teacher(rope=True), rope=False).options.rope is False


def test_window_covering_everything_is_the_teachers_attention():
    """With w >= T no key reaches the linear branch: the student with rotary is its teacher exactly (γ cancels)."""
    teacher = _teacher()
    mixer = randomize(LolcatsAttention.from_attention(teacher, window=64))
    x = _x(T=23)
    with torch.no_grad():
        assert_rel_close(mixer(x)[0], teacher(x)[0], TOL64, "student vs teacher")


# ------------------------------------------------------------------------------------ model and config
def test_seqlm_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, chunk_size=16, max_seq_len=128, mixer="lolcats",
                      mixer_options={"lolcats": {"window": 8}})
    first, last, model = train_toy_sequence(cfg, steps=50)
    assert first > 3.0 and last < 1.0, (first, last)
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 11), generator=torch.Generator().manual_seed(2)), 10)


@pytest.mark.parametrize("preset", ["lolcats-tiny", "lolcats-llama3-8b"])
def test_presets_load(preset):
    assert ModelConfig.from_preset(preset).mixer == "lolcats"


@pytest.mark.parametrize("options, message", [
    ({"window": 0}, "window must be a positive integer"),
    ({"window_factor_init": 1.5}, r"window_factor_init must be a number in \(0, 1\)"),
    ({"feature_dim": -2}, "feature_dim must be a positive integer"),
    ({"linear_factor": "one"}, r"linear_factor must be one of \['released', 'one_minus_gamma'\], got 'one'"),
    ({"feature_init": "normal"}, r"feature_init must be one of \['kaiming', 'identity'\]"),
    ({"rope": "yes"}, "rope must be true or false"),
    ({"n_meta": 4}, "unknown option"),
])
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        cfg_for(**options)


def test_rope_needs_an_even_head_dim():
    with pytest.raises(ValueError, match="rope needs an even head_dim_k, got 7"):
        ModelConfig(vocab_size=64, d_model=21, n_heads=3, mixer="lolcats")
    ModelConfig(vocab_size=64, d_model=21, n_heads=3, mixer="lolcats", mixer_options={"lolcats": {"rope": False}})
