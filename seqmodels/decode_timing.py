"""Decoding cost of a model at a context length: a chunked prefill that builds the decoding
state, then timed single-token `step` calls (docs/architecture.md §9). Shared by
scripts/bench_decode.py (every family, several contexts) and the family comparison
(seqmodels.probes.compare: one context per model).
"""
from __future__ import annotations

import time

import torch


@torch.no_grad()
def prefill(model, ids: torch.Tensor, chunk: int):
    state = None
    for start in range(0, ids.shape[1], chunk):
        state = model(ids[:, start:start + chunk], state=state, return_state=True).state
    return state


MIN_TIMED_STEPS = 20


@torch.no_grad()
def step_times(model, states: dict, tokens: int, rounds: int, vocab: int, device, budget_s: float) -> dict:
    """Per context: all timed `step` durations (s). After 2 warm-up steps per context, `tokens`
    steps per context are timed, lowered (to no fewer than MIN_TIMED_STEPS) so that all contexts'
    timed steps fit `budget_s` at their warm-up latencies. The contexts take turns, `tokens //
    rounds` steps each per round, so load from other processes hits every context alike."""
    tokens_now = {context: torch.randint(0, vocab, (1,), device=device) for context in states}

    def one_step(context) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits, states[context] = model.step(tokens_now[context], states[context])
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        tokens_now[context] = logits.argmax(-1)
        return elapsed

    warm = {context: min(one_step(context) for _ in range(2)) for context in states}
    affordable = int(budget_s / sum(warm.values()))
    tokens = max(MIN_TIMED_STEPS, min(tokens, affordable))
    rounds = rounds if 0 < rounds <= tokens else tokens
    per_round = tokens // rounds
    times = {context: [] for context in states}
    for _ in range(rounds):
        for context in states:
            times[context] += [one_step(context) for _ in range(per_round)]
    return times
