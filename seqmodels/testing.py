"""Test helpers: comparison metrics and the mixer-contract checks every family's tests run.

The five invariants of docs/architecture.md §4.1, for a mixer built from a ModelConfig in float64:
1. forward with kernel_backend="naive" == forward with the chunked backend ("torch");
2. forward(x) == T calls of step() from init_state();
3. forward(x[:, :t]) then forward(x[:, t:], state) == forward(x);
4. gradients of (1) agree (inputs and all parameters);
5. the state's size does not grow with T (bytes of the state after T and 4T tokens).
`check_padding` checks the pad_mask contract (§4.1, "Padding") for the same mixers.
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from seqmodels.state import state_nbytes


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are zero)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    diff = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    return diff / scale if scale > 0 else diff


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    err = rel_err(actual, expected)
    assert err <= tol, f"{what or 'tensors'} differ: relative error {err:.3e} > {tol:.1e}"


def rel_rms_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """sqrt(mean (a-e)^2) / sqrt(mean e^2): the metric for bf16 checks."""
    a, e = actual.double(), expected.double()
    denom = e.pow(2).mean().sqrt().item()
    num = (a - e).pow(2).mean().sqrt().item()
    return num / denom if denom > 0 else num


# --------------------------------------------------------------- mixer checks
def build_mixer(cfg, layer_idx: int = 0, seed: int = 0, dtype=torch.float64, **cfg_overrides):
    """The mixer of layer `layer_idx`, in `dtype`, with seeded random weights."""
    from seqmodels.layers.registry import get_mixer

    if cfg_overrides:
        cfg = dataclasses.replace(cfg, **cfg_overrides)
    torch.manual_seed(seed)
    mixer = get_mixer(cfg.mixer_for_layer(layer_idx))(cfg, layer_idx)
    hook = getattr(mixer, "init_weights", None)
    if hook is not None:
        hook()
    return mixer.to(dtype)


def _same_weights(mixer, cfg, **overrides):
    twin = build_mixer(dataclasses.replace(cfg, **overrides), mixer.layer_idx, dtype=next(mixer.parameters()).dtype)
    twin.load_state_dict(mixer.state_dict())
    return twin


def check_backends_agree(cfg, x: torch.Tensor, tol: float = 1e-10, layer_idx: int = 0, grads: bool = True):
    """Invariants 1 and 4: naive backend == chunked backend, outputs and gradients."""
    chunked = build_mixer(cfg, layer_idx, dtype=x.dtype, kernel_backend="torch")
    naive = _same_weights(chunked, cfg, kernel_backend="naive")
    xa, xb = x.clone().requires_grad_(grads), x.clone().requires_grad_(grads)
    ya, _ = chunked(xa)
    yb, _ = naive(xb)
    assert_rel_close(ya, yb, tol, "chunked vs naive forward")
    if not grads:
        return
    weight = torch.randn_like(ya)
    (ya * weight).sum().backward()
    (yb * weight).sum().backward()
    assert_rel_close(xa.grad, xb.grad, tol, "input gradient, chunked vs naive")
    for (name, pa), (_, pb) in zip(chunked.named_parameters(), naive.named_parameters()):
        if pa.grad is None and pb.grad is None:
            continue
        assert pa.grad is not None and pb.grad is not None, f"gradient missing for {name}"
        assert_rel_close(pa.grad, pb.grad, tol, f"gradient of {name}, chunked vs naive")


def check_step_matches_forward(mixer, x: torch.Tensor, tol: float = 1e-10):
    """Invariant 2: forward(x) == token-by-token step from init_state."""
    with torch.no_grad():
        full, _ = mixer(x)
        state = mixer.init_state(x.shape[0], x.device, x.dtype)
        outs = []
        for t in range(x.shape[1]):
            y_t, state = mixer.step(x[:, t], state)
            outs.append(y_t)
    assert_rel_close(torch.stack(outs, 1), full, tol, "step-by-step vs forward")
    return state


def check_prefill_continuation(mixer, x: torch.Tensor, split: int, tol: float = 1e-10):
    """Invariant 3: forward on a prefix, then on the rest from its state == forward(x); the
    state returned after the whole prefix equals the state after stepping through it."""
    with torch.no_grad():
        full, full_state = mixer(x, return_state=True)
        first, state = mixer(x[:, :split], return_state=True)
        second, state = mixer(x[:, split:], state=state, return_state=True)
    assert_rel_close(torch.cat([first, second], 1), full, tol, "prefill + continuation vs forward")
    return full_state, state


def check_prefill_in_pieces(mixer, x: torch.Tensor, sizes, tol: float = 1e-10):
    """forward over consecutive pieces of x (lengths `sizes`), each continuing the previous state,
    then `step` over the remaining tokens == forward(x). Catches tail/buffer handling when a piece
    is shorter than a conv tail or crosses a chunk boundary."""
    with torch.no_grad():
        full, _ = mixer(x)
        outs, state, start = [], None, 0
        for size in sizes:
            y, state = mixer(x[:, start : start + size], state=state, return_state=True)
            outs.append(y)
            start += size
        for t in range(start, x.shape[1]):
            y_t, state = mixer.step(x[:, t], state)
            outs.append(y_t[:, None])
    assert_rel_close(torch.cat(outs, 1), full, tol, f"prefill in pieces {list(sizes)} + steps vs forward")


def check_state_size_constant(mixer, make_input, time: int):
    """Invariant 5: state bytes after `time` tokens == after 4 * `time` tokens."""
    with torch.no_grad():
        _, short = mixer(make_input(time), return_state=True)
        _, long = mixer(make_input(4 * time), return_state=True)
    short_bytes, long_bytes = state_nbytes(short), state_nbytes(long)
    assert short_bytes == long_bytes, f"state grows with T: {short_bytes} bytes at T={time}, {long_bytes} at T={4 * time}"
    return short_bytes


def check_mixer_contract(cfg, batch: int = 2, time: int = 37, split: int = 19, tol: float = 1e-10,
                         layer_idx: int = 0, grads: bool = True, constant_state: bool = True, seed: int = 0):
    """All five invariants for the mixer of `layer_idx` (float64, random weights)."""
    generator = torch.Generator().manual_seed(seed)

    def make_input(t):
        return torch.randn(batch, t, cfg.d_model, generator=generator, dtype=torch.float64)

    x = make_input(time)
    check_backends_agree(cfg, x, tol, layer_idx, grads)
    mixer = build_mixer(cfg, layer_idx)
    if mixer.causal:
        check_step_matches_forward(mixer, x, tol)
        check_prefill_continuation(mixer, x, split, tol)
        if constant_state:
            check_state_size_constant(mixer, make_input, time)
    return mixer


# ------------------------------------------------------------------ padding
def _padded_batch(rows, time: int, left: bool, generator):
    """Rows [n_b, d] placed left or right in a [B, time, d] batch whose pad positions hold noise (so a
    mixer that reads them fails); returns (x, pad_mask)."""
    d = rows[0].shape[-1]
    x = 3 * torch.randn(len(rows), time, d, generator=generator, dtype=rows[0].dtype)
    pad_mask = torch.zeros(len(rows), time, dtype=torch.bool)
    for b, row in enumerate(rows):
        span = slice(time - len(row), time) if left else slice(0, len(row))
        x[b, span], pad_mask[b, span] = row, True
    return x, pad_mask


def check_padding(cfg, lengths=(23, 17, 9), steps: int = 3, tol: float = 1e-9, layer_idx: int = 0, seed: int = 0) -> str:
    """The pad_mask contract (docs/architecture.md §4.1) for a causal mixer, float64, random weights.

    Rows of `lengths` tokens (the longest fills the batch) are run alone and inside one batch:
    - right padding: the real tokens' outputs equal the rows' own;
    - left padding: the same, and decoding continues the padded prefill's state exactly: `steps`
      calls of step(), and separately one forward over the next `steps` tokens, equal the rows'
      unpadded outputs there.
    A mixer may refuse left padding with a ValueError naming itself and the fix; it must accept
    right padding. Returns "exact" or the refusal message."""
    generator = torch.Generator().manual_seed(seed)
    mixer = build_mixer(cfg, layer_idx)
    name = mixer.mixer_name
    time = max(lengths)
    rows = [torch.randn(n + steps, cfg.d_model, generator=generator, dtype=torch.float64) for n in lengths]
    with torch.no_grad():
        alone = [mixer(row[None])[0][0] for row in rows]  # each row's own outputs, prompt and continuation
        x, pad_mask = _padded_batch([row[:n] for row, n in zip(rows, lengths)], time, False, generator)
        y, _ = mixer(x, pad_mask=pad_mask)
        for b, n in enumerate(lengths):
            assert_rel_close(y[b, :n], alone[b][:n], tol, f"{name}: right-padded row {b} vs the row alone")
        x, pad_mask = _padded_batch([row[:n] for row, n in zip(rows, lengths)], time, True, generator)
        try:
            y, state = mixer(x, return_state=True, pad_mask=pad_mask)
        except ValueError as refusal:
            message = str(refusal)
            assert f"'{name}'" in message and "batch size 1" in message, f"{name}: refusal must name the mixer and the fix: {message}"
            return message
        for b, n in enumerate(lengths):
            assert_rel_close(y[b, time - n:], alone[b][:n], tol, f"{name}: left-padded row {b} vs the row alone")
        following = torch.stack([row[n:] for row, n in zip(rows, lengths)])  # [B, steps, d]
        expected = torch.stack([a[n:] for a, n in zip(alone, lengths)])
        chunk, _ = mixer(following, state=copy.deepcopy(state))
        assert_rel_close(chunk, expected, tol, f"{name}: forward continuing a left-padded prefill")
        outs = []
        for t in range(steps):
            y_t, state = mixer.step(following[:, t], state)
            outs.append(y_t)
        assert_rel_close(torch.stack(outs, 1), expected, tol, f"{name}: steps continuing a left-padded prefill")
    return "exact"


# -------------------------------------------------------------- model checks
def train_toy_sequence(cfg, steps: int = 50, lr: float = 3e-3, period: int = 12, length: int = 48, seed: int = 0):
    """Train a SeqLM on one repeating random token pattern; returns (first loss, last loss, model)."""
    from seqmodels.model import SeqLM

    torch.manual_seed(seed)
    model = SeqLM(cfg)
    pattern = torch.randint(0, cfg.vocab_size, (period,))
    data = pattern.repeat(length // period + 2)[: length + 1][None].repeat(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(data[:, :-1], labels=data[:, 1:]).loss
        if not torch.isfinite(loss):
            raise AssertionError(f"loss became {loss.item()} after {len(losses)} steps")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1], model


def check_generate_matches_forward(model, prompt: torch.Tensor, new_tokens: int = 6):
    """Greedy generate (prefill + recurrent steps) == argmax over repeated full forwards."""
    model.eval()
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=new_tokens, temperature=0)
        seq = prompt
        for _ in range(new_tokens):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, seq), f"generate {generated.tolist()} != repeated forward {seq.tolist()}"
