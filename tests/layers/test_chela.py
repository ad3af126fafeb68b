"""CHELA (arXiv 2406.08128, docs/architecture.md §5.9): the five contract invariants (float64, tol 1e-10) with the
state bounded by the long-kernel length L_k, the layer against a token-level reference of its
equations, the structural reparameterization fold, decoding with the bounded tail, toy training and
greedy generate."""
import pytest
import torch
import torch.nn.functional as F

from seqmodels import ModelConfig
from seqmodels.kernels.short_conv import short_conv
from seqmodels.state import state_nbytes
from seqmodels.testing import (
    assert_rel_close,
    build_mixer,
    check_generate_matches_forward,
    check_mixer_contract,
    check_prefill_in_pieces,
    check_step_matches_forward,
    train_toy_sequence,
)

TOL64 = 1e-10


def chela_cfg(d_model=10, n_heads=2, head_dim_k=None, head_dim_v=None, **options):
    options.setdefault("long_kernel", 16)
    return ModelConfig(vocab_size=31, d_model=d_model, n_layers=2, n_heads=n_heads, head_dim_k=head_dim_k,
                       head_dim_v=head_dim_v, mixer="chela", max_seq_len=64, chunk_size=8,
                       mixer_options={"chela": options})


def strong(layer, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.5)
    return layer


def reference_chela(layer, x):
    """Direct causal convolutions and explicit per-query linear-attention sums (no kernels)."""
    opts = layer.options
    B, T, d = x.shape
    H, dk, dv = layer.n_heads, layer.dk, layer.dv
    xn = layer.norm(x)

    def causal_conv(inp, kernel):  # kernel [d, L], tap 0 = current token
        out = torch.zeros_like(inp)
        for t in range(T):
            for lag in range(min(kernel.shape[1], t + 1)):
                out[:, t] += kernel[:, lag] * inp[:, t - lag]
        return out

    s = F.silu(causal_conv(xn, layer.short_weight) + layer.short_bias)
    lags = torch.arange(layer.long_len, dtype=x.dtype)
    long_kernel = layer.long_weight * torch.exp(-lags * torch.exp(layer.long_log_rate)[:, None])
    x_prime = causal_conv(s, long_kernel)
    if layer.parallel_weight is not None:
        x_prime = x_prime + causal_conv(s, layer.parallel_weight)
    z = F.silu(layer.z_proj(x_prime))
    phi = (lambda t: F.elu(t) + 1) if opts.feature_map == "elu1" else (lambda t: t)
    q = phi(z * layer.qk_scale[0] + layer.qk_offset[0]).view(B, T, H, dk)
    k = phi(z * layer.qk_scale[1] + layer.qk_offset[1]).view(B, T, H, dk)
    v = F.silu(layer.v_proj(xn)).view(B, T, H, dv)
    out = torch.zeros(B, T, H, dv, dtype=x.dtype)
    for t in range(T):
        weights = torch.einsum("bhk,bshk->bsh", q[:, t], k[:, : t + 1])  # φ(q_t)·φ(k_s)
        num = torch.einsum("bsh,bshv->bhv", weights, v[:, : t + 1])
        if opts.normalize:
            num = num / (weights.sum(1)[..., None] + opts.normalizer_eps)
        out[:, t] = num
    hv = H * dv
    gates = layer.gate_proj(x_prime)
    r, u, h = F.silu(gates[..., :hv]), torch.sigmoid(gates[..., hv : hv + d]), gates[..., hv + d :]
    mixed = F.silu(h + layer.h_proj(r * out.reshape(B, T, hv)))
    return u * mixed + (1 - u) * x


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"parallel_short_kernel": 3, "short_kernel": 4},
        {"feature_map": "identity", "normalize": False},
    ],
)
def test_mixer_contract_state_bounded_by_long_kernel(options):
    """Invariants 1-5 with L_k = 16 < T = 37: state bytes equal at T and 4T (bounded by L_k)."""
    check_mixer_contract(chela_cfg(**options), time=37, split=19)


def test_contract_odd_head_dims():
    check_mixer_contract(chela_cfg(d_model=9, n_heads=3, head_dim_k=5, head_dim_v=3, long_kernel=7), time=30, split=11)


@pytest.mark.parametrize("options", [{}, {"parallel_short_kernel": 2}, {"feature_map": "identity", "normalize": False}])
def test_layer_matches_token_level_reference(options):
    cfg = chela_cfg(**options)
    layer = strong(build_mixer(cfg))
    x = torch.randn(2, 21, cfg.d_model, dtype=torch.float64)
    with torch.no_grad():
        assert_rel_close(layer(x)[0], reference_chela(layer, x), TOL64, "chela vs token-level reference")


def test_structural_reparameterization_fold_is_exact():
    """LongConv(s, K) + ShortConv_p(s) == LongConv(s, K + pad(K_p)), outputs and kernel gradients."""
    from seqmodels.kernels.long_conv import long_conv

    layer = strong(build_mixer(chela_cfg(parallel_short_kernel=4)))
    s = torch.randn(2, 25, 10, dtype=torch.float64)
    long_out, short_out = layer.branch_outputs(s)
    folded, _ = long_conv(s, layer.long_kernel())
    assert_rel_close(long_out + short_out, folded, TOL64, "unfolded branches vs folded kernel")
    weight = torch.randn_like(folded)
    grads_a = torch.autograd.grad(((long_out + short_out) * weight).sum(), [layer.long_weight, layer.parallel_weight])
    grads_b = torch.autograd.grad((folded * weight).sum(), [layer.long_weight, layer.parallel_weight])
    for a, b in zip(grads_a, grads_b):
        assert_rel_close(a, b, TOL64, "kernel gradient, unfolded vs folded")


def test_decode_keeps_bounded_tail():
    """forward == step decoding past L_k; the long-conv tail is exactly the last L_k - 1 conv inputs
    and the state has the same bytes at every length (bounded by L_k, not growing with T)."""
    cfg = chela_cfg(long_kernel=6, short_kernel=3)
    layer = strong(build_mixer(cfg))
    x = torch.randn(2, 29, cfg.d_model, dtype=torch.float64)
    state = check_step_matches_forward(layer, x, TOL64)
    with torch.no_grad():
        s = F.silu(short_conv(layer.norm(x), layer.short_weight, layer.short_bias)[0])
    ordered = state.long_tail.roll(-state.long_start, dims=1)  # ring buffer, oldest input at long_start
    assert state.long_start == 29 % 5
    assert_rel_close(ordered, s[:, -5:], TOL64, "long-conv tail = last L_k - 1 inputs")
    expected = 8 * 2 * ((3 - 1) * 10 + (6 - 1) * 10 + 2 * 5 * (5 + 1))  # float64, batch 2
    with torch.no_grad():
        sizes = {t: state_nbytes(layer(x[:, :t], return_state=True)[1]) for t in (1, 6, 29)}
    assert set(sizes.values()) == {expected}, sizes


def uncached_step(layer, x_t, state):
    """The step without kernel cache or ring buffer: the kernel rebuilt from the parameters, the
    tail in time order, long_conv_step (cat, flip, dot). Returns (y_t, state with ordered tail)."""
    from seqmodels.kernels.gla import gla_step
    from seqmodels.kernels.long_conv import long_conv_step
    from seqmodels.kernels.short_conv import short_conv_step
    from seqmodels.layers.chela import ChelaState

    x_norm = layer.norm(x_t)
    short_out, short_tail = short_conv_step(x_norm, layer.short_weight, layer.short_bias, state.short_tail)
    tail = state.long_tail.roll(-state.long_start, dims=1)
    x_prime, long_tail = long_conv_step(F.silu(short_out), layer.long_kernel().to(x_t.dtype), tail)
    q, k, v, r, u, h = layer._projections(x_norm, x_prime)
    attn, attn_state = gla_step(q, k, v, state=state.attn, scale=1.0)
    return layer._output(x_t, attn, r, u, h), ChelaState(short_tail, long_tail, attn_state, 0)


def test_cached_ring_buffer_step_equals_uncached_step():
    """The cached kernel + ring buffer step == the uncached step, token by token past several
    wraps of the buffer (L_k = 7, 40 steps after a 9-token prefill), float64 <= 1e-10; an in-place
    parameter update rebuilds the cached kernel."""
    layer = strong(build_mixer(chela_cfg(long_kernel=7, parallel_short_kernel=2)))
    x = torch.randn(2, 49, 10, dtype=torch.float64)
    with torch.no_grad():
        _, state = layer(x[:, :9], return_state=True)
        _, ref_state = layer(x[:, :9], return_state=True)
        for t in range(9, 49):
            if t == 30:
                layer.long_weight.mul_(1.5)  # e.g. an optimizer step: the cache must not serve the old kernel
            y, state = layer.step(x[:, t], state)
            y_ref, ref_state = uncached_step(layer, x[:, t], ref_state)
            assert_rel_close(y, y_ref, TOL64, f"cached step vs uncached step at t={t}")
        assert_rel_close(state.long_tail.roll(-state.long_start, dims=1), ref_state.long_tail, TOL64, "ring buffer")
        assert layer._step_kernel_cache is not None


def test_kernel_not_cached_while_autograd_records():
    layer = build_mixer(chela_cfg(long_kernel=5))
    state = layer.init_state(1, dtype=torch.float64)
    y, _ = layer.step(torch.randn(1, 10, dtype=torch.float64), state)
    assert layer._step_kernel_cache is None
    (grad,) = torch.autograd.grad(y.sum(), [layer.long_weight])
    assert grad.abs().sum() > 0


SSM = {"long_kernel": None, "long_kernel_form": "ssm", "ssm_order": 3}


@pytest.mark.parametrize("options", [SSM, {**SSM, "feature_map": "identity", "normalize": False}])
def test_ssm_long_kernel_contract_constant_state(options):
    """long_kernel_form ssm: naive == chunked with gradients, forward == step == prefill (float64
    <= 1e-10), state bytes equal at T and 4T (h [B, d, N, 2], no input tail)."""
    check_mixer_contract(chela_cfg(**options), time=37, split=19)
    layer = build_mixer(chela_cfg(**options))
    assert layer.init_state(2, dtype=torch.float64).long_tail.shape == (2, 10, 3, 2)


def test_ssm_long_kernel_is_the_damped_exponential_sum():
    """The layer's long conv output == the direct convolution with K_l = Re Σ_n C_n λ_n^l."""
    from seqmodels.kernels.long_conv import long_conv_direct

    layer = build_mixer(chela_cfg(**SSM))
    s = torch.randn(2, 30, 10, dtype=torch.float64)
    rate, freq, coeff = (p.detach() for p in layer.ssm_params())
    lags = torch.arange(30, dtype=torch.float64)
    lam = torch.exp(-rate.exp() + 1j * freq)  # [d, N]
    kernel = (torch.complex(coeff[..., 0], coeff[..., 1])[..., None] * lam[..., None] ** lags).real.sum(1)
    with torch.no_grad():
        y, _ = layer._long_forward(s, None, False)
    assert_rel_close(y, long_conv_direct(s, kernel), TOL64, "ssm long conv vs direct convolution")


def test_ssm_preset_trains_and_generates():
    cfg = ModelConfig.from_preset("chela-ssm-tiny", vocab_size=64, d_model=32, max_seq_len=128)
    assert cfg.mixer_options["chela"]["long_kernel_form"] == "ssm"
    first, last, model = train_toy_sequence(cfg, steps=50, lr=1e-2)
    assert last < 0.05 * first, f"chela-ssm-tiny: loss {first:.3f} -> {last:.3f}"
    check_generate_matches_forward(model, torch.randint(0, 64, (2, 21)), new_tokens=14)


def test_float32_step_matches_forward():
    layer = strong(build_mixer(chela_cfg(long_kernel=8), dtype=torch.float32))
    check_step_matches_forward(layer, torch.randn(2, 23, 10), tol=1e-5)


def test_prefill_in_uneven_pieces():
    """Pieces of 1, 2, 5, 9, 3 tokens (shorter than the short-conv tail K-1 = 3 and than L_k = 8),
    each continuing the previous state, then decoding steps == one forward."""
    layer = strong(build_mixer(chela_cfg(long_kernel=8, short_kernel=4)))
    check_prefill_in_pieces(layer, torch.randn(2, 24, 10, dtype=torch.float64), (1, 2, 5, 9, 3), TOL64)


def test_errors():
    with pytest.raises(ValueError, match="short_kernel=9 exceeds 8"):
        chela_cfg(short_kernel=9)
    with pytest.raises(ValueError, match="feature_map='relu'"):
        chela_cfg(feature_map="relu")
    with pytest.raises(ValueError, match="long_kernel must be an integer >= 2"):
        chela_cfg(long_kernel=1)
    with pytest.raises(ValueError, match="parallel_short_kernel=5 must be <="):
        chela_cfg(long_kernel=4, parallel_short_kernel=5)
    with pytest.raises(ValueError, match="unknown option"):
        chela_cfg(kernel_size=3)
    with pytest.raises(ValueError, match=r"long_kernel_form='s4' is not one of \['free', 'ssm'\]"):
        chela_cfg(long_kernel_form="s4")
    with pytest.raises(ValueError, match="the ssm kernel has no length and no fold"):
        chela_cfg(long_kernel_form="ssm")  # chela_cfg sets long_kernel 16


def test_toy_training_and_generate():
    cfg = ModelConfig.from_preset("chela-tiny", vocab_size=64, d_model=32, max_seq_len=128)
    first, last, model = train_toy_sequence(cfg, steps=50, lr=1e-2)
    assert last < 0.05 * first, f"chela-tiny: loss {first:.3f} -> {last:.3f}"
    check_generate_matches_forward(model, torch.randint(0, 64, (2, 21)), new_tokens=14)


def test_preset_and_hf_round_trip(tmp_path):
    """chela-tiny validates (L_k = max_seq_len); save/load keeps the logits and HF's greedy generate
    (state as the cache) equals SeqLM.generate."""
    from seqmodels.hf import SeqModelsConfig, SeqModelsForCausalLM

    cfg = ModelConfig.from_preset("chela-tiny", vocab_size=64, d_model=16, max_seq_len=32)
    torch.manual_seed(0)
    model = SeqModelsForCausalLM(SeqModelsConfig(cfg)).eval()
    assert model.model.blocks[0].mixer.long_len == 32
    model.save_pretrained(tmp_path)
    loaded = SeqModelsForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
        assert torch.equal(loaded.generate(ids, max_new_tokens=20, do_sample=False),
                           loaded.model.generate(ids, max_new_tokens=20, temperature=0))
