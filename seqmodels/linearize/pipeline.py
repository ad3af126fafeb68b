"""Linearize a Llama-family HF checkpoint (docs/architecture.md §5.10, §7): the run config, the data, and the
whole pipeline: stage 1 (attention transfer) and stage 2 (distillation) (stages.py), the HF
export of the merged student and the report (report.py).

Data: packed shards of `data.corpus` tokenized with the teacher's tokenizer (the teacher
directory's, or `data.tokenizer`). Outputs under `<output_dir>/<name>/`: stage1/ and stage2/
(checkpoints, TensorBoard), hf/ (a SeqModelsForCausalLM directory), report.json, report.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from seqmodels.data.text import PackedTextData, TextDataSettings
from seqmodels.linearize.report import build_report, write_report
from seqmodels.linearize.stages import ScalarLog, run_stage1, run_stage2
from seqmodels.linearize.student import assemble_student
from seqmodels.linearize.teacher import check_tokenizer, load_teacher, teacher_tokenizer_dir
from seqmodels.run_config import format_config, parse_run_args, write_run_config
from seqmodels.train.deepspeed_config import micro_batch_size, resolve_deepspeed_config
from seqmodels.train.distributed import barrier, init_distributed
from seqmodels.train.evaluation import evaluate_lm
from seqmodels.train.export import export_hf
from seqmodels.train.trainer import TrainSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}

DEFAULTS = {
    "name": "linearize",
    "output_dir": "runs",
    "teacher": None,  # a Llama-family HF directory (--teacher DIR)
    "teacher_dtype": "float32",
    "student": {"mixer": "lizard", "options": {}},  # options: the mixer's Options (window, n_meta, ...)
    "data": {**asdict(TextDataSettings()), "tokenizer": None},  # tokenizer None: the teacher directory's
    "deepspeed_config": "cpu.json",
    "ds": {},
    "dist_backend": None,
    "stage1": {"train": asdict(TrainSettings())},
    "stage2": {
        "train": asdict(TrainSettings()),
        "lora": {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj"]},
        "extra_trainable": [],  # parameter-name substrings trained beside LoRA, e.g. [feature_q, alpha]
        "loss": "kl",  # kl | ce | kl+ce (seqmodels.linearize.distill; docs/linearize.md says which paper uses which)
        "kl_weight": 1.0,  # weights of the terms `loss` names
        "ce_weight": 1.0,
        "temperature": 1.0,
    },
    "report": {"eval_batches": 16, "mqar": {"num_kv_pairs": 4, "seq_len": 64, "num_examples": 64},
               "state_contexts": [1024, 8192], "ablation": True},
}


def parse_args(argv: Optional[Sequence[str]] = None) -> dict:
    """The run config: DEFAULTS <- --config YAML files <- --section.key value flags."""
    return parse_run_args(argv, DEFAULTS, open_sections=("student.options", "ds"))


def resolve_data(cfg: dict, teacher_dir: str, vocab_size: int, info) -> PackedTextData:
    """Packed shards tokenized with the teacher's tokenizer (checked against its vocab before packing)."""
    from seqmodels.data.tokenizer import load_tokenizer

    data_cfg = dict(cfg["data"])
    if not data_cfg.get("tokenizer") and not data_cfg.get("packed"):
        tok_dir = teacher_tokenizer_dir(teacher_dir)
        if tok_dir is None:
            raise ValueError(f"teacher {teacher_dir} has no tokenizer files (tokenizer.json / tokenizer_config.json); "
                             "set data.tokenizer to the teacher's tokenizer directory")
        data_cfg["tokenizer"] = str(tok_dir)
    if data_cfg.get("tokenizer"):
        check_tokenizer(load_tokenizer(data_cfg["tokenizer"]), vocab_size)
    data = PackedTextData(TextDataSettings.from_dict(data_cfg), info)
    check_tokenizer(data.tokenizer, vocab_size)
    return data


def no_eval_reason(cfg: dict, data: PackedTextData, micro_batch: int, world_size: int) -> str:
    """Why the packed data gives no held-out batch: no validation split, or one smaller than a global batch."""
    splits = data.index["splits"]
    if "validation" not in splits:
        return "the packed data has no validation split: set data.validation_fraction > 0"
    n, need = splits["validation"]["num_sequences"], micro_batch * world_size
    return (f"the validation split has {n} sequences of {data.seq_len} tokens but one eval batch needs {need} "
            f"({micro_batch} per process x {world_size} process(es)): raise data.validation_fraction (now "
            f"{cfg['data']['validation_fraction']}) or data.max_bytes, or lower ds.train_micro_batch_size_per_gpu")


@dataclass
class LinearizeRun:
    report: Optional[dict]  # rank 0 only (None elsewhere)
    run_dir: Path
    hf_dir: Path


def run_linearize(cfg: dict) -> LinearizeRun:
    """Both stages, then (rank 0) the HF export and the report; every rank calls."""
    if not cfg["teacher"]:
        raise ValueError("no teacher: pass --teacher DIR (a Llama-family Hugging Face directory)")
    if cfg["teacher_dtype"] not in DTYPES:
        raise ValueError(f"teacher_dtype must be one of {sorted(DTYPES)}, got {cfg['teacher_dtype']!r}")
    info = init_distributed(cfg["dist_backend"])
    resolved = format_config(cfg)
    if info.is_main:
        print(f"[linearize] resolved config ({info.world_size} process(es)):\n{resolved}", flush=True)
    ds_config = resolve_deepspeed_config(cfg["deepspeed_config"], cfg["ds"])
    run_dir = Path(cfg["output_dir"]) / cfg["name"]

    from deepspeed.accelerator import get_accelerator

    teacher = load_teacher(cfg["teacher"], DTYPES[cfg["teacher_dtype"]])
    data = resolve_data(cfg, cfg["teacher"], teacher.cfg.vocab_size, info)
    teacher.to(get_accelerator().current_device_name())
    eval_batches = data.eval_batches(micro_batch_size(ds_config))
    if eval_batches is None:
        raise ValueError(no_eval_reason(cfg, data, micro_batch_size(ds_config), info.world_size))
    if info.is_main:
        write_run_config(run_dir, resolved)
    n_eval = cfg["report"]["eval_batches"]

    mixers, mse_before, mse_after, tokens1 = run_stage1(cfg, teacher, data, ds_config, info, run_dir, eval_batches)
    ppl_stage1 = evaluate_lm(assemble_student(teacher, mixers), eval_batches(), n_eval).ppl
    student, kl_before, kl_after, tokens2 = run_stage2(cfg, teacher, mixers, data, ds_config, info, run_dir,
                                                       eval_batches, n_eval)
    report, hf_dir = None, run_dir / "hf"
    if info.is_main:
        export_hf({k: v.float() for k, v in student.state_dict().items()}, student.cfg, data.tokenizer, hf_dir)
        report = build_report(cfg, teacher, student, ppl_stage1, eval_batches, n_eval, mse_before, mse_after,
                              kl_before, kl_after, tokens1, tokens2)
        write_report(run_dir, report)
        ScalarLog(run_dir / "report", True).add({"report/teacher_ppl": report["teacher"]["ppl"],
                                                 "report/student_ppl_stage1": ppl_stage1,
                                                 "report/student_ppl": report["student"]["ppl"]}, 0)
    barrier()
    return LinearizeRun(report, run_dir, hf_dir)
