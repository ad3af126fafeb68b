"""Benchmark the `gla` op: fwd and fwd+bwd time per backend over a T sweep, with ratios (docs/architecture.md §9).

    python scripts/bench_kernels.py --device cpu

CPU mode: naive (masked T×T form where it fits in --naive-mem-gb, and the token loop) vs the
chunked PyTorch form, B=1, H=4, D=64, per-channel key decay. Prints the device, one table, the
ratios naive/chunked and the chunked time ratio between consecutive T (linear in T: about 2);
`--scaling N` adds that ratio for the two largest T measured alternately N times each.
A `--device cuda` mode adds GPU backends to BACKENDS_BY_DEVICE (one function per backend).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from seqmodels.kernels.gla import gla_chunk, gla_naive, gla_recurrent


def make_inputs(T, B=1, H=4, D=64, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    q, k, v = rand(B, T, H, D), rand(B, T, H, D), rand(B, T, H, D)
    log_decay_k = torch.nn.functional.logsigmoid(rand(B, T, H, D) + 3) / 16  # GLA's gate: logsigmoid(.)/16
    return q, k, v, log_decay_k


# one function per backend: (q, k, v, log_decay_k, args) -> output to time (and backprop through)
def run_naive_masked(q, k, v, gk, args):
    return gla_naive(q, k, v, gk)[0]


def run_naive_loop(q, k, v, gk, args):
    return gla_recurrent(q, k, v, gk)[0]


def run_torch_chunked(q, k, v, gk, args):
    return gla_chunk(q, k, v, gk, chunk_size=args.chunk_size, sub_chunk_size=args.sub_chunk)[0]


def naive_masked_fits(T, B, H, D, args) -> bool:
    """The masked form holds about 4 float32 [B,H,T,T,D] tensors (decays, their grads) at once."""
    return 4 * B * H * T * T * D * 4 / 2 ** 30 <= args.naive_mem_gb


BACKENDS_BY_DEVICE = {
    # name: (function, can it run this shape?)
    "cpu": {
        "naive T×T": (run_naive_masked, naive_masked_fits),
        "naive loop": (run_naive_loop, lambda T, *a: T <= a[-1].naive_max_T),
        "torch chunked": (run_torch_chunked, lambda *a: True),
    },
}


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}  # process: CPU time, robust to a shared machine
clock = CLOCKS["wall"]


def time_call(fn, device, repeats, backward, warmup=True):
    """Median time (s, `clock`) of fn() (and its backward) over `repeats` runs, after one warm-up run if asked."""
    times = []
    for i in range(repeats + 1 - int(not warmup)):
        synchronize(device)
        start = clock()
        out = fn()
        if backward:
            out.backward(torch.ones_like(out))
        synchronize(device)
        if i or not warmup:
            times.append(clock() - start)
    return statistics.median(times)


def bench(args):
    rows = []
    for T in args.T:
        row = {"T": T}
        for name, (fn, fits) in BACKENDS_BY_DEVICE[args.device].items():
            if not fits(T, args.B, args.H, args.D, args):
                row[name] = (None, None)
                continue
            q, k, v, gk = make_inputs(T, args.B, args.H, args.D, args.device)
            repeats = args.naive_repeats if name.startswith("naive") else args.repeats
            with torch.no_grad():
                fwd = time_call(lambda: fn(q, k, v, gk, args), args.device, repeats, False)
            leaves = [t.requires_grad_(True) for t in (q, k, v, gk)]
            both = time_call(lambda: fn(*leaves, args), args.device, repeats, True)
            row[name] = (fwd, both)
            print(f"  T={T:5d} {name:14s} fwd {fwd * 1e3:9.1f} ms  fwd+bwd {both * 1e3:9.1f} ms", flush=True)
        rows.append(row)
    return rows


def interleaved_scaling(args, name="torch chunked"):
    """t(2T)/t(T) of `name` for T = the largest --T / 2, fwd and fwd+bwd: the two lengths are timed
    alternately `args.scaling` times each (after one warm-up of each), so a slow spell of a shared
    machine hits both alike. Rows: min and median of each length and their ratios."""
    fn = BACKENDS_BY_DEVICE[args.device][name][0]
    long_T = max(args.T)
    lengths = (long_T // 2, long_T)
    inputs = {T: make_inputs(T, args.B, args.H, args.D, args.device) for T in lengths}
    results = {}
    for backward in (False, True):
        times = {T: [] for T in lengths}
        for i in range(args.scaling + 1):
            for T in lengths:
                q, k, v, gk = inputs[T]
                if backward:
                    q, k, v, gk = (t.detach().requires_grad_(True) for t in (q, k, v, gk))
                with torch.set_grad_enabled(backward):
                    elapsed = time_call(lambda: fn(q, k, v, gk, args), args.device, 1, backward, warmup=False)
                if i:  # the first round is the warm-up
                    times[T].append(elapsed)
        results["fwd+bwd" if backward else "fwd"] = times
    print(f"\n{name}: T={lengths[0]} and T={lengths[1]} timed alternately, {args.scaling} runs each after a warm-up")
    print(f"| pass | T={lengths[0]} min ms | T={lengths[1]} min ms | ratio of mins | T={lengths[0]} median ms | "
          f"T={lengths[1]} median ms | ratio of medians |")
    print("|---|---|---|---|---|---|---|")
    for pass_name, times in results.items():
        short, long_ = times[lengths[0]], times[lengths[1]]
        lo, hi = min(short), min(long_)
        mid_lo, mid_hi = statistics.median(short), statistics.median(long_)
        print(f"| {pass_name} | {lo * 1e3:.1f} | {hi * 1e3:.1f} | {hi / lo:.2f} | {mid_lo * 1e3:.1f} | "
              f"{mid_hi * 1e3:.1f} | {mid_hi / mid_lo:.2f} |")


def fmt(seconds):
    return "—" if seconds is None else f"{seconds * 1e3:.1f}"


def ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.1f}×"


def print_table(rows, names, reference):
    """Markdown table: per backend fwd / fwd+bwd ms; naive/reference ratios; reference T-scaling."""
    others = [n for n in names if n != reference]
    header = ["T"] + [f"{n} fwd ms" for n in names] + [f"{n} fwd+bwd ms" for n in names]
    header += [f"{n} / {reference} fwd, fwd+bwd" for n in others] + [f"{reference} t(T)/t(T/2) fwd, fwd+bwd"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    prev = None
    for row in rows:
        ref = row[reference]
        cells = [str(row["T"])] + [fmt(row[n][0]) for n in names] + [fmt(row[n][1]) for n in names]
        cells += [f"{ratio(row[n][0], ref[0])}, {ratio(row[n][1], ref[1])}" for n in others]
        if prev is not None and row["T"] == 2 * prev["T"]:
            cells.append(f"{ratio(ref[0], prev[reference][0])}, {ratio(ref[1], prev[reference][1])}".replace("×", ""))
        else:
            cells.append("—")
        print("| " + " | ".join(cells) + " |")
        prev = row


def keep_freed_memory() -> str:
    """glibc: serve every allocation from the heap and never give freed memory back (mallopt), so
    repeated calls reuse pages instead of mapping and zero-filling fresh ones. By default glibc maps
    blocks above its dynamic threshold (at most 32 MB) anew on each allocation: at T=8k the chunked
    form's largest saved tensors pass 32 MB, at T=4k they do not, which bends the T-scaling."""
    import ctypes
    import ctypes.util

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        ok = libc.mallopt(M_MMAP_THRESHOLD, 2 ** 30) and libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
    except (OSError, AttributeError):
        ok = 0
    return "glibc keeps freed memory (mmap threshold 1 GiB, no trim)" if ok else "could not set mallopt (not glibc?)"


def describe_device(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=sorted(BACKENDS_BY_DEVICE))
    parser.add_argument("--T", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--H", type=int, default=4)
    parser.add_argument("--D", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--sub-chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-max-T", type=int, default=4096, help="longest T timed with the token loop")
    parser.add_argument("--naive-repeats", type=int, default=1, help="timed runs of the (slow) naive forms")
    parser.add_argument("--naive-mem-gb", type=float, default=2.0, help="memory allowed to the masked T×T form")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="wall time, or this process's CPU time (use on a loaded shared CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--scaling", type=int, default=0,
                        help="also time the chunked form at max(T)/2 and max(T) alternately this many times each "
                             "(the T-scaling ratio with drift cancelled); 0: off")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="CPU: glibc reuses freed memory instead of mapping fresh pages per call (mallopt)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device: {describe_device(args.device)}")
    if args.keep_freed_memory:
        print(f"allocator: {keep_freed_memory()}")
    print(f"gla, B={args.B} H={args.H} Dk=Dv={args.D}, per-channel key decay, float32, "
          f"chunk {args.chunk_size} / sub-chunk {args.sub_chunk}, median of {args.repeats} runs "
          f"after one warm-up (naive: {args.naive_repeats} run, no warm-up); naive T×T only where it fits in "
          f"{args.naive_mem_gb} GB, naive loop up to T={args.naive_max_T}; clock: {args.clock}")
    rows = bench(args)
    names = list(BACKENDS_BY_DEVICE[args.device])
    print()
    print_table(rows, names, reference="torch chunked")
    if args.scaling:
        interleaved_scaling(args)


if __name__ == "__main__":
    main()
