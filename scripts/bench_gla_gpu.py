"""GPU benchmark of the `gla` Triton kernels (docs/architecture.md §9): ours vs fla vs SDPA, one run.

Times forward and forward+backward (medians of triton.testing.do_bench, bf16 inputs) of
  ours-gla     : seqmodels triton_chunk.gla_triton, per-channel log-decay [B,T,H,D]
  fla-gla      : fla.ops.gla.chunk_gla (same inputs)
  ours-sgla    : gla_triton with one scalar log-decay per head [B,T,H]
  fla-sgla     : fla.ops.simple_gla.chunk_simple_gla (same inputs)
  sdpa         : torch scaled_dot_product_attention, causal softmax, same B,T,H,D
on fla's shapes (B,T,H,D) and a T sweep at a fixed token count, plus a bf16 matmul peak.
Ratios are speedups: "ours/fla" = time(fla) / time(ours), so > 1 means ours is faster.
Correctness in the same run: relative RMS error of bf16 outputs and gradients vs a float32
reference (the float32 torch backend `gla(backend="torch")` when available, otherwise our
kernel in float32 with IEEE matmuls; the script says which).

FLOP conventions (per batch x head): chunked GLA fwd = T * (2*C*(Dk+Dv) + 4*Dk*Dv) with chunk C
(intra scores + A·V + inter read-out + state update), bwd = 2 x fwd; causal SDPA fwd = 2*T^2*D
(half of 4*T^2*D), bwd = 2.5 x fwd (FlashAttention convention).

Usage:  python scripts/bench_gla_gpu.py [--quick] [--no-sweep] [--rep MS]
Needs a CUDA device; fla is optional (its columns read n/a when it cannot be imported).
"""
from __future__ import annotations

import argparse
import functools
import sys

import torch
import torch.nn.functional as F

FLA_SHAPES = [(1, 8192, 96, 128), (2, 16384, 16, 128), (4, 2048, 16, 128), (8, 1024, 8, 64)]
SWEEP_T = [1024, 2048, 4096, 8192, 16384, 32768]
SWEEP_TOKENS, SWEEP_H, SWEEP_D = 32768, 16, 128
CHUNK = 64
DEVICE = "cuda"
print = functools.partial(print, flush=True)  # rows survive a run cut off by a time limit


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench_gla_gpu.py needs a CUDA device (torch.cuda.is_available() is False); "
                 "the CPU timings live in scripts/bench_kernels.py")


def _load_fla():
    """(chunk_gla, chunk_simple_gla, note): fla's kernels, or (None, None, why not)."""
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla
        return chunk_gla, chunk_simple_gla, "fla imported"
    except Exception as exc:  # optional dependency: report and go on
        return None, None, f"fla unavailable ({type(exc).__name__}: {exc})"


def _load_reference():
    """(fn(q,k,v,g,scale) -> o, name) computing the float32 reference."""
    from seqmodels.kernels.gla.triton_chunk import gla_triton
    try:
        from seqmodels.kernels.gla import gla

        def ref(q, k, v, g, scale):
            return gla(q, k, v, log_decay_k=g, scale=scale, chunk_size=CHUNK, backend="torch")[0]
        return ref, "float32 torch backend gla(backend='torch')"
    except Exception:
        def ref(q, k, v, g, scale):
            return gla_triton(q, k, v, g, scale, None, False, False, CHUNK)[0]
        return ref, "float32 triton kernel (IEEE matmuls); torch backend not importable"


def matmul_peak_tflops(n: int = 8192) -> float:
    from triton.testing import do_bench
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, return_mode="median")
    return 2 * n ** 3 / ms / 1e9


def gla_flops(B, T, H, D, chunk=CHUNK):
    fwd = B * H * T * (2 * chunk * (D + D) + 4 * D * D)
    return fwd, 3 * fwd


def sdpa_flops(B, T, H, D):
    fwd = 2 * B * H * T * T * D
    return fwd, 3.5 * fwd


def make_inputs(B, T, H, D, scalar, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device=DEVICE, dtype=torch.bfloat16, generator=gen)
    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
    gate_shape = (B, T, H) if scalar else (B, T, H, D)
    # gates as in GLA (log-sigmoid, normalised by 16): log-decay in (-inf, 0)
    g = F.logsigmoid(torch.randn(*gate_shape, device=DEVICE, generator=gen)) / 16
    return q, k, v, g.to(torch.bfloat16)


def methods(fla_gla, fla_sgla):
    """name -> (scalar_gate, fn(q, k, v, g, scale) -> o). SDPA ignores g."""
    from seqmodels.kernels.gla.triton_chunk import gla_triton

    def ours(q, k, v, g, scale):
        return gla_triton(q, k, v, g, scale, None, False, False, CHUNK)[0]

    def sdpa(q, k, v, g, scale):
        # layout [B,H,T,D] for SDPA; the transposes are views, included in the timing as a user would pay them
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=True, scale=scale).transpose(1, 2)

    table = {"ours-gla": (False, ours), "ours-sgla": (True, ours), "sdpa": (True, sdpa)}
    if fla_gla is not None:
        table["fla-gla"] = (False, lambda q, k, v, g, scale: fla_gla(q, k, v, g, scale=scale)[0])
        table["fla-sgla"] = (True, lambda q, k, v, g, scale: fla_sgla(q, k, v, g, scale=scale)[0])
    return table


def time_method(fn, B, T, H, D, scalar, rep):
    from triton.testing import do_bench
    q, k, v, g = make_inputs(B, T, H, D, scalar)
    scale = D ** -0.5
    fn(q, k, v, g, scale)  # compile / autotune outside the timed region
    fwd = do_bench(lambda: fn(q, k, v, g, scale), rep=rep, return_mode="median")
    leaves = [x.clone().requires_grad_() for x in (q, k, v, g)]
    do = torch.randn(B, T, H, D, device=DEVICE, dtype=torch.bfloat16)

    def step():
        fn(*leaves, scale).backward(do)
    step()
    fwdbwd = do_bench(step, rep=rep, grad_to_none=leaves, return_mode="median")
    return fwd, fwdbwd


def rel_rms(a, b):
    a, b = a.float(), b.float()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def correctness(fn, ref, B, T, H, D, scalar):
    """max over (o, dq, dk, dv, dg) of relative RMS error of bf16 `fn` vs the float32 reference."""
    q, k, v, g = make_inputs(B, T, H, D, scalar, seed=1)
    do = torch.randn(B, T, H, D, device=DEVICE, dtype=torch.bfloat16)
    errs = []
    results = []
    for f, dtype in ((fn, torch.bfloat16), (ref, torch.float32)):
        leaves = [x.to(dtype).clone().requires_grad_() for x in (q, k, v, g)]
        o = f(*leaves, D ** -0.5)
        o.backward(do.to(dtype))
        results.append([o.detach()] + [x.grad for x in leaves])
        del o, leaves
    for a, b in zip(*results):
        errs.append(rel_rms(a, b))
    return max(errs)


def fmt_row(cells, widths):
    return " | ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def run_shapes(shapes, table, ref, peak, rep, title):
    print(f"\n## {title}")
    cols = ["B", "T", "H", "D", "method", "fwd ms", "fwd TF/s", "fwd %pk", "f+b ms", "f+b TF/s", "f+b %pk",
            "f+b ours/fla", "f+b ours/sdpa", "fwd ours/fla", "relRMS"]
    widths = [2, 6, 3, 4, 9, 8, 8, 7, 8, 8, 7, 12, 13, 12, 8]
    print(fmt_row(cols, widths))
    print("-|-".join("-" * w for w in widths))
    for (B, T, H, D) in shapes:
        times = {}
        for name, (scalar, fn) in table.items():
            try:
                times[name] = time_method(fn, B, T, H, D, scalar, rep)
            except torch.cuda.OutOfMemoryError:
                times[name] = None
            torch.cuda.empty_cache()
        for name, (scalar, fn) in table.items():
            t = times[name]
            if t is None:
                print(fmt_row([B, T, H, D, name, "OOM"] + [""] * 9, widths))
                continue
            fl_f, fl_fb = sdpa_flops(B, T, H, D) if name == "sdpa" else gla_flops(B, T, H, D)
            tf_f, tf_fb = fl_f / t[0] / 1e9, fl_fb / t[1] / 1e9
            ratio_fla = ratio_sdpa = ratio_fla_f = ""
            if name.startswith("ours"):
                fla_name = name.replace("ours", "fla")
                if times.get(fla_name):
                    ratio_fla = f"{times[fla_name][1] / t[1]:.2f}"
                    ratio_fla_f = f"{times[fla_name][0] / t[0]:.2f}"
                if times.get("sdpa"):
                    ratio_sdpa = f"{times['sdpa'][1] / t[1]:.2f}"
            err = ""
            if name != "sdpa":
                try:
                    err = f"{correctness(fn, ref, B, T, H, D, scalar):.1e}"
                except torch.cuda.OutOfMemoryError:
                    err = "OOM"
                torch.cuda.empty_cache()
            print(fmt_row([B, T, H, D, name, f"{t[0]:.3f}", f"{tf_f:.1f}", f"{100 * tf_f / peak:.1f}",
                           f"{t[1]:.3f}", f"{tf_fb:.1f}", f"{100 * tf_fb / peak:.1f}",
                           ratio_fla, ratio_sdpa, ratio_fla_f, err], widths))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the two smallest fla shapes, no sweep")
    parser.add_argument("--no-sweep", action="store_true", help="skip the T sweep")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetition time in ms")
    args = parser.parse_args(argv)
    _require_cuda()
    import triton

    fla_gla, fla_sgla, fla_note = _load_fla()
    ref, ref_name = _load_reference()
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | {fla_note}")
    peak = matmul_peak_tflops()
    print(f"measured bf16 matmul peak (8192^3): {peak:.1f} TFLOP/s")
    print(f"correctness reference: {ref_name}; relRMS = max over o, dq, dk, dv, dg (bf16 vs float32)")
    print("ratios are speedups: time(other) / time(ours), > 1 means ours is faster; chunk size", CHUNK)
    table = methods(fla_gla, fla_sgla)
    shapes = FLA_SHAPES[2:] if args.quick else FLA_SHAPES
    run_shapes(shapes, table, ref, peak, args.rep, "fla benchmark shapes (bf16)")
    if not (args.quick or args.no_sweep):
        sweep = [(max(1, SWEEP_TOKENS // T), T, SWEEP_H, SWEEP_D) for T in SWEEP_T]
        run_shapes(sweep, table, ref, peak, args.rep, f"T sweep at {SWEEP_TOKENS} tokens, H={SWEEP_H}, D={SWEEP_D} (bf16)")


if __name__ == "__main__":
    main()
