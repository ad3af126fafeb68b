"""MQAR sweep (Zoology, Arora et al. 2023, arXiv 2312.04927 §3-4): a grid of mixers x d_model x
(seq_len, num_kv_pairs) x lr, the best lr per cell into results.csv / results.md / results.png.

    python recipes/mqar.py --config recipes/configs/mqar_cpu.yaml
    python recipes/mqar.py --config recipes/configs/mqar_cpu.yaml --grid.d_models '[64]' --name quick
    deepspeed --num_gpus 8 recipes/mqar.py --config recipes/configs/mqar_zoology.yaml

The grid language, resume and multi-rank work queue: seqmodels.probes.mqar (and mqar_grid,
mqar_results); the defaults of every setting: seqmodels.probes.mqar.DEFAULTS.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

from seqmodels.probes import mqar
from seqmodels.run_config import run_cli
from seqmodels.train.trainer import NonFiniteLossError


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    start = time.time()
    sweep = mqar.run_sweep(mqar.parse_args(argv))
    out_dir = sweep.out_dir
    if sweep.is_main:
        print(f"[mqar] {len(sweep.rows)}/{len(sweep.runs)} runs finished (the others: see results.md); "
              f"this launch took {time.time() - start:.1f} s; results: {out_dir / 'results.md'}, "
              f"{out_dir / 'results.csv'}, {out_dir / 'results.png'}; "
              f"TensorBoard: tensorboard --logdir {out_dir / 'cells'}", flush=True)
    return sweep.rows


if __name__ == "__main__":
    run_cli(main, "mqar", errors=(NonFiniteLossError, ValueError))
