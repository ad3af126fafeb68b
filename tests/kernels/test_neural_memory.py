"""neural_memory (Titans matrix memory): chunked == sequential (autograd) == step-by-step, b = 1 == token rule;
MLP memory: torch.func step == autograd sequential reference == closed-form gradient.

fla comparison: fla.ops.titans.naive.chunk_titans_linear_ref has the same mini-batch semantics
(gradients at the mini-batch-start weights, per-token momentum η and forgetting α, read after the
update), but a different memory: a TTT-style M(k) = k + LayerNorm_{w,b}(k M) (loss target v - k,
gradient through the LayerNorm), and its read is q M_t + LayerNorm_{w,b}(q M_t). A LayerNorm
cannot be made the identity, so no choice of w, b reduces it to our linear memory M(k) = k M
(the paper's Eq. 12 loss, docs/architecture.md §5.8); it is therefore not used as an oracle here. (Its chunked
path also computes `D * grad - grad.sum(-1) / (rstd * D)`, which differs from the LayerNorm
backward written in its own comment line above it.)
"""
import pytest
import torch

from seqmodels.kernels.neural_memory import NeuralMemoryState, neural_memory, neural_memory_step
from seqmodels.kernels.neural_memory.chunk import segment_sum
from seqmodels.testing import assert_rel_close

TOL64 = 1e-10


def _inputs(B=2, T=11, H=3, Dk=5, Dv=3, dtype=torch.float64, seed=0, strong=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, Dk, generator=g, dtype=dtype)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, Dk, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, Dv, generator=g, dtype=dtype)
    theta = torch.rand(B, T, H, generator=g, dtype=dtype) * 0.5
    low = -5.0 if strong else -0.5  # strong gates: log-decays down to -5 per step
    log_eta = torch.rand(B, T, H, generator=g, dtype=dtype) * low
    log_retain = torch.rand(B, T, H, generator=g, dtype=dtype) * low
    return q, k, v, theta, log_eta, log_retain


def _state(B=2, H=3, Dk=5, Dv=3, dtype=torch.float64, seed=1, seen_in_chunk=0):
    g = torch.Generator().manual_seed(seed)
    M, S, Ms = (torch.randn(B, H, Dk, Dv, generator=g, dtype=dtype) * 0.3 for _ in range(3))
    return NeuralMemoryState(M, S, Ms if seen_in_chunk else M, seen_in_chunk)


def _steps(inputs, state, b):
    ys = []
    for t in range(inputs[0].shape[1]):
        y, state = neural_memory_step(*(x[:, t] for x in inputs), state=state, chunk_size=b)
        ys.append(y)
    return torch.stack(ys, 1), state


def _assert_state(a, b, tol, what):
    assert a.seen_in_chunk == b.seen_in_chunk, what
    for f in ("memory", "momentum", "chunk_start_memory"):
        assert_rel_close(getattr(a, f), getattr(b, f), tol, f"{what} {f}")


def test_segment_sum():
    x = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    inf = float("-inf")
    assert segment_sum(x).tolist() == [[0, inf, inf], [2, 0, inf], [6, 4, 0]]


def test_b1_equals_explicit_token_rule():
    """b = 1: S_t = η S_{t-1} - θ ∇ℓ(M_{t-1}), M_t = (1-α) M_{t-1} + S_t, y_t = q_t M_t, written out here."""
    inputs = _inputs(T=7)
    q, k, v, theta, log_eta, log_retain = inputs
    st = _state()
    M, S = st.memory.clone(), st.momentum.clone()
    ys = []
    for t in range(7):
        grad = 2 * torch.einsum("bhk,bhv->bhkv", k[:, t], torch.einsum("bhk,bhkv->bhv", k[:, t], M) - v[:, t])
        S = log_eta[:, t].exp()[..., None, None] * S - theta[:, t][..., None, None] * grad
        alpha = 1 - log_retain[:, t].exp()
        M = (1 - alpha)[..., None, None] * M + S
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], M))
    ref = torch.stack(ys, 1)
    for backend in ("naive", "torch"):
        y, final = neural_memory(*inputs, chunk_size=1, initial_state=NeuralMemoryState(st.memory, st.momentum, st.memory, 0),
                                 output_final_state=True, backend=backend)
        assert_rel_close(y, ref, TOL64, f"b=1 {backend}")
        assert_rel_close(final.memory, M, TOL64)
        assert_rel_close(final.momentum, S, TOL64)


def test_gradient_is_taken_at_chunk_start():
    """With b = T, the second token's gradient uses M_{-1} (the initial memory), not M_0."""
    q, k, v, theta, log_eta, log_retain = _inputs(T=2, B=1, H=1)
    M0 = torch.zeros(1, 1, 5, 3, dtype=torch.float64)
    y_chunk, _ = neural_memory(q, k, v, theta, log_eta, log_retain, chunk_size=2, initial_state=M0)
    # from M = 0 both gradients are -2 kᵀ v
    g0 = -2 * torch.outer(k[0, 0, 0], v[0, 0, 0])
    g1 = -2 * torch.outer(k[0, 1, 0], v[0, 1, 0])
    S0 = -theta[0, 0, 0] * g0
    M_0 = S0
    S1 = log_eta[0, 1, 0].exp() * S0 - theta[0, 1, 0] * g1
    M_1 = log_retain[0, 1, 0].exp() * M_0 + S1
    assert_rel_close(y_chunk[0, 1, 0], q[0, 1, 0] @ M_1, 1e-13)


@pytest.mark.parametrize("b", [1, 3, 4, 16])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("strong", [False, True])
def test_chunked_equals_sequential_equals_steps(b, with_state, strong):
    inputs = _inputs(T=11, strong=strong)  # 11 is not a multiple of 3, 4 or 16
    st = _state() if with_state else None
    y_ref, s_ref = neural_memory(*inputs, chunk_size=b, initial_state=st, output_final_state=True, backend="naive")
    y, s = neural_memory(*inputs, chunk_size=b, initial_state=st, output_final_state=True)
    assert_rel_close(y, y_ref, TOL64, "chunked vs sequential")
    _assert_state(s, s_ref, TOL64, "chunked final state")
    y_s, s_s = _steps(inputs, st, b)
    assert_rel_close(y_s, y_ref, TOL64, "steps vs sequential")
    _assert_state(s_s, s_ref, TOL64, "step final state")


@pytest.mark.parametrize("split", [2, 5, 8])
def test_continuation_mid_chunk(split):
    """Prefill of `split` tokens then continuation (chunked or steps) == one pass, b = 4 (split mid-batch)."""
    inputs = _inputs(T=13)
    st = _state(seen_in_chunk=3)  # even the start is mid-batch: 3 tokens of the first mini-batch already seen
    y_full, s_full = neural_memory(*inputs, chunk_size=4, initial_state=st, output_final_state=True)
    y1, s1 = neural_memory(*(x[:, :split] for x in inputs), chunk_size=4, initial_state=st, output_final_state=True)
    assert s1.seen_in_chunk == (3 + split) % 4
    y2, s2 = neural_memory(*(x[:, split:] for x in inputs), chunk_size=4, initial_state=s1, output_final_state=True)
    assert_rel_close(torch.cat([y1, y2], 1), y_full, TOL64, "chunked continuation")
    _assert_state(s2, s_full, TOL64, "continuation state")
    y3, s3 = _steps(tuple(x[:, split:] for x in inputs), s1, 4)
    assert_rel_close(torch.cat([y1, y3], 1), y_full, TOL64, "step continuation")
    y_ref, _ = neural_memory(*inputs, chunk_size=4, initial_state=st, backend="naive")
    assert_rel_close(y_full, y_ref, TOL64, "mid-batch start vs sequential")


def test_gradients_chunked_vs_sequential():
    base = _inputs(T=9, B=1, H=2)
    st = _state(B=1, H=2, seen_in_chunk=1)
    grads = {}
    for backend in ("naive", "torch"):
        leaves = [t.clone().requires_grad_() for t in base]
        s_leaves = [t.clone().requires_grad_() for t in (st.memory, st.momentum, st.chunk_start_memory)]
        y, final = neural_memory(*leaves, chunk_size=4, initial_state=NeuralMemoryState(*s_leaves, 1),
                                 output_final_state=True, backend=backend)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        ((y * w).sum() + final.memory.square().sum() + final.momentum.sin().sum()).backward()
        grads[backend] = [t.grad for t in leaves + s_leaves]
    names = "q k v theta log_eta log_retain M0 S0 M_start".split()
    for name, a, b in zip(names, grads["torch"], grads["naive"]):
        assert_rel_close(a, b, TOL64, f"grad {name}")


def test_float32():
    inputs = _inputs(T=37)
    y_ref, _ = neural_memory(*inputs, chunk_size=8, backend="naive")
    y, s = neural_memory(*(x.float() for x in inputs), chunk_size=8, output_final_state=True)
    assert y.dtype == torch.float32 and s.memory.dtype == torch.float32
    assert_rel_close(y, y_ref, 1e-5, "float32 chunked")  # float32 tolerance 1e-5


def test_bad_inputs():
    q, k, v, theta, log_eta, log_retain = _inputs()
    with pytest.raises(ValueError, match="q has shape"):
        neural_memory(q[0], k, v, theta, log_eta, log_retain)
    with pytest.raises(ValueError, match="k has shape"):
        neural_memory(q, k[:, :3], v, theta, log_eta, log_retain)
    with pytest.raises(ValueError, match="v has shape"):
        neural_memory(q, k, v[:, :, :2], theta, log_eta, log_retain)
    with pytest.raises(ValueError, match="theta has shape"):
        neural_memory(q, k, v, theta[..., None], log_eta, log_retain)
    with pytest.raises(ValueError, match="theta must be >= 0"):
        neural_memory(q, k, v, -theta - 0.1, log_eta, log_retain)
    with pytest.raises(ValueError, match="log_eta has a positive value"):
        neural_memory(q, k, v, theta, -log_eta + 0.1, log_retain)
    with pytest.raises(ValueError, match="log_retain has a positive value"):
        neural_memory(q, k, v, theta, log_eta, -log_retain + 0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        neural_memory(q, k, v, theta, log_eta, log_retain, chunk_size=0)
    with pytest.raises(ValueError, match="dtype"):
        neural_memory(q, k, v.float(), theta, log_eta, log_retain)
    with pytest.raises(ValueError, match="initial_state has shape"):
        neural_memory(q, k, v, theta, log_eta, log_retain, initial_state=torch.zeros(2, 3, 5, 4, dtype=q.dtype))
    with pytest.raises(ValueError, match="initial_state.seen_in_chunk"):
        neural_memory(q, k, v, theta, log_eta, log_retain, chunk_size=4, initial_state=_state(seen_in_chunk=4))
    with pytest.raises(ValueError, match="NeuralMemoryState"):
        neural_memory(q, k, v, theta, log_eta, log_retain, initial_state={"memory": 0})
    with pytest.raises(ValueError, match="backend"):
        neural_memory(q, k, v, theta, log_eta, log_retain, backend="triton")
    with pytest.raises(ValueError, match="log_eta_t has a positive value"):
        neural_memory_step(q[:, 0], k[:, 0], v[:, 0], theta[:, 0], -log_eta[:, 0] + 0.1, log_retain[:, 0])
    with pytest.raises(ValueError, match="state.memory has shape"):
        neural_memory_step(q[:, 0], k[:, 0], v[:, 0], theta[:, 0], log_eta[:, 0], log_retain[:, 0], state=_state(H=2))


# ---- 2-layer MLP memory (token loop + step; torch.func gradients vs autograd reference) ----

from seqmodels.kernels.neural_memory import MLPMemoryState, mlp_memory, mlp_memory_step  # noqa: E402


def _mlp_weights(B=2, H=3, Dk=5, Dh=4, Dv=3, dtype=torch.float64, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, Dk, Dh, generator=g, dtype=dtype) * 0.5, torch.randn(B, H, Dh, Dv, generator=g, dtype=dtype) * 0.5)


def test_mlp_b1_equals_closed_form_gradient():
    """One token from zero momentum: u = ∇ℓ written out (ℓ = ||SiLU(k W1) W2 - v||²), then P = (1-α) P + S."""
    q, k, v, theta, log_eta, log_retain = (x[:, 0] for x in _inputs(T=1))
    W1, W2 = _mlp_weights()
    z = torch.einsum("bhk,bhkd->bhd", k, W1)
    hidden = torch.nn.functional.silu(z)
    e = torch.einsum("bhd,bhdv->bhv", hidden, W2) - v
    g2 = 2 * hidden.unsqueeze(-1) * e.unsqueeze(-2)
    dsilu = torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z)))
    g1 = 2 * k.unsqueeze(-1) * (torch.einsum("bhv,bhdv->bhd", e, W2) * dsilu).unsqueeze(-2)
    keep = log_retain.exp()[..., None, None]
    new1, new2 = keep * W1 - theta[..., None, None] * g1, keep * W2 - theta[..., None, None] * g2
    expected = torch.einsum("bhd,bhdv->bhv", torch.nn.functional.silu(torch.einsum("bhk,bhkd->bhd", q, new1)), new2)
    y, state = mlp_memory_step(q, k, v, theta, log_eta, log_retain, (W1, W2), chunk_size=1)
    assert_rel_close(y, expected, 1e-12, "MLP step vs closed form")
    assert_rel_close(state.memory[0], new1, 1e-12)
    assert_rel_close(state.momentum[1], -theta[..., None, None] * g2, 1e-12)


@pytest.mark.parametrize("b", [1, 3])
def test_mlp_step_loop_equals_autograd_reference(b):
    inputs = _inputs(T=8)
    weights = _mlp_weights()
    y_ref, s_ref = mlp_memory(*inputs, initial_state=weights, chunk_size=b, output_final_state=True, backend="naive")
    y, s = mlp_memory(*inputs, initial_state=weights, chunk_size=b, output_final_state=True)
    assert_rel_close(y, y_ref, TOL64, "MLP torch.func vs autograd")
    assert s.seen_in_chunk == s_ref.seen_in_chunk == 8 % b
    for f in ("memory", "momentum", "chunk_start_memory"):
        for a, r in zip(getattr(s, f), getattr(s_ref, f)):
            assert_rel_close(a, r, TOL64, f"MLP state {f}")
    # continuation mid mini-batch through the step
    y1, s1 = mlp_memory(*(x[:, :4] for x in inputs), initial_state=weights, chunk_size=b, output_final_state=True)
    ys = [y1]
    for t in range(4, 8):
        y_t, s1 = mlp_memory_step(*(x[:, t] for x in inputs), state=s1, chunk_size=b)
        ys.append(y_t.unsqueeze(1))
    assert_rel_close(torch.cat(ys, 1), y_ref, TOL64, "MLP continuation")


def test_mlp_gradients_agree():
    base = _inputs(T=5, B=1, H=2)
    w = _mlp_weights(B=1, H=2)
    grads = {}
    for backend in ("naive", "torch"):
        leaves = [t.clone().requires_grad_() for t in base + w]
        y, st = mlp_memory(*leaves[:6], initial_state=tuple(leaves[6:]), chunk_size=2, output_final_state=True, backend=backend)
        (y.sin().sum() + st.memory[0].square().sum()).backward()
        grads[backend] = [t.grad for t in leaves]
    for name, a, b in zip("q k v theta log_eta log_retain W1 W2".split(), grads["torch"], grads["naive"]):
        assert_rel_close(a, b, TOL64, f"MLP grad {name}")


def test_mlp_bad_inputs():
    q, k, v, theta, log_eta, log_retain = _inputs()
    W1, W2 = _mlp_weights()
    with pytest.raises(ValueError, match=r"initial_state.memory\[1\] has shape"):
        mlp_memory(q, k, v, theta, log_eta, log_retain, initial_state=(W1, W2[:, :, :3]))
    with pytest.raises(ValueError, match="MLPMemoryState or the weights"):
        mlp_memory(q, k, v, theta, log_eta, log_retain, initial_state=W1)
    with pytest.raises(ValueError, match="2 weights"):
        mlp_memory(q, k, v, theta, log_eta, log_retain, initial_state=(W1,))
    with pytest.raises(ValueError, match="state.seen_in_chunk"):
        mlp_memory_step(q[:, 0], k[:, 0], v[:, 0], theta[:, 0], log_eta[:, 0], log_retain[:, 0],
                        state=MLPMemoryState((W1, W2), (W1, W2), (W1, W2), 5), chunk_size=2)
    with pytest.raises(ValueError, match="theta_t must be >= 0"):
        mlp_memory_step(q[:, 0], k[:, 0], v[:, 0], -theta[:, 0] - 1, log_eta[:, 0], log_retain[:, 0], state=(W1, W2))
