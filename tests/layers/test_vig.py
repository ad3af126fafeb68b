"""ViG bidirectional GLA (arXiv 2405.18425; docs/architecture.md §5.4): parallel two-mask form == two chunked
scans == two token-by-token scans, float64 at relative error <= 1e-10, for each released preset's
activation flags; the conv and output SiLU options against the released layer's equations."""
import pytest
import torch
import torch.nn.functional as F

from seqmodels import ModelConfig, SeqLM
from seqmodels.kernels.gla import gla_step
from seqmodels.testing import assert_rel_close, build_mixer, check_backends_agree

TOL64 = 1e-10


def small(**overrides):
    values = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=2, mixer="vig", chunk_size=16,
                  head="classify", num_classes=2, mixer_options={"vig": {"gate_rank": 8}})
    values.update(overrides)
    return ModelConfig(**values)


def two_mask_form(q, k, v, forward_gate, backward_gate, scale):
    """½ scale (A^→ + A^←) v with A^→_ts = Σ_c q_tc k_sc e^{b_tc - b_sc} (s ≤ t, b = cumsum of α^→)
    and A^←_ts = Σ_c q_tc k_sc e^{r_tc - r_sc} (s ≥ t, r = reverse cumsum of α^←). [B, T, H, D]."""
    time = q.shape[1]
    b = forward_gate.cumsum(1)
    r = backward_gate.flip(1).cumsum(1).flip(1)
    lower = torch.ones(time, time, dtype=torch.bool).tril()[None, :, :, None, None]  # [1, t, s, 1, 1]

    def scores(cum, keep):
        diff = (cum[:, :, None] - cum[:, None, :]).masked_fill(~keep, float("-inf"))  # [B, t, s, H, Dk]
        return torch.einsum("bthc,bshc,btshc->bhts", q, k, diff.exp())

    a = scores(b, lower) + scores(r, lower.transpose(1, 2))
    return 0.5 * scale * torch.einsum("bhts,bshd->bthd", a, v)


def token_scans(q, k, v, forward_gate, backward_gate, scale):
    """Two token-by-token scans with the decoding step (forward over t = 0..T-1, backward T-1..0)."""
    time = q.shape[1]
    outputs = {}
    for name, gate, order in (("fwd", forward_gate, range(time)), ("bwd", backward_gate, range(time - 1, -1, -1))):
        state, outs = None, [None] * time
        for t in order:
            outs[t], state = gla_step(q[:, t], k[:, t], v[:, t], log_decay_k=gate[:, t], state=state, scale=scale)
        outputs[name] = torch.stack(outs, 1)
    return (outputs["fwd"] + outputs["bwd"]) / 2


@pytest.mark.parametrize("grid", [None, [4, 9]])
def test_naive_equals_chunked_with_gradients(grid):
    """Invariants 1 and 4 (T = 36, not a multiple of chunk_size 16)."""
    cfg = small(mixer_options={"vig": {"gate_rank": 8, "grid": grid}})
    check_backends_agree(cfg, torch.randn(2, 36, cfg.d_model, dtype=torch.float64))


@pytest.mark.parametrize("gate_normalizer", [16.0, 0.2])
def test_two_mask_form_equals_chunked_and_token_scans(gate_normalizer):
    """gate_normalizer 0.2 gives strong gates (log α down to about -5 per step)."""
    cfg = small(mixer_options={"vig": {"gate_rank": 8, "gate_normalizer": gate_normalizer}})
    mixer = build_mixer(cfg)
    x = torch.randn(2, 36, cfg.d_model, dtype=torch.float64)
    local = mixer.locality(x)
    q, k, v, fwd, bwd = mixer.project(local)
    parallel = mixer.output(two_mask_form(q, k, v, fwd, bwd, mixer.scale), local)
    y, state = mixer(x)
    assert state is None
    assert_rel_close(y, parallel, TOL64, "chunked scans vs two-mask form")
    assert_rel_close(mixer.output(token_scans(q, k, v, fwd, bwd, mixer.scale), local), parallel, TOL64,
                     "token-by-token scans vs two-mask form")


PRESETS = {"vig-t": (True, True), "vig-s": (False, False), "vig-b": (False, False)}  # (conv_silu, out_silu)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_shaped_like_the_released_configs(name):
    cfg = ModelConfig.from_preset(name)
    width, heads = {"vig-t": (192, 3), "vig-s": (384, 6), "vig-b": (768, 12)}[name]
    opts = cfg.mixer_options["vig"]
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.mlp_ratio) == (width, heads, 12, 4)
    assert (opts["expand_k"], opts["expand_v"]) == (0.5, 1.0)
    assert (opts["conv_silu"], opts["out_silu"]) == PRESETS[name]


@pytest.mark.parametrize("name", list(PRESETS))
def test_forms_agree_with_each_presets_flags(name):
    """The preset's flags at a small width (d 24, its head count halved for vig-b): two-mask form ==
    chunked scans == token scans, and naive == chunked with gradients."""
    heads = {"vig-t": 3, "vig-s": 6, "vig-b": 6}[name]
    cfg = ModelConfig.from_preset(name, d_model=24, n_heads=heads, n_layers=1, chunk_size=16,
                                  mixer_options={"vig": {**ModelConfig.from_preset(name).mixer_options["vig"], "gate_rank": 4}})
    mixer = build_mixer(cfg)
    assert (mixer.options.conv_silu, mixer.options.out_silu) == PRESETS[name]
    x = torch.randn(2, 36, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    local = mixer.locality(x)
    q, k, v, fwd, bwd = mixer.project(local)
    parallel = mixer.output(two_mask_form(q, k, v, fwd, bwd, mixer.scale), local)
    assert_rel_close(mixer(x)[0], parallel, TOL64, f"{name}: chunked scans vs two-mask form")
    assert_rel_close(mixer.output(token_scans(q, k, v, fwd, bwd, mixer.scale), local), parallel, TOL64,
                     f"{name}: token scans vs two-mask form")
    check_backends_agree(cfg, x)


def released_vig(mixer, x, conv_silu, out_silu):
    """The released layer's forward, written from its equations with the mixer's weights:
    xs = [SiLU](DWConv3×3(x)); BiGLA on xs; o = g_norm(o); g = σ(g_proj(xs));
    o = o g + l_norm(xs) (1 - g); [o = SiLU(o)]; o_proj(o). Square grid."""
    B, T, d = x.shape
    side = int(T ** 0.5)
    xs = mixer.local_conv(x.transpose(1, 2).reshape(B, d, side, side)).flatten(2).transpose(1, 2)
    if conv_silu:
        xs = F.silu(xs)
    q, k, v, fwd, bwd = mixer.project(xs)
    o = two_mask_form(q, k, v, fwd, bwd, mixer.scale)
    g = torch.sigmoid(mixer.g_proj(xs))
    o = mixer.o_norm(o).flatten(-2) * g + mixer.l_norm(xs.reshape(o.shape)).flatten(-2) * (1 - g)
    return mixer.o_proj(F.silu(o) if out_silu else o)


@pytest.mark.parametrize("conv_silu,out_silu", [(False, False), (True, False), (False, True), (True, True)])
def test_activation_options_follow_the_released_equations(conv_silu, out_silu):
    cfg = small(mixer_options={"vig": {"gate_rank": 8, "conv_silu": conv_silu, "out_silu": out_silu}})
    mixer = build_mixer(cfg)
    x = torch.randn(2, 36, cfg.d_model, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        y = mixer(x)[0]
        assert_rel_close(y, released_vig(mixer, x, conv_silu, out_silu), TOL64, "vig vs released equations")
        for other in [(c, o) for c in (False, True) for o in (False, True) if (c, o) != (conv_silu, out_silu)]:
            assert (y - released_vig(mixer, x, *other)).abs().max() > 1e-3, f"{other} gives the same output"


def test_locality_is_a_3x3_neighbourhood_on_the_grid():
    cfg = small(mixer_options={"vig": {"grid": [5, 7]}})
    mixer = build_mixer(cfg)
    x = torch.randn(1, 35, cfg.d_model, dtype=torch.float64)
    bumped = x.clone()
    bumped[0, 2 * 7 + 3] += 1.0  # row 2, column 3
    changed = (mixer.locality(bumped) - mixer.locality(x)).abs().sum(-1)[0].view(5, 7) > 0
    expected = torch.zeros(5, 7, dtype=torch.bool)
    expected[1:4, 2:5] = True
    assert torch.equal(changed, expected)


def test_every_token_sees_every_token():
    cfg = small()
    mixer = build_mixer(cfg)
    x = torch.randn(1, 25, cfg.d_model, dtype=torch.float64, requires_grad=True)
    y, _ = mixer(x)
    for t in (0, 12, 24):
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        assert (grad[0].abs().sum(-1) > 0).all(), f"output {t} does not depend on every input token"


def test_classify_model_trains_on_a_spatial_toy_task():
    """16 training images, 6×6: class 0 has its bright pixels in the top half, class 1 in the bottom half."""
    generator = torch.Generator().manual_seed(0)
    cfg = ModelConfig.from_preset("vig-tiny", num_classes=2)
    torch.manual_seed(0)
    model = SeqLM(cfg)
    labels = torch.randint(0, 2, (16,), generator=generator)
    bright = torch.randint(128, 256, (16, 6, 6), generator=generator)
    dark = torch.randint(0, 128, (16, 6, 6), generator=generator)
    top = (labels == 0)[:, None, None] == (torch.arange(6) < 3)[None, :, None]
    images = torch.where(top, bright, dark).flatten(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = model(images, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.5 and losses[-1] < 0.05, (losses[0], losses[-1])


def test_language_model_head_is_refused():
    with pytest.raises(ValueError, match="bidirectional: use head: classify"):
        SeqLM(small(head="lm"))


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match=r"expand_v must be 1"):
        small(mixer_options={"vig": {"expand_v": 2.0}})
    with pytest.raises(ValueError, match=r"grid must be \[H, W\] with positive integers, got \[0, 4\]"):
        small(mixer_options={"vig": {"grid": [0, 4]}})
    with pytest.raises(ValueError, match=r"head_dim_k=16 does not match expand_k=0.5"):
        small(head_dim_k=16)
    mixer = build_mixer(small())
    with pytest.raises(ValueError, match=r"T=37 tokens is not a square grid"):
        mixer(torch.randn(1, 37, 32, dtype=torch.float64))
    mixer = build_mixer(small(mixer_options={"vig": {"grid": [4, 8]}}))
    with pytest.raises(ValueError, match=r"T=36 tokens but grid \[4, 8\] holds 32"):
        mixer(torch.randn(1, 36, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="no recurrent state"):
        mixer(torch.randn(1, 32, 32, dtype=torch.float64), return_state=True)
    with pytest.raises(ValueError, match="bidirectional"):
        mixer.step(torch.randn(1, 32, dtype=torch.float64), None)
