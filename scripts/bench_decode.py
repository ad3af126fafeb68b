"""Per-token decoding latency and state memory vs context length, per family vs the Transformer's
KV cache (docs/architecture.md §9).

    python scripts/bench_decode.py                                   # CPU: contexts 1k..64k
    python scripts/bench_decode.py --contexts 1024 8192 65536 --d_model 768 --n_layers 12   # GPU

For each registered causal family (seqmodels.benchmark_families: every family from its tiny preset,
scaled to one shape, MLP widths matched to the Transformer's parameter count) and each context
length L: a chunked prefill of L random tokens (forward with state continuation,
`--prefill_chunk` tokens at a time) builds the decoding state; then `--tokens` single-token
`step` calls are timed per context (fewer for a slow family, so its steps fit
`--step_budget_s`), the contexts taking turns in `--rounds` rounds (default: one step per
context per round, so a slow spell of the machine hits every context alike), after 2 warm-up
steps. Reported: median and min; ratios and the check use the min, the estimator least
disturbed by other processes on a shared CPU. State bytes = ModelState.nbytes() at L. A
family's larger contexts are skipped (and the table says so) when its prefill would exceed
`--prefill_budget_s`, extrapolated from its last two prefills.
Checks the linear families' promise: latency at the largest context <= 1.1x latency at the
smallest, and state bytes constant.

    python scripts/bench_decode.py --hf --families gla transformer    # HF generate vs SeqLM.generate

`--hf`: greedy generation of `--hf_new_tokens` tokens after a `--hf_prompt`-token prompt, batch 1,
through Hugging Face `generate` (SeqModelsForCausalLM) and `SeqLM.generate` on the same weights;
tokens/s of each (best of `--hf_repeats` runs after a warm-up, prefill included in both) and the
ratio SeqLM / HF (the wrapper's overhead; target <= 1.3x).
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time

import torch

from seqmodels.decode_timing import MIN_TIMED_STEPS, prefill, step_times


def measure_family(name, cfg, args, device) -> list[dict]:
    from seqmodels import SeqLM

    torch.manual_seed(0)
    model = SeqLM(cfg).to(device=device, dtype=getattr(torch, args.dtype)).eval()
    rows, history, states = [], [], {}
    gen = torch.Generator().manual_seed(0)
    for context in args.contexts:
        if history:
            (l0, t0), (l1, t1) = (history[-2] if len(history) > 1 else (history[-1][0] / 2, history[-1][1] / 2)), history[-1]
            power = max(1.0, math.log(max(t1, 1e-9) / max(t0, 1e-9)) / math.log(l1 / l0))
            estimate = t1 * (context / l1) ** power
            if estimate > args.prefill_budget_s:
                rows.append({"family": name, "context": context, "skipped": f"prefill ~{estimate:.0f} s > budget"})
                continue
        ids = torch.randint(0, cfg.vocab_size, (1, context), generator=gen).to(device)
        start = time.perf_counter()
        try:
            states[context] = prefill(model, ids, args.prefill_chunk)
        except (ValueError, RuntimeError) as exc:  # a family's bug must not sink the other rows
            rows.append({"family": name, "context": context, "skipped": f"failed: {type(exc).__name__}: {exc}"})
            print(f"{name} {context}: FAILED {exc}", file=sys.stderr, flush=True)
            break
        history.append((context, time.perf_counter() - start))
        rows.append({"family": name, "context": context, "state_bytes": states[context].nbytes(),
                     "prefill_s": history[-1][1]})
    try:
        times = step_times(model, states, args.tokens, args.rounds, cfg.vocab_size, device, args.step_budget_s)
    except (ValueError, RuntimeError) as exc:
        return [{"family": name, "context": r["context"], "skipped": f"step failed: {exc}"} for r in rows]
    for row in rows:
        if "skipped" not in row:
            row["latency_s"] = statistics.median(times[row["context"]])
            row["min_latency_s"] = min(times[row["context"]])
            print(f"{name} {row['context']}: prefill {row['prefill_s']:.1f} s, {row['min_latency_s'] * 1e3:.2f} ms/token "
                  f"(min of {len(times[row['context']])}), {row['state_bytes']:,} state bytes", file=sys.stderr, flush=True)
    return rows


@torch.no_grad()
def hf_vs_seqlm(name, cfg, args, device) -> dict:
    """tokens/s of HF generate and SeqLM.generate on the same model and prompt (greedy, same lengths)."""
    from seqmodels import SeqModelsConfig, SeqModelsForCausalLM

    torch.manual_seed(0)
    hf = SeqModelsForCausalLM(SeqModelsConfig(cfg)).to(device=device, dtype=getattr(torch, args.dtype)).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, args.hf_prompt), generator=torch.Generator().manual_seed(0)).to(device)
    runs = {
        "hf": lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.hf_new_tokens,
                                  min_new_tokens=args.hf_new_tokens, do_sample=False, pad_token_id=0),
        "seqlm": lambda: hf.model.generate(ids, args.hf_new_tokens, temperature=0),
    }
    best, outputs = {}, {}
    for round_ in range(args.hf_repeats + 1):  # round 0 warms up
        for key, run in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs[key] = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_ > 0:
                best[key] = min(best.get(key, math.inf), time.perf_counter() - start)
    if not torch.equal(outputs["hf"], outputs["seqlm"]):
        raise RuntimeError(f"{name}: HF generate and SeqLM.generate disagree on the greedy tokens")
    row = {"family": name, **{f"{k}_tokens_per_s": args.hf_new_tokens / v for k, v in best.items()}}
    row["ratio"] = row["seqlm_tokens_per_s"] / row["hf_tokens_per_s"]
    print(f"{name}: HF {row['hf_tokens_per_s']:.0f} tokens/s, SeqLM {row['seqlm_tokens_per_s']:.0f} tokens/s, "
          f"ratio {row['ratio']:.2f}x", file=sys.stderr, flush=True)
    return row


def print_hf_rows(rows, args, device_name) -> None:
    print(f"device: {device_name}; torch {torch.__version__}; d_model {args.d_model}, {args.n_layers} layers, "
          f"vocab {args.vocab}, {args.dtype}, batch 1, greedy; prompt {args.hf_prompt} tokens, "
          f"{args.hf_new_tokens} new tokens, best of {args.hf_repeats} runs\n")
    print("| family | HF generate (tokens/s) | SeqLM.generate (tokens/s) | SeqLM / HF |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['hf_tokens_per_s']:,.0f} | {r['seqlm_tokens_per_s']:,.0f} | {r['ratio']:.2f}x |")
    worst = max(r["ratio"] for r in rows)
    print(f"\n- largest SeqLM / HF ratio {worst:.2f}x -> {'PASS' if worst <= 1.3 else 'FAIL'} (<= 1.3x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d_model", type=int, default=128)
    parser.add_argument("--n_layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--tokens", type=int, default=500,
                        help="timed decode steps per context (the min over many steps is the stable estimate)")
    parser.add_argument("--step_budget_s", type=float, default=60.0,
                        help="time for one family's timed steps, all contexts together (fewer steps for slow ones)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="contexts take turns this many times (0: every step, the finest interleaving)")
    parser.add_argument("--prefill_chunk", type=int, default=2048)
    parser.add_argument("--prefill_budget_s", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--families", nargs="*", help="subset of registered mixers (default: all)")
    parser.add_argument("--hf", action="store_true", help="HF generate vs SeqLM.generate tokens/s (see above)")
    parser.add_argument("--hf_prompt", type=int, default=32)
    parser.add_argument("--hf_new_tokens", type=int, default=128)
    parser.add_argument("--hf_repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    from seqmodels.benchmark_families import family_configs, select

    if args.hf:
        chosen, notes = select(family_configs(args.d_model, args.n_layers, args.vocab,
                                              args.hf_prompt + args.hf_new_tokens + 8), args.families)
        device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()}, {args.threads} thread(s))"
        print_hf_rows([hf_vs_seqlm(name, cfg, args, device) for name, cfg in chosen], args, device_name)
        return
    chosen, notes = select(family_configs(args.d_model, args.n_layers, args.vocab,
                                          max(args.contexts) + args.tokens + 8), args.families)
    results = {name: measure_family(name, cfg, args, device) for name, cfg in chosen}

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()}, {args.threads} thread(s))"
    print(f"device: {device_name}; torch {torch.__version__}; d_model {args.d_model}, {args.n_layers} layers, "
          f"vocab {args.vocab}, {args.dtype}, batch 1; up to {args.tokens} timed steps per context "
          f"(at least {MIN_TIMED_STEPS}, within {args.step_budget_s:g} s per family)\n")
    base = {r["context"]: r for r in results.get("attention", []) if "skipped" not in r}
    print("| family | context | state (KB) | state vs KV cache | ms/token (median) | ms/token (min) | "
          "min vs own first context | min vs Transformer |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for name, rows in results.items():
        measured = [r for r in rows if "skipped" not in r]
        for r in rows:
            if "skipped" in r:
                print(f"| {name} | {r['context']:,} | — | — | skipped: {r['skipped']} | — | — | — |")
                continue
            b = base.get(r["context"])
            state_ratio = f"{r['state_bytes'] / b['state_bytes']:.3f}x" if b else "n/a"
            lat_ratio = f"{r['min_latency_s'] / b['min_latency_s']:.2f}x" if b else "n/a"
            own = r["min_latency_s"] / measured[0]["min_latency_s"]
            print(f"| {name} | {r['context']:,} | {r['state_bytes'] / 1024:,.1f} | {state_ratio} | "
                  f"{r['latency_s'] * 1e3:.2f} | {r['min_latency_s'] * 1e3:.2f} | {own:.2f}x | {lat_ratio} |")
        sizes = {r["state_bytes"] for r in measured}
        if len(measured) >= 2:
            growth = measured[-1]["min_latency_s"] / measured[0]["min_latency_s"]
            constant = len(sizes) == 1
            ok = constant and growth <= 1.1
            kind = "constant state" if constant else "state grows"
            verdicts.append(f"{name}: {kind}; latency at {measured[-1]['context']:,} = {growth:.2f}x latency at "
                            f"{measured[0]['context']:,}" + (f" -> {'PASS' if ok else 'FAIL'} (<= 1.1x)" if constant else ""))
    print()
    for line in verdicts + notes:
        print(f"- {line}")


if __name__ == "__main__":
    main()
