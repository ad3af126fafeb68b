"""Long Range Arena (Tay et al. 2020, arXiv 2011.04006): sequence classification with any mixer;
reports test accuracy.

    python recipes/lra.py --config recipes/configs/lra_listops_cpu.yaml
    python recipes/lra.py --task listops --data.source files --data.dir lra_release/listops-1000 --model.mixer gla
    deepspeed --num_gpus 8 recipes/lra.py --task text --data.dir imdb_tsv --config my_lra.yaml

Tasks, their files, the model and the outputs: seqmodels.probes.lra (DEFAULTS lists every
setting). Outputs under runs/<name>/: TensorBoard, metrics.jsonl, run_config.yaml, checkpoints/
and result.json.
"""
from __future__ import annotations

from typing import Optional, Sequence

from seqmodels.probes import lra
from seqmodels.run_config import run_cli
from seqmodels.train.trainer import NonFiniteLossError


def main(argv: Optional[Sequence[str]] = None) -> dict:
    result = lra.run_lra(lra.parse_args(argv))
    report = result.report
    if result.is_main:
        task = report["task"]
        print(f"[lra] {task}: test accuracy {report['test_accuracy']:.4f} (validation {report['val_accuracy']:.4f}) "
              f"after {report['steps']} steps, {report['seconds']:.0f} s; LRA's Transformer: "
              f"{lra.LRA_TRANSFORMER_ACCURACY[task]}%. Results: {result.result_file}; "
              f"TensorBoard: tensorboard --logdir {result.result_file.parent}", flush=True)
    return report


if __name__ == "__main__":
    run_cli(main, "lra", errors=(NonFiniteLossError, ValueError))
