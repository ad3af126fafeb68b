"""Lizard (arXiv 2507.09025 v4; docs/architecture.md §5.10): the five mixer invariants (GQA, folded form, no meta logits,
window 1), the same with random (strong) gates, feature maps, meta logits and α; the folded-gate form equal
to the gla form (outputs, gradients, continuation; float64 ≤ 1e-10); from_attention of a softmax attention:
weights copied, finite outputs whose implied attention weights (the quadratic form written out here) are
non-negative and sum to 1 per branch (local: with the meta-memory mass) and reproduce the layer; a SeqLM
that learns, greedy generate, presets, config errors."""
import dataclasses

import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.layers.lizard import EPS, LizardAttention
from seqmodels.testing import (
    assert_rel_close,
    build_mixer,
    check_generate_matches_forward,
    check_mixer_contract,
    check_prefill_continuation,
    check_step_matches_forward,
    train_toy_sequence,
)

TOL64 = 1e-10


def cfg_for(n_kv_heads=None, **options):
    options = {"window": 8, **options}
    return ModelConfig(vocab_size=64, d_model=36, n_heads=3, n_kv_heads=n_kv_heads, mixer="lizard", chunk_size=16,
                       mixer_options={"lizard": options})


def randomize(mixer, seed=0, gate_bias=-1.0):
    """Random feature maps, strong data-dependent gates (Γ down to ~0.05), meta logits and α."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (mixer.feature_q, mixer.feature_k):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        mixer.gate_proj.weight.copy_(torch.randn(mixer.gate_proj.weight.shape, generator=g, dtype=torch.float64) * 0.5)
        mixer.gate_proj.bias.fill_(gate_bias)
        mixer.meta_logits.copy_(torch.randn(mixer.meta_logits.shape, generator=g, dtype=torch.float64))
        mixer.alpha.copy_(torch.randn(mixer.alpha.shape, generator=g, dtype=torch.float64))
    return mixer


def _x(T=37, seed=1, B=2, d=36):
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("n_kv_heads, options", [
    (None, {}), (1, {}), (None, {"global_form": "folded"}), (1, {"n_meta": 0, "window": 1}), (None, {"feature_dim": 5, "window": 40}),
])
def test_mixer_contract(n_kv_heads, options):
    check_mixer_contract(cfg_for(n_kv_heads, **options))


@pytest.mark.parametrize("form", ["gla", "folded"])
def test_step_and_continuation_with_random_gates(form):
    mixer = randomize(build_mixer(cfg_for(1, global_form=form)))
    x = _x()
    check_step_matches_forward(mixer, x, TOL64)
    check_prefill_continuation(mixer, x, 21, TOL64)


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_folded_equals_gla_form(backend):
    """§4's folded-gate masked matmul == the gla form: outputs, state, gradients, and from a state."""
    plain = randomize(build_mixer(cfg_for(1, global_form="gla"), kernel_backend=backend))
    folded = build_mixer(cfg_for(1, global_form="folded"))
    folded.load_state_dict(plain.state_dict())
    x = _x()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, sa = plain(xa, return_state=True)
    yb, sb = folded(xb, return_state=True)
    assert_rel_close(yb, ya, TOL64, "folded vs gla forward")
    assert_rel_close(sb.global_state, sa.global_state, TOL64, "folded vs gla final state")
    weight = torch.randn_like(ya)
    (ya * weight).sum().backward()
    (yb * weight).sum().backward()
    assert_rel_close(xb.grad, xa.grad, TOL64, "input gradient")
    for (name, pa), (_, pb) in zip(plain.named_parameters(), folded.named_parameters()):
        assert_rel_close(pb.grad, pa.grad, TOL64, f"gradient of {name}")
    with torch.no_grad():
        x2 = _x(T=20, seed=2)
        assert_rel_close(folded(x2, state=sa)[0], plain(x2, state=sa)[0], TOL64, "folded vs gla from a state")


def _teacher(n_kv_heads=1, qkv_bias=True):
    cfg = ModelConfig(vocab_size=64, d_model=36, n_heads=3, n_kv_heads=n_kv_heads, mixer="attention",
                      mixer_options={"attention": {"qkv_bias": qkv_bias}})
    teacher = build_mixer(cfg)
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0.0, 0.3)
    return teacher


def test_from_attention_copies_weights_and_inits_new_parameters():
    teacher = _teacher()
    mixer = LizardAttention.from_attention(teacher, window=8)
    assert mixer.options.qkv_bias and mixer.n_kv_heads == 1 and mixer.q_proj.weight.dtype == torch.float64
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert torch.equal(getattr(mixer, name).weight, getattr(teacher, name).weight)
    assert torch.equal(mixer.q_proj.bias, teacher.q_proj.bias)
    eye = torch.eye(12, dtype=torch.float64).expand(3, 12, 12)
    assert torch.equal(mixer.feature_q, eye) and torch.equal(mixer.feature_k, eye)
    assert torch.equal(mixer.gate_proj.weight, torch.zeros(3, 36, dtype=torch.float64))
    assert torch.allclose(torch.sigmoid(mixer.gate_proj.bias), torch.full((3,), 0.99, dtype=torch.float64))
    assert torch.equal(mixer.meta_logits, torch.zeros(3, 4, dtype=torch.float64))
    assert torch.equal(mixer.alpha, torch.ones(3, dtype=torch.float64))


def implied_weights(mixer, x):
    """The quadratic form: global A_g [B,H,T,T], local A_l [B,H,T,T] and the meta-memory mass [B,H,T]."""
    B, T, _ = x.shape
    H, D, F2 = mixer.n_heads, mixer.dk, 2 * mixer.feature_dim
    q, k, _ = mixer.project(x)
    k = mixer.expand_kv(k)
    def phi(t, W):
        u = torch.einsum("bthd,hdf->bthf", t, W)
        z = torch.cat([u, -u], -1)
        return torch.exp(z - z.amax(-1, keepdim=True))
    pq, pk = phi(q, mixer.feature_q), phi(k, mixer.feature_k)
    c = torch.nn.functional.logsigmoid(mixer.gate_proj(x)).cumsum(1).transpose(1, 2)  # [B, H, T]
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    decay = torch.exp((c[..., :, None] - c[..., None, :]).masked_fill(s > t, float("-inf")))
    raw = torch.einsum("bthf,bshf->bhts", pq, pk) * decay
    A_g = raw / (raw.sum(-1, keepdim=True) + EPS)
    scores = (torch.einsum("bthd,bshd->bhts", q, k) / D ** 0.5).masked_fill(~((s <= t) & (s > t - mixer.options.window)), float("-inf"))
    meta = mixer.meta_logits[None, :, None, :].expand(B, H, T, -1)
    both = torch.cat([scores, meta], -1).softmax(-1)
    return A_g, raw.sum(-1), both[..., :T], both[..., T:].sum(-1)


@pytest.mark.parametrize("random_new", [False, True])
def test_from_attention_implied_weights(random_new):
    mixer = LizardAttention.from_attention(_teacher(), window=8)
    if random_new:
        randomize(mixer)
    x = _x(T=29)
    with torch.no_grad():
        y, _ = mixer(x)
        assert torch.isfinite(y).all()
        A_g, raw_sum, A_l, meta_mass = implied_weights(mixer, x)
        assert (A_g >= 0).all() and (A_l >= 0).all() and (meta_mass > 0).all()
        ones = torch.ones(A_g.shape[:-1], dtype=torch.float64)
        # the global normalizer has + eps: the weights sum to 1 - eps / (Σ + eps) (exact up to rounding)
        assert ((1 - A_g.sum(-1)).abs() <= EPS / raw_sum + 1e-14).all(), "global weights do not sum to 1"
        assert_rel_close(A_l.sum(-1) + meta_mass, ones, TOL64, "local weights + meta mass sum")
        v = mixer.expand_kv(mixer.project(x)[2])
        heads = torch.einsum("bhts,bshd->bthd", A_g, v) + mixer.alpha[:, None] * torch.einsum("bhts,bshd->bthd", A_l, v)
        assert_rel_close(y, mixer.o_proj(heads.reshape(2, 29, -1)), TOL64, "layer vs implied weights")


def test_seqlm_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, chunk_size=16, max_seq_len=128, mixer="lizard",
                      mixer_options={"lizard": {"window": 8}})
    first, last, model = train_toy_sequence(cfg, steps=50)
    assert first > 3.0 and last < 0.5, (first, last)  # measured 0.32 (from ~3.50)
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 11), generator=torch.Generator().manual_seed(2)), 10)


@pytest.mark.parametrize("preset", ["lizard-tiny", "lizard-llama3-8b"])
def test_presets_load(preset):
    cfg = ModelConfig.from_preset(preset)
    assert cfg.mixer == "lizard"


@pytest.mark.parametrize("options, message", [
    ({"window": 0}, "window must be a positive integer"),
    ({"n_meta": -1}, "n_meta must be a non-negative integer"),
    ({"feature_dim": 0}, "feature_dim must be a positive integer"),
    ({"global_form": "fused"}, "global_form must be one of"),
])
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        cfg_for(**options)


def test_from_attention_rejects_other_modules():
    with pytest.raises(ValueError, match="needs a SoftmaxAttention module"):
        LizardAttention.from_attention(build_mixer(cfg_for()))


def test_from_attention_keeps_the_teacher_config():
    teacher = _teacher(n_kv_heads=3, qkv_bias=False)
    mixer = LizardAttention.from_attention(teacher, window=5, global_form="folded")
    assert mixer.cfg.d_model == 36 and mixer.options.window == 5 and mixer.q_proj.bias is None
    assert dataclasses.replace(mixer.cfg).mixer == "lizard"


def test_float32_step_matches_forward():
    """float32: forward == token-by-token step within 1e-5 relative (states accumulate in float32)."""
    mixer = build_mixer(cfg_for(), dtype=torch.float32)
    x = torch.randn(2, 37, 36, generator=torch.Generator().manual_seed(7))
    check_step_matches_forward(mixer, x, 1e-5)
