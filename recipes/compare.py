"""Which family? Every causal family (and a few hybrids) trained on equal terms — matched
parameter count, the same tokens in the same order, the same schedule and seed — and its
held-out loss split on AR hits (Zoology, Arora et al. 2023, arXiv 2312.04927 §3), with MQAR
accuracy, training throughput, peak memory and decoding cost per model.

    python recipes/compare.py --config recipes/configs/compare_cpu.yaml
    python recipes/compare.py --config recipes/configs/compare_cpu.yaml --name reduced \\
        --grid.families '[attention, gla, base_conv]' --grid.hybrids '[[base_conv, based]]'
    deepspeed --num_gpus 2 recipes/compare.py --config recipes/configs/compare_cpu.yaml   # 2 ranks share the models

Outputs under `<output_dir>/<name>/`: results.csv, results.md, loss_curves.png, ppl_split.png,
and per model `<model>/` (TensorBoard events, metrics.jsonl, hf/, result.json). Rerunning skips
finished models and resumes an interrupted one. Definitions, matching and resume:
seqmodels.probes.compare (and compare_grid, compare_tokens, compare_results); docs/compare.md.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

from seqmodels.probes import compare
from seqmodels.run_config import run_cli


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    start = time.time()
    result = compare.run_compare(compare.parse_args(argv))
    out_dir = result.out_dir
    if result.is_main:
        done = sum(1 for row in result.rows if "error" not in row)
        print(f"[compare] {done}/{len(result.models)} models finished (see results.md); this launch took "
              f"{time.time() - start:.1f} s; results: {out_dir / 'results.md'}, {out_dir / 'results.csv'}, "
              f"{out_dir / 'loss_curves.png'}, {out_dir / 'ppl_split.png'}; "
              f"TensorBoard: tensorboard --logdir {out_dir}", flush=True)
    return result.rows


if __name__ == "__main__":
    run_cli(main, "compare", errors=(ValueError,))
