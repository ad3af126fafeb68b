"""Linearization: turn a softmax-attention LM into a linear-cost one (docs/architecture.md §5.10, §7).

teacher.py (load + checks), student.py (student mixers via `from_attention`, student model),
transfer.py (stage 1: per-layer attention-output MSE), distill.py (stage 2: KL + LoRA),
stages.py (both stages under the trainer), measure.py (MQAR, decode-state bytes, branch
ablation), report.py (report.json / report.md), pipeline.py (run config and the whole run).
The entry point is recipes/linearize.py.
"""
from seqmodels.linearize.distill import Distiller, apply_lora, kl_teacher_student, merge_lora
from seqmodels.linearize.measure import decode_state_bytes, linear_branch_disabled, mqar_accuracy
from seqmodels.linearize.student import (
    assemble_student,
    build_student_mixers,
    freeze_all_but_new,
    new_parameter_names,
    student_config,
    student_mixer_class,
)
from seqmodels.linearize.teacher import check_teacher, check_tokenizer, load_teacher, teacher_tokenizer_dir
from seqmodels.linearize.transfer import AttentionTransfer, layer_mse

__all__ = [
    "AttentionTransfer", "Distiller", "apply_lora", "assemble_student", "build_student_mixers", "check_teacher",
    "check_tokenizer", "decode_state_bytes", "freeze_all_but_new", "kl_teacher_student", "layer_mse",
    "linear_branch_disabled", "load_teacher", "merge_lora", "mqar_accuracy", "new_parameter_names",
    "student_config", "student_mixer_class", "teacher_tokenizer_dir",
]
