"""Linearize a Llama-family HF checkpoint: attention transfer, then distillation (docs/architecture.md §5.10, §7).

    python recipes/linearize.py --teacher DIR --config recipes/configs/linearize_lizard.yaml
    deepspeed --num_gpus 1 recipes/linearize.py --teacher DIR --config recipes/configs/linearize_lizard.yaml

Stage 1: every attention layer gets a student mixer built with `from_attention` (`student.mixer`:
lizard, lolcats, any mixer defining it), trained on the per-layer attention-output MSE. Stage 2:
the student model trains on `stage2.loss` (kl: KL(teacher ‖ student), the default; ce: next-token
cross-entropy; kl+ce) through LoRA adapters, merged before export. The pipeline and every setting: seqmodels.linearize.pipeline (DEFAULTS). Outputs
under `<output_dir>/<name>/`: hf/ (a SeqModelsForCausalLM directory), report.json and report.md
(perplexities, MQAR, decode-state bytes, tokens per stage, per-layer transfer MSE, KL, branch
ablation), stage1/ and stage2/ (checkpoints, TensorBoard).
"""
from __future__ import annotations

from typing import Optional, Sequence

from seqmodels.linearize.pipeline import parse_args, run_linearize
from seqmodels.run_config import run_cli
from seqmodels.train.trainer import NonFiniteLossError


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    run = run_linearize(parse_args(argv))
    if run.report is not None:
        print((run.run_dir / "report.md").read_text(), flush=True)
        print(f"[linearize] HF export: {run.hf_dir}  (python recipes/generate.py --model {run.hf_dir})", flush=True)
    return run.report


if __name__ == "__main__":
    run_cli(main, "linearize", errors=(NonFiniteLossError, ValueError))
