"""CHELA's free long kernel at one decoding step: the cached kernel + ring buffer step vs rebuilding
the kernel and shifting the tail every token, per long-kernel length L_k.

    python scripts/bench_chela_step.py                       # L_k 4k and 64k, d 128, CPU
    python scripts/bench_chela_step.py --long_kernels 1024 4096 16384 65536 --steps 50

Times only the long convolution (the part the cache and the ring buffer change): "rebuilt" =
long_kernel() then long_conv_step (exp over d × L_k, concatenation, flip, dot); "cached" =
the layer's step path (cached kernel, in-place ring buffer, dot). Both run from the same state
and their outputs are compared. Reports the min over --steps steps (least disturbed by other
processes on a shared CPU) and the speedup.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from seqmodels import ModelConfig
from seqmodels.kernels.long_conv import long_conv_step
from seqmodels.layers.chela import ChelaState
from seqmodels.testing import build_mixer


@torch.no_grad()
def measure(long_kernel: int, d_model: int, steps: int, dtype) -> dict:
    cfg = ModelConfig(vocab_size=64, d_model=d_model, n_layers=1, n_heads=4, mixer="chela", max_seq_len=long_kernel,
                      mixer_options={"chela": {"long_kernel": long_kernel}})
    layer = build_mixer(cfg, dtype=dtype).eval()
    tail = torch.randn(1, long_kernel - 1, d_model, dtype=dtype)
    attn = layer.init_state(1, dtype=dtype).attn
    ring = ChelaState(None, tail.clone(), attn, 0)
    inputs = torch.randn(steps, 1, d_model, dtype=dtype)
    rebuilt_s, cached_s, worst = [], [], 0.0
    for s_t in inputs:
        start = time.perf_counter()
        y_old, tail = long_conv_step(s_t, layer.long_kernel().to(dtype), tail)
        rebuilt_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        y_new, buffer, begin = layer._long_step(s_t, ring)
        cached_s.append(time.perf_counter() - start)
        ring = ChelaState(None, buffer, attn, begin)
        worst = max(worst, float((y_new - y_old).abs().max() / y_old.abs().max()))
    return {"L_k": long_kernel, "rebuilt_ms": min(rebuilt_s) * 1e3, "cached_ms": min(cached_s) * 1e3, "rel_err": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long_kernels", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--d_model", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"device: CPU ({platform.machine()}, {args.threads} thread(s)); torch {torch.__version__}; d_model "
          f"{args.d_model}, {args.dtype}, batch 1, min of {args.steps} steps\n")
    print("| L_k | rebuilt kernel + shifted tail (ms) | cached kernel + ring buffer (ms) | speedup | max rel. diff |")
    print("|---|---|---|---|---|")
    for long_kernel in args.long_kernels:
        r = measure(long_kernel, args.d_model, args.steps, dtype)
        print(f"| {r['L_k']:,} | {r['rebuilt_ms']:.3f} | {r['cached_ms']:.3f} | {r['rebuilt_ms'] / r['cached_ms']:.1f}x | "
              f"{r['rel_err']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
