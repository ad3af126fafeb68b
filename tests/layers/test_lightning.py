"""Lightning attention / TransNormerLLM (arXiv 2307.14995, 2401.04658; docs/architecture.md §5.3).

float64 equivalences at relative error <= 1e-10; fla's float32 reference at <= 1e-5.
"""
import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.layers.lightning import alibi_slopes, lightning_log_decay
from seqmodels.testing import assert_rel_close, build_mixer, check_mixer_contract

TOL64, TOL32 = 1e-10, 1e-5


def small(**overrides):
    values = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=4, mixer="lightning", mlp="sglu", chunk_size=16)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.mark.parametrize("options", [{}, {"decay_schedule": "paper"}, {"lrpe": True}])
def test_mixer_contract(options):
    check_mixer_contract(small(mixer_options={"lightning": options}), layer_idx=1)


def test_decay_schedules():
    # official: s_h = 2^{-8(h+1)/H}; layer 1 of 3 -> factor 1 - 1/2 + 1e-5
    expected = torch.tensor([-(2.0 ** (-8 * (h + 1) / 4)) * (0.5 + 1e-5) for h in range(4)], dtype=torch.float64)
    assert_rel_close(lightning_log_decay(4, 1, 3, "official"), expected, 1e-15, "official schedule")
    # last layer nearly undecayed; a 1-layer model is treated as layer 0 of a deep stack
    assert_rel_close(lightning_log_decay(4, 2, 3), -torch.tensor(alibi_slopes(4), dtype=torch.float64) * 1e-5, 1e-15)
    assert_rel_close(lightning_log_decay(2, 0, 1), -torch.tensor([2.0**-4, 2.0**-8], dtype=torch.float64) * (1 + 1e-5), 1e-15)
    # paper: -(8h/H)(1 - l/L)
    expected = torch.tensor([-(8 * h / 4) * (1 - 1 / 3) for h in range(4)], dtype=torch.float64)
    assert_rel_close(lightning_log_decay(4, 1, 3, "paper"), expected, 1e-15, "paper schedule")
    assert alibi_slopes(8) == [2.0 ** (-(h + 1)) for h in range(8)]


def test_matches_fla_naive_parallel_simple_gla():
    fla_naive = pytest.importorskip("fla.ops.simple_gla.naive", reason="flash-linear-attention not installed")
    cfg = small()
    mixer = build_mixer(cfg, layer_idx=1)
    x = torch.randn(2, 37, cfg.d_model, dtype=torch.float64)
    q, k, v = mixer.project(x, 0)
    g = mixer.log_decay(x)[None, None, :].expand(2, 37, cfg.n_heads)
    expected, _ = fla_naive.naive_parallel_simple_gla(q, k, v, g, scale=1.0)
    y, _ = mixer(x)
    assert_rel_close(y, mixer.output(expected.double(), x), TOL32, "lightning vs fla naive_parallel_simple_gla (float32)")


def test_lrpe_scores_depend_on_relative_position():
    """[x cos θt, x sin θt]·[y cos θs, y sin θs] = Σ x y cos θ(t-s): shifting both positions changes nothing."""
    mixer = build_mixer(small(mixer_options={"lightning": {"lrpe": True}}))
    a, b = torch.randn(2, 1, 9, 4, 8, dtype=torch.float64)
    scores = lambda off: torch.einsum("bthd,bshd->bhts", mixer._lrpe(a, off), mixer._lrpe(b, off))  # noqa: E731
    assert_rel_close(scores(0), scores(57), TOL64, "LRPE scores under a position shift")
    theta = mixer.lrpe_theta.double()
    t, s = torch.arange(9.0, dtype=torch.float64)[:, None], torch.arange(9.0, dtype=torch.float64)[None]
    expected = torch.einsum("thd,shd,htsd->hts", a[0], b[0], torch.cos(theta[:, None, None] * (t - s)[None, :, :, None]))
    assert_rel_close(scores(0)[0], expected, TOL64, "LRPE closed form")


def test_bad_config():
    with pytest.raises(ValueError, match=r"decay_schedule='alibi' is not one of \['official', 'paper'\]"):
        small(mixer_options={"lightning": {"decay_schedule": "alibi"}})
    with pytest.raises(ValueError, match="unknown option"):
        small(mixer_options={"lightning": {"lrpe_theta": 1.0}})
