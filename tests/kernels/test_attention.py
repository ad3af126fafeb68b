"""attention: SDPA form == explicit float64 softmax for every mode; decoding caches == forward; GQA; input checks."""
import math

import pytest
import torch

from seqmodels.kernels.attention import ChunkCache, KVCache, WindowCache, attention, attention_step, visible_mask
from seqmodels.testing import assert_rel_close

TOL64 = 1e-10
TOL32 = 1e-5


def _qkv(B=2, T=11, S=None, H=4, Hkv=2, D=5, Dv=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = T if S is None else S
    q = torch.randn(B, T, H, D, generator=g, dtype=dtype)
    k = torch.randn(B, S, Hkv, D, generator=g, dtype=dtype)
    v = torch.randn(B, S, Hkv, Dv, generator=g, dtype=dtype)
    return q, k, v


def _extras(B=2, H=4, Hkv=2, D=5, Dv=3, P=2, m=3, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        prefix_k=torch.randn(B, P, Hkv, D, generator=g, dtype=dtype),
        prefix_v=torch.randn(B, P, Hkv, Dv, generator=g, dtype=dtype),
        sink_logits=torch.randn(H, m, generator=g, dtype=dtype),
    )


MODES = [dict(), dict(window=3), dict(chunk_size=4), dict(window=2, chunk_size=5), dict(causal=False), dict(causal=False, chunk_size=4)]


def test_naive_is_the_textbook_formula():
    # one head, no GQA: explicit loop over queries with the causal softmax
    q, k, v = _qkv(B=1, T=6, H=1, Hkv=1)
    o = attention(q, k, v, backend="naive")
    for i in range(6):
        s = torch.stack([q[0, i, 0] @ k[0, j, 0] / math.sqrt(5) for j in range(i + 1)])
        w = torch.softmax(s, 0)
        assert_rel_close(o[0, i, 0], (w[:, None] * v[0, : i + 1, 0]).sum(0), 1e-14)


def test_visible_mask_rules():
    m = visible_mask(6, 6, 0, 0, True, 2, None)
    assert m.sum(1).tolist() == [1, 2, 2, 2, 2, 2]
    m = visible_mask(6, 6, 0, 0, True, None, 3)
    assert m.sum(1).tolist() == [1, 2, 3, 1, 2, 3]
    m = visible_mask(2, 6, 4, 0, True, None, None)  # queries at positions 4, 5 over a cache
    assert m.sum(1).tolist() == [5, 6]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extras", [False, True])
def test_sdpa_equals_naive(mode, extras):
    q, k, v = _qkv()
    kw = _extras() if extras else {}
    ref = attention(q, k, v, backend="naive", **mode, **kw)
    out = attention(q, k, v, **mode, **kw)
    assert_rel_close(out, ref, TOL64, f"sdpa vs naive {mode}")
    out32 = attention(q.float(), k.float(), v.float(), **mode, **{n: t.float() for n, t in kw.items()})
    assert_rel_close(out32, ref, TOL32, "float32")


@pytest.mark.parametrize("mode", [dict(window=1), dict(window=3), dict(window=20), dict(chunk_size=4), dict(chunk_size=1), dict(window=2, chunk_size=5)])
@pytest.mark.parametrize("offset", [0, 3])
def test_local_blocks_equal_naive(mode, offset):
    """The O(T·L) block form: T = 13 not a multiple of the block, chunk boundaries at absolute positions."""
    q, k, v = _qkv(T=13)
    kw = _extras()
    leaves = [t.clone().requires_grad_() for t in (q, k, v, kw["prefix_k"], kw["prefix_v"], kw["sink_logits"])]
    grads, outs = [], []
    for backend in ("naive", "local"):
        for t in leaves:
            t.grad = None
        o = attention(*leaves[:3], k_offset=offset, prefix_k=leaves[3], prefix_v=leaves[4], sink_logits=leaves[5], backend=backend, **mode)
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum().backward()
        outs.append(o.detach())
        grads.append([t.grad.clone() for t in leaves])
    assert_rel_close(outs[1], outs[0], TOL64, f"local {mode}")
    for name, a, b in zip("q k v prefix_k prefix_v sinks".split(), grads[1], grads[0]):
        assert_rel_close(a, b, TOL64, f"local grad {name}")
    plain_local = attention(q, k, v, k_offset=offset, backend="local", **mode)
    assert_rel_close(plain_local, attention(q, k, v, k_offset=offset, backend="naive", **mode), TOL64, "local, no extras")


def test_sinks_enter_only_the_denominator():
    # with one key visible, o = v * e^s / (e^s + sum e^l)
    q, k, v = _qkv(B=1, T=1, H=1, Hkv=1)
    sinks = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    o = attention(q, k, v, sink_logits=sinks)
    s = (q[0, 0, 0] @ k[0, 0, 0]) / math.sqrt(5)
    expected = v[0, 0, 0] * torch.exp(s) / (torch.exp(s) + torch.exp(sinks).sum())
    assert_rel_close(o[0, 0, 0], expected, 1e-14)


def test_bias_and_gradients():
    q, k, v = _qkv()
    kw = _extras()
    bias = torch.randn(4, 11, 11, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias, kw["prefix_k"], kw["prefix_v"], kw["sink_logits"])]
    grads = []
    for backend in ("naive", "torch"):
        for t in leaves:
            t.grad = None
        o = attention(*leaves[:3], window=4, bias=leaves[3], prefix_k=leaves[4], prefix_v=leaves[5], sink_logits=leaves[6], backend=backend)
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum().backward()
        grads.append([t.grad.clone() for t in leaves])
    for name, a, b in zip("q k v bias prefix_k prefix_v sinks".split(), grads[1], grads[0]):
        assert_rel_close(a, b, TOL64, f"grad {name}")


def test_gqa_equals_repeat_interleave():
    q, k, v = _qkv(H=6, Hkv=2)
    o = attention(q, k, v, window=3)
    o_rep = attention(q, k.repeat_interleave(3, dim=2), v.repeat_interleave(3, dim=2), window=3, backend="naive")
    assert_rel_close(o, o_rep, TOL64, "GQA")


def test_prefix_broadcast_over_batch():
    q, k, v = _qkv()
    pk, pv = _extras()["prefix_k"][:1], _extras()["prefix_v"][:1]
    a = attention(q, k, v, prefix_k=pk[0], prefix_v=pv[0])
    b = attention(q, k, v, prefix_k=pk.expand(2, -1, -1, -1), prefix_v=pv.expand(2, -1, -1, -1), backend="naive")
    assert_rel_close(a, b, TOL64)


@pytest.mark.parametrize("mode", MODES[:4])
@pytest.mark.parametrize("split", [0, 5])
def test_prefill_continuation_with_offsets(mode, split):
    q, k, v = _qkv(T=13)
    full = attention(q, k, v, **mode)
    # continuation: queries split.. attend to all keys up to themselves (q_offset = split)
    part = attention(q[:, split:], k, v, q_offset=split, **mode)
    assert_rel_close(part, full[:, split:], TOL64)
    # same through the bounded caches: ordered() keys + new keys, with k_offset
    if mode.get("causal", True) and (("window" in mode) ^ ("chunk_size" in mode)):
        cache = WindowCache.from_prefill(k[:, :split], v[:, :split], mode["window"]) if "window" in mode else ChunkCache.from_prefill(
            k[:, :split], v[:, :split], mode["chunk_size"]
        )
        ck, cv, first = cache.ordered()
        out = attention(q[:, split:], torch.cat([ck, k[:, split:]], 1), torch.cat([cv, v[:, split:]], 1), k_offset=first, q_offset=split, **mode)
        assert_rel_close(out, full[:, split:], TOL64, "continuation from a bounded cache")


@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize("prefill", [0, 6])
def test_decode_with_each_cache_equals_forward(extras, prefill):
    q, k, v = _qkv(T=17)
    kw = _extras() if extras else {}
    cases = [
        (dict(), lambda: KVCache.from_prefill(k[:, :prefill], v[:, :prefill])),
        (dict(window=4), lambda: WindowCache.from_prefill(k[:, :prefill], v[:, :prefill], 4)),
        (dict(chunk_size=5), lambda: ChunkCache.from_prefill(k[:, :prefill], v[:, :prefill], 5)),
    ]
    for mode, make in cases:
        full = attention(q, k, v, **mode, **kw)
        cache = make()
        sizes = set()
        outs = []
        for t in range(prefill, 17):
            o_t, cache = attention_step(q[:, t], k[:, t], v[:, t], cache, **kw)
            outs.append(o_t)
            sizes.add(tuple(cache.key.shape))
        assert_rel_close(torch.stack(outs, 1), full[:, prefill:], TOL64, f"decode {mode}")
        if mode:
            assert len(sizes) == 1, "bounded cache must keep a constant size"


def test_multi_token_append_equals_token_appends():
    _, k, v = _qkv(T=11)
    for make in (lambda: WindowCache.from_prefill(k[:, :0], v[:, :0], 4), lambda: ChunkCache.from_prefill(k[:, :0], v[:, :0], 4)):
        a, b = make(), make()
        a = a.append(k[:, :2], v[:, :2]).append(k[:, 2:], v[:, 2:])  # 9 tokens at once: more than the buffer
        for t in range(11):
            b = b.append(k[:, t : t + 1], v[:, t : t + 1])
        assert a.seen_tokens == b.seen_tokens == 11
        assert a.positions().tolist() == b.positions().tolist()
        valid = a.positions() >= 0
        assert torch.equal(a.key[:, valid], b.key[:, valid]) and torch.equal(a.value[:, valid], b.value[:, valid])
    full = KVCache.from_prefill(k[:, :3], v[:, :3]).append(k[:, 3:], v[:, 3:])
    assert torch.equal(full.key, k) and full.seen_tokens == 11


def test_window_state_constant_in_T():
    q, k, v = _qkv(T=40, B=1)
    cache = WindowCache.from_prefill(k[:, :0], v[:, :0], 3)
    shapes = set()
    for t in range(40):
        _, cache = attention_step(q[:, t], k[:, t], v[:, t], cache)
        shapes.add((tuple(cache.key.shape), tuple(cache.value.shape)))
    assert shapes == {((1, 3, 2, 5), (1, 3, 2, 3))}
    assert cache.positions().tolist() == [39, 37, 38]


def test_chunk_cache_cleared_at_boundary_and_bias_in_decode():
    q, k, v = _qkv(T=12)
    c = 4
    rel = torch.randn(2 * c - 1, dtype=torch.float64)  # Mega-style relative bias b[i - j]
    idx = torch.arange(12)
    bias = rel[(idx[:, None] - idx[None, :]).clamp(-c + 1, c - 1) + c - 1]  # [T, S]
    full = attention(q, k, v, chunk_size=c, bias=bias)
    cache = ChunkCache.from_prefill(k[:, :0], v[:, :0], c)
    slots = torch.arange(c)
    for t in range(12):
        start = t - t % c  # chunk start: the buffer holds positions start..t after appending
        pos_after = torch.where(slots <= t % c, start + slots, torch.full((c,), -1))
        b = rel[(t - pos_after).clamp(-c + 1, c - 1) + c - 1]  # entries of empty slots are masked anyway
        o, cache = attention_step(q[:, t], k[:, t], v[:, t], cache, bias=b)
        assert cache.positions().tolist() == pos_after.tolist()
        assert_rel_close(o, full[:, t], TOL64, f"chunk decode t={t}")


def test_bad_inputs():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="q has shape"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="k has shape"):
        attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="v has shape"):
        attention(q, k, v[:, :5])
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        attention(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        attention(q, k, v, chunk_size=-2)
    with pytest.raises(ValueError, match="q_offset"):
        attention(q, k[:, :3], v[:, :3])  # default offset would be negative
    with pytest.raises(ValueError, match="sees no key"):
        attention(q, k, v, q_offset=0, k_offset=3)
    with pytest.raises(ValueError, match="sink_logits has shape"):
        attention(q, k, v, sink_logits=torch.zeros(3, 2, dtype=q.dtype))
    with pytest.raises(ValueError, match="prefix_k and prefix_v"):
        attention(q, k, v, prefix_k=_extras()["prefix_k"])
    with pytest.raises(ValueError, match="prefix_v has shape"):
        attention(q, k, v, prefix_k=_extras()["prefix_k"], prefix_v=_extras()["prefix_v"][..., :2])
    with pytest.raises(ValueError, match="bias has shape"):
        attention(q, k, v, bias=torch.zeros(3, 11, 11, dtype=q.dtype))
    with pytest.raises(ValueError, match="dtype"):
        attention(q, k.float(), v)
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="backend='local' needs"):
        attention(q, k, v, backend="local")  # no window / chunk
    with pytest.raises(ValueError, match="backend='local' needs"):
        attention(q[:, 2:], k, v, window=3, backend="local")  # S != T
    cache = WindowCache.from_prefill(k[:, :0], v[:, :0], 3)
    with pytest.raises(ValueError, match="k_t has shape"):
        attention_step(q[:, 0], k[:, 0, :, :4], v[:, 0], cache)
    with pytest.raises(ValueError, match="cache must be"):
        attention_step(q[:, 0], k[:, 0], v[:, 0], {"k": k})
    with pytest.raises(ValueError, match="cache.value has shape"):
        attention_step(q[:, 0], k[:, 0], v[:, 0], WindowCache(cache.key, cache.value[..., :2], 0))
    with pytest.raises(ValueError, match="needs the last"):
        WindowCache.from_prefill(k[:, :2], v[:, :2], 3, k_offset=5)
