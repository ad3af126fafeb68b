"""Mega / Mega-chunk (arXiv 2209.10655, docs/architecture.md §5.7): the five contract invariants (float64, tol 1e-10),
the layer against a token-level quadratic reference of the paper's equations, FFT EMA == recurrent EMA
inside the layer, decoding across chunk boundaries, toy training and greedy generate."""
import math

import pytest
import torch
import torch.nn.functional as F

from seqmodels import ModelConfig
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


def mega_cfg(chunk=None, attention="softmax", d_model=10, **extra):
    options = {"ema_dim": 3, "z_dim": 5, "v_dim": 7, "attention": attention, "attention_chunk": chunk}
    options.update(extra)
    return ModelConfig(vocab_size=31, d_model=d_model, n_layers=2, n_heads=1, mixer="mega", mlp="none",
                       max_seq_len=64, chunk_size=8, mixer_options={"mega": options})


def strong(layer, seed=1):
    """Non-trivial parameters: strong EMA decays, O(1) q/k scales, biases and relative-position bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.5)
        layer.ema_delta.mul_(6)  # p close to 0 or 1
        layer.ema_alpha.mul_(6)  # log q down to ~ -5 per step
        layer.qk_scale.mul_(3)
        for name in ("rel_pos_bias", "rotary_a", "rotary_b"):
            if hasattr(layer, name):
                getattr(layer, name).mul_(2)
    return layer


def rotate(vec, position):
    """Mega's sinusoidal rotation of a vector [z] at an absolute position."""
    half = vec.shape[0] // 2
    angle = position * torch.exp(torch.arange(half, dtype=vec.dtype) * (-math.log(10000.0) / half))
    a1, a2 = vec[:half], vec[half:]
    return torch.cat([a1 * angle.cos() - a2 * angle.sin(), a2 * angle.cos() + a1 * angle.sin()])


def reference_mega(layer, x):
    """The paper's equations token by token, attention as explicit per-query sums (no kernels)."""
    opts, cfg = layer.options, layer.cfg
    xn = layer.norm(x)
    value = F.silu(layer.v_proj(xn))
    p, a = torch.sigmoid(layer.ema_delta), torch.sigmoid(layer.ema_alpha)
    q_decay = 1 - p * a
    h = torch.zeros(x.shape[0], cfg.d_model, opts.ema_dim, dtype=x.dtype)
    ema_y = []
    for t in range(x.shape[1]):
        if opts.ema_truncation is None:
            h = p * layer.ema_beta * xn[:, t, :, None] + q_decay * h
        else:  # fairseq's truncated kernel: only the last L inputs, h_t = Σ_{l<L} q^l p β x_{t-l}
            h = sum(q_decay ** lag * p * layer.ema_beta * xn[:, t - lag, :, None]
                    for lag in range(min(opts.ema_truncation, t + 1)))
        ema_y.append((h * layer.ema_gamma).sum(-1) / math.sqrt(opts.ema_dim))
    x_prime = F.silu(torch.stack(ema_y, 1) + layer.ema_omega * xn)
    d, z_dim, v_dim = cfg.d_model, layer.z_dim, layer.v_dim
    mx = layer.mx_proj(x_prime)
    u = torch.sigmoid(mx[..., :d])
    z = F.silu(mx[..., d : d + z_dim])
    r = F.silu(mx[..., d + z_dim : d + z_dim + v_dim])
    h_hat = mx[..., d + z_dim + v_dim :]
    q = z * layer.qk_scale[0] + layer.qk_offset[0]
    k = z * layer.qk_scale[1] + layer.qk_offset[1]
    out = torch.zeros(x.shape[0], x.shape[1], v_dim, dtype=x.dtype)
    for i in range(x.shape[1]):
        start = (i // opts.attention_chunk) * opts.attention_chunk if opts.attention_chunk else 0
        js = list(range(start, i + 1))
        if opts.rel_pos_bias == "simple":
            bias = torch.stack([layer.rel_pos_bias[i - j] for j in js])
        else:  # Mega's form with absolute positions: Rot_i(a) · Rot_j(b)
            bias = torch.stack([rotate(layer.rotary_a, i) @ rotate(layer.rotary_b, j) for j in js])
        scores = torch.einsum("bz,bjz->bj", q[:, i], k[:, js])
        if opts.attention == "softmax":
            weights = torch.softmax(scores / math.sqrt(z_dim) + bias, -1)
        else:
            s = scores / len(js) + bias
            weights = 0.5 * (1 + torch.erf((s - math.sqrt(0.5)) / (math.sqrt(1 / (4 * math.pi)) * math.sqrt(2))))
        out[:, i] = torch.einsum("bj,bjv->bv", weights, value[:, js])
    mixed = F.silu(h_hat + layer.h_proj(r * out))
    y = x + u * (mixed - x)
    if layer.nffn is not None:
        y = y + layer.nffn.down_proj(F.silu(layer.nffn.up_proj(layer.nffn.norm(y))))
    return y


@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("attention", ["softmax", "laplace"])
def test_mixer_contract(chunk, attention):
    """Invariants 1-4; 5 (constant state) for Mega-chunk: T=37 spans 4 chunk boundaries of c=8."""
    check_mixer_contract(mega_cfg(chunk, attention), time=37, split=19, constant_state=chunk is not None)


@pytest.mark.parametrize("chunk", [None, 8])
def test_mixer_contract_rotary_bias(chunk):
    check_mixer_contract(mega_cfg(chunk, "softmax", z_dim=6, rel_pos_bias="rotary"), time=37, split=19,
                         constant_state=chunk is not None)


def test_contract_split_on_chunk_boundary_odd_dims_config_mlp():
    """Odd widths, c=7 with the prefill split on a chunk boundary (14), NFFN off and the config's MLP on."""
    cfg = ModelConfig(vocab_size=31, d_model=9, n_layers=1, n_heads=1, mixer="mega", mlp="swiglu", max_seq_len=64,
                      mixer_options={"mega": {"ema_dim": 5, "z_dim": 3, "v_dim": 11, "attention_chunk": 7,
                                              "nffn_hidden": 0}})
    check_mixer_contract(cfg, time=30, split=14)


@pytest.mark.parametrize("chunk", [None, 6])
@pytest.mark.parametrize("attention", ["softmax", "laplace"])
@pytest.mark.parametrize("bias", ["simple", "rotary"])
def test_layer_matches_quadratic_reference(chunk, attention, bias):
    cfg = mega_cfg(chunk, attention, z_dim=6, rel_pos_bias=bias)
    layer = strong(build_mixer(cfg))
    x = torch.randn(2, 23, cfg.d_model, dtype=torch.float64)
    with torch.no_grad():
        assert_rel_close(layer(x)[0], reference_mega(layer, x), TOL64, "mega vs quadratic reference")


@pytest.mark.parametrize("attention", ["softmax", "laplace"])
def test_strong_parameters_decode_across_chunk_boundaries(attention):
    """forward == token-by-token decode with strong gates over 5 chunks of c=5 (T=27), then the
    cache holds only the current chunk: 27 % 5 = 2 valid keys."""
    cfg = mega_cfg(5, attention)
    layer = strong(build_mixer(cfg))
    x = torch.randn(2, 27, cfg.d_model, dtype=torch.float64)
    state = check_step_matches_forward(layer, x, TOL64)
    assert int((state.attn.positions() >= 0).sum()) == 2 and state.seen_tokens == 27
    assert state.attn.key.shape[1] == 5  # c slots, whatever T


@pytest.mark.parametrize("chunk", [None, 4])
def test_step_leaves_input_state_untouched_and_float32(chunk):
    """step returns a new state (the old one can be stepped again: branching decode); float32
    forward == step within 1e-5 relative."""
    layer = strong(build_mixer(mega_cfg(chunk)))
    x = torch.randn(1, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        _, state = layer(x[:, :6], return_state=True)
        a, _ = layer.step(x[:, 6], state)
        b, _ = layer.step(x[:, 6], state)
    assert torch.equal(a, b) and state.seen_tokens == 6
    check_step_matches_forward(layer.float(), torch.randn(2, 21, 10), tol=1e-5)


@pytest.mark.parametrize("chunk", [None, 6])
def test_prefill_in_uneven_pieces(chunk):
    """forward over pieces of 1, 2, 5, 9, 3 tokens (inside, across and on chunk boundaries), each
    continuing the previous state, == one forward; then decoding continues from that state."""
    layer = strong(build_mixer(mega_cfg(chunk, "laplace")))
    check_prefill_in_pieces(layer, torch.randn(2, 24, 10, dtype=torch.float64), (1, 2, 5, 9, 3), TOL64)


@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("truncation", [1, 5])
def test_ema_truncation_contract_and_reference(chunk, truncation):
    """ema_truncation L: forward == step == prefill (the contract, float64 <= 1e-10) and the layer
    == the token-by-token reference that sums only the last L inputs; the EMA state is the last L-1 inputs."""
    cfg = mega_cfg(chunk, ema_truncation=truncation)
    check_mixer_contract(cfg, time=37, split=19, constant_state=chunk is not None)
    layer = strong(build_mixer(cfg))
    x = torch.randn(2, 23, cfg.d_model, dtype=torch.float64)
    with torch.no_grad():
        assert_rel_close(layer(x)[0], reference_mega(layer, x), TOL64, "truncated mega vs reference")
        state = check_step_matches_forward(layer, x, TOL64)
    assert state.ema.shape == (2, truncation - 1, cfg.d_model)
    check_prefill_in_pieces(layer, torch.randn(2, 24, 10, dtype=torch.float64), (1, 2, 5, 9, 3), TOL64)


def test_ema_truncation_changes_only_positions_past_it():
    """Outputs before position L equal the untruncated layer's (same weights); from L on they differ."""
    full = strong(build_mixer(mega_cfg(None, "softmax")))
    cut = strong(build_mixer(mega_cfg(None, "softmax", ema_truncation=6)))
    with torch.no_grad():
        for name in ("ema_delta", "ema_alpha"):  # slow decays, so the cut is visible
            for layer in (full, cut):
                getattr(layer, name).fill_(-3.0 if name == "ema_alpha" else 0.0)
        x = torch.randn(1, 20, 10, dtype=torch.float64)
        y_full, y_cut = full(x)[0], cut(x)[0]
    assert_rel_close(y_cut[:, :6], y_full[:, :6], TOL64, "positions < L")
    assert (y_cut[:, 6:] - y_full[:, 6:]).abs().amax(-1).min() > 1e-6


def test_fft_ema_equals_recurrent_ema_in_layer():
    """The layer's EMA sub-layer: FFT training form (auto backend) == naive token loop == the paper's recurrence."""
    from seqmodels.kernels.ema import ema

    layer = strong(build_mixer(mega_cfg(4)))
    x = torch.randn(2, 29, 10, dtype=torch.float64)
    params = layer._ema_params(torch.float64)
    y_fft, h_fft = ema(x, *params, output_final_state=True, backend="auto")
    y_loop, h_loop = ema(x, *params, output_final_state=True, backend="naive")
    assert_rel_close(y_fft, y_loop, TOL64, "FFT EMA vs token loop")
    assert_rel_close(h_fft, h_loop, TOL64, "final EMA state")
    assert float(params[1].detach().min()) < -3  # strong decays exercised


def test_state_size_independent_of_time_chunked_only():
    chunked = build_mixer(mega_cfg(8))
    full = build_mixer(mega_cfg(None))
    sizes = {}
    for name, layer in (("chunked", chunked), ("full", full)):
        with torch.no_grad():
            sizes[name] = [layer(torch.randn(1, t, 10, dtype=torch.float64), return_state=True)[1] for t in (9, 36)]
    from seqmodels.state import state_nbytes

    assert state_nbytes(sizes["chunked"][0]) == state_nbytes(sizes["chunked"][1])
    assert state_nbytes(sizes["full"][1]) > state_nbytes(sizes["full"][0])  # full attention keeps a KV cache


def test_errors():
    with pytest.raises(ValueError, match="attention='relu'"):
        mega_cfg(attention="relu")
    with pytest.raises(ValueError, match="set mlp: none"):
        ModelConfig(mixer="mega", mlp="swiglu")
    with pytest.raises(ValueError, match="rotary' needs an even z_dim, got 5"):
        mega_cfg(rel_pos_bias="rotary")
    with pytest.raises(ValueError, match="rel_pos_bias='t5' is not one of"):
        mega_cfg(rel_pos_bias="t5")
    with pytest.raises(ValueError, match="attention_chunk must be a positive integer"):
        mega_cfg(0)
    layer = build_mixer(mega_cfg(None))
    with pytest.raises(ValueError, match="max_seq_len=64"):
        layer(torch.randn(1, 65, 10, dtype=torch.float64))


@pytest.mark.parametrize("preset", ["mega-tiny", "mega-chunk-tiny"])
def test_toy_training_and_generate(preset):
    cfg = ModelConfig.from_preset(preset, vocab_size=64, d_model=32, max_seq_len=128)
    first, last, model = train_toy_sequence(cfg, steps=50, lr=1e-2)
    assert last < 0.05 * first, f"{preset}: loss {first:.3f} -> {last:.3f}"
    check_generate_matches_forward(model, torch.randint(0, 64, (2, 21)), new_tokens=14)


def test_presets_and_hf_round_trip(tmp_path):
    """Every Mega preset validates; a save_pretrained / from_pretrained Mega-chunk model gives the
    same logits, and HF's greedy generate (state as the cache) equals SeqLM.generate."""
    from seqmodels.hf import SeqModelsConfig, SeqModelsForCausalLM

    for name, chunk in (("mega-tiny", None), ("mega-chunk-tiny", 16), ("mega-125m", 512)):
        cfg = ModelConfig.from_preset(name)
        assert cfg.mixer == "mega" and cfg.mlp == "none" and cfg.options_for("mega").attention_chunk == chunk
    torch.manual_seed(0)
    model = SeqModelsForCausalLM(SeqModelsConfig(ModelConfig.from_preset("mega-chunk-tiny", vocab_size=64, d_model=16))).eval()
    model.save_pretrained(tmp_path)
    loaded = SeqModelsForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
        assert torch.equal(loaded.generate(ids, max_new_tokens=20, do_sample=False),
                           loaded.model.generate(ids, max_new_tokens=20, temperature=0))
