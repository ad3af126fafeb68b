"""Pretrain a causal LM of any registered family under DeepSpeed (docs/architecture.md §7).

    deepspeed --num_gpus 1 recipes/pretrain.py --config recipes/configs/demo.yaml
    python recipes/pretrain.py --config recipes/configs/demo.yaml --train.steps 50   # one process
    deepspeed --hostfile hosts recipes/pretrain.py --config run.yaml --deepspeed_config recipes/configs/zero3_bf16.json

The model is whatever the `model:` section says (`mixer: <name>` or `layers: [...]`, or a
`preset:` plus overrides); the recipe never names a family. Data: packed shards built from the
`data:` section (seqmodels.data.text). The run: seqmodels.train.pretrain (DEFAULTS lists every
setting). Outputs under `<output_dir>/<name>/`: TensorBoard events, metrics.jsonl,
run_config.yaml, checkpoints/ (atomic, resumable) and hf/ (the HF export).
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

from seqmodels.run_config import run_cli
from seqmodels.train.pretrain import parse_args, pretrain
from seqmodels.train.trainer import NonFiniteLossError, TrainResult


def main(argv: Optional[Sequence[str]] = None, callbacks: Iterable[Callable] = ()) -> TrainResult:
    run = pretrain(parse_args(argv), callbacks)
    result, run_dir = run.train, run.run_dir
    if run.is_main:
        eval_text = f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
        print(f"[pretrain] done: step {result.step}, train loss {result.last_loss:.4f}{eval_text} "
              f"in {result.seconds:.1f} s", flush=True)
        print(f"[pretrain] TensorBoard logs: {run_dir}  (view: tensorboard --logdir {run_dir.parent})")
        print(f"[pretrain] checkpoints: {run_dir / 'checkpoints'}  (latest: {result.checkpoint})")
        if run.hf_dir is not None:
            print(f"[pretrain] HF export: {run.hf_dir}  (python recipes/generate.py --model {run.hf_dir})")
    return result


if __name__ == "__main__":
    run_cli(main, "pretrain", errors=(NonFiniteLossError, ValueError))
