"""Training throughput and peak memory of one step per registered family at equal size (docs/architecture.md §9).

    python scripts/bench_train.py                        # CPU defaults: d_model 256, 4 layers, 4 x 512 tokens
    python scripts/bench_train.py --seq_len 2048 --batch 8 --d_model 768 --n_layers 12   # GPU

A step = forward + backward + AdamW step of the LM loss (plain torch, what the DeepSpeed
engine runs per micro-batch without communication). Every family runs in its own subprocess so
its peak memory is its own: CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS growth from
just before the first step (ru_maxrss - RSS before). Tokens/s from the median of `--steps` timed
steps after one warm-up step. Families come from the registry (seqmodels.benchmark_families), MLP
widths matched so parameter counts agree within ~2%. Prints a markdown table with ratios to the
Transformer (attention).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(args) -> dict:
    import torch

    from seqmodels.benchmark_families import family_configs
    from seqmodels import SeqLM

    torch.set_num_threads(args.threads)
    rows = {label: cfg for label, cfg, _ in family_configs(args.d_model, args.n_layers, args.vocab, args.seq_len)}
    cfg = rows[args.one]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = SeqLM(cfg).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), device=device)

    def step():
        loss = model(ids[:, :-1], labels=ids[:, 1:]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (allocates optimizer state)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    median = statistics.median(times)
    return {"family": args.one, "params": model.num_parameters(), "step_s": median,
            "tokens_per_s": args.batch * args.seq_len / median, "peak_mem_bytes": peak,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--n_layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--families", nargs="*", help="subset of registered mixers (default: all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one family, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return

    from seqmodels.benchmark_families import family_configs, select

    chosen, notes = select(family_configs(args.d_model, args.n_layers, args.vocab, args.seq_len), args.families)
    results = []
    for name, _ in chosen:
        cmd = [sys.executable, __file__, "--one", name] + [
            f"--{k}={v}" for k, v in vars(args).items() if k not in ("one", "families") and v is not None]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            notes.append(f"{name}: failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"measured {name}", file=sys.stderr, flush=True)
    if not results:
        raise SystemExit("no family measured: " + "; ".join(notes))
    base = next((r for r in results if r["family"] == "attention"), results[0])
    print(f"device: {results[0]['device']}; torch {__import__('torch').__version__}; batch {args.batch} x "
          f"{args.seq_len} tokens, d_model {args.d_model}, {args.n_layers} layers, vocab {args.vocab}, {args.dtype}; "
          f"median of {args.steps} steps\n")
    print("| family | params (M) | step (ms) | tokens/s | vs Transformer | peak memory (MB) | vs Transformer |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        mem_ratio = r["peak_mem_bytes"] / base["peak_mem_bytes"] if base["peak_mem_bytes"] > 0 else float("nan")
        print(f"| {r['family']} | {r['params'] / 1e6:.2f} | {r['step_s'] * 1e3:.0f} | {r['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['peak_mem_bytes'] / 2**20:.0f} | {mem_ratio:.2f}x |")
    for note in notes:
        print(f"\n- {note}")


if __name__ == "__main__":
    main()
