"""Linearize a Llama-family HF checkpoint: attention transfer, then distillation (docs/architecture.md §5.10, §7).

    python recipes/linearize.py --teacher DIR --config recipes/configs/linearize_lizard.yaml
    deepspeed --num_gpus 1 recipes/linearize.py --teacher DIR --config recipes/configs/linearize_lizard.yaml

Stage 1 (seqmodels.linearize.transfer): every attention layer gets a student mixer built with
`from_attention` (`student.mixer`: lizard, lolcats, any mixer defining it); only the new
parameters train, on Σ_l MSE(student_l(h_l), attention_l(h_l)). Stage 2
(seqmodels.linearize.distill): the student model trains on KL(teacher ‖ student) (+ ce_weight ·
CE) through LoRA adapters (peft) on the attention projections; LoRA is merged before export.
Both stages run seqmodels.train.trainer (DeepSpeed engine, warmup+cosine, eval, atomic
checkpoints with resume under `<run>/stage{1,2}/checkpoints`, TensorBoard under
`<run>/stage{1,2}`). Data: packed shards of `data.corpus` tokenized with the teacher's tokenizer
(the teacher directory's, or `data.tokenizer`). Outputs under `<output_dir>/<name>/`: hf/ (a
SeqModelsForCausalLM directory), report.json and report.md (perplexities, MQAR, decode-state
bytes, tokens per stage, per-layer transfer MSE, KL, branch ablation).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from seqmodels.linearize import (
    AttentionTransfer,
    Distiller,
    apply_lora,
    assemble_student,
    build_student_mixers,
    check_tokenizer,
    decode_state_bytes,
    freeze_all_but_new,
    layer_mse,
    linear_branch_disabled,
    load_teacher,
    merge_lora,
    mqar_accuracy,
    perplexity,
    teacher_tokenizer_dir,
)
from seqmodels.run_config import format_config, parse_run_args
from seqmodels.train.distributed import all_reduce_mean, barrier, init_distributed
from seqmodels.train.export import engine_state_dict, export_hf
from seqmodels.train.text_data import PackedTextData, TextDataSettings
from seqmodels.train.trainer import NonFiniteLossError, Trainer, TrainSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain import resolve_deepspeed_config  # noqa: E402  (the same DeepSpeed JSON lookup)

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
        "kl_weight": 1.0,
        "ce_weight": 0.0,
        "temperature": 1.0,
    },
    "report": {"eval_batches": 16, "mqar": {"num_kv_pairs": 4, "seq_len": 64, "num_examples": 64},
               "state_contexts": [1024, 8192], "ablation": True},
}


def stage_tokens(settings: TrainSettings, ds_config: dict, world_size: int, seq_len: int) -> int:
    """Tokens one stage consumes: steps × micro-batch × accumulation × ranks × seq_len."""
    micro = int(ds_config["train_micro_batch_size_per_gpu"])
    return settings.steps * micro * int(ds_config.get("gradient_accumulation_steps", 1)) * world_size * seq_len


def gathered_state_dict(engine) -> dict:
    """float32 CPU weights of the engine's module on EVERY rank (ZeRO-3 partitions gathered)."""
    return engine_state_dict(engine, is_main=True)


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


class ScalarLog:
    """Rank-0 TensorBoard writer for the per-stage metrics the trainer does not know about."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir))

    def add(self, scalars: dict, step: int) -> None:
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_stage1(cfg, teacher, data, ds_config, info, run_dir: Path, eval_batches):
    """Stage 1 -> (trained student mixers, per-layer eval MSE before/after, tokens)."""
    settings = TrainSettings.from_dict(cfg["stage1"]["train"])
    torch.manual_seed(settings.seed)
    mixers = build_student_mixers(teacher, cfg["student"]["mixer"], cfg["student"]["options"])
    trainable = freeze_all_but_new(mixers)
    mse_before = layer_mse(teacher, mixers, eval_batches())
    transfer = AttentionTransfer(teacher, mixers)
    log = ScalarLog(run_dir / "stage1", info.is_main)

    def log_layers(trainer, step, _loss):
        means = transfer.pop_train_means()
        if means is not None and step % settings.log_every == 0:
            log.add({f"transfer/mse_layer_{i}": all_reduce_mean(m) for i, m in enumerate(means)}, step)

    micro = int(ds_config["train_micro_batch_size_per_gpu"])
    if info.is_main:
        print(f"[linearize] stage 1: {len(mixers)} x {cfg['student']['mixer']} mixers, {trainable} new parameters "
              f"train; eval MSE per layer {[f'{m:.3g}' for m in mse_before]}", flush=True)
    trainer = Trainer(transfer, ds_config, settings, info, run_dir / "stage1",
                      train_loader=data.train_loader(micro, settings.seed), eval_batches=eval_batches,
                      loss_fn=lambda engine, batch: engine(batch["input_ids"]),
                      client_state={"stage": 1}, callbacks=[log_layers])
    trainer.fit()
    log.close()
    weights = gathered_state_dict(trainer.engine)
    trained = build_student_mixers(teacher, cfg["student"]["mixer"], cfg["student"]["options"])
    trained.load_state_dict({k.removeprefix("mixers."): v for k, v in weights.items()})
    mse_after = layer_mse(teacher, trained, eval_batches())
    return trained, mse_before, mse_after, stage_tokens(settings, ds_config, info.world_size, data.seq_len)


def build_distiller(cfg, teacher, mixers) -> Distiller:
    s2 = cfg["stage2"]
    lora = s2["lora"]
    student = assemble_student(teacher, mixers)
    wrapped = apply_lora(student, lora["rank"], lora["alpha"], lora["dropout"], lora["target_modules"],
                         s2["extra_trainable"])
    return Distiller(wrapped, teacher, s2["kl_weight"], s2["ce_weight"], s2["temperature"])


@torch.no_grad()
def eval_kl(distiller: Distiller, eval_batches, max_batches: int) -> float:
    """Mean KL(teacher ‖ student) over held-out batches (weights as they are)."""
    from seqmodels.linearize import kl_teacher_student

    distiller.eval()
    values = []
    device = distiller.teacher.embed.weight.device
    for i, batch in enumerate(eval_batches()):
        if i >= max_batches:
            break
        ids = batch["input_ids"].to(device)
        values.append(float(kl_teacher_student(distiller.teacher(ids).logits, distiller.student(ids).logits)))
    distiller.train()
    return sum(values) / max(len(values), 1)


def run_stage2(cfg, teacher, mixers, data, ds_config, info, run_dir: Path, eval_batches, n_eval: int):
    """Stage 2 -> (merged student SeqLM, eval KL before/after, tokens)."""
    settings = TrainSettings.from_dict(cfg["stage2"]["train"])
    torch.manual_seed(settings.seed)
    distiller = build_distiller(cfg, teacher, mixers)
    kl_before = eval_kl(distiller, eval_batches, n_eval)
    log = ScalarLog(run_dir / "stage2", info.is_main)

    def log_distill(trainer, step, _loss):
        means = distiller.pop_train_means()
        if means is not None and step % settings.log_every == 0:
            kl, ce = all_reduce_mean(means["kl"]), all_reduce_mean(means["ce"])
            log.add({"distill/kl": kl, "distill/ce": ce, "distill/student_ppl": float(torch.tensor(ce).exp())}, step)

    micro = int(ds_config["train_micro_batch_size_per_gpu"])
    trainable = sum(p.numel() for p in distiller.parameters() if p.requires_grad)
    if info.is_main:
        print(f"[linearize] stage 2: {trainable} parameters train (LoRA {cfg['stage2']['lora']}); "
              f"eval KL {kl_before:.4f}", flush=True)
    trainer = Trainer(distiller, ds_config, settings, info, run_dir / "stage2",
                      train_loader=data.train_loader(micro, settings.seed + 1), eval_batches=eval_batches,
                      loss_fn=lambda engine, batch: engine(batch["input_ids"], batch["labels"]),
                      client_state={"stage": 2}, callbacks=[log_distill])
    trainer.fit()
    log.close()
    weights = gathered_state_dict(trainer.engine)
    fresh = build_distiller(cfg, teacher, mixers)
    fresh.load_state_dict(weights)
    kl_after = eval_kl(fresh, eval_batches, n_eval)
    student = merge_lora(fresh.student)
    return student, kl_before, kl_after, stage_tokens(settings, ds_config, info.world_size, data.seq_len)


def write_report(run_dir: Path, report: dict) -> None:
    """report.json and report.md, each written to a temporary name and renamed."""
    def atomic(path: Path, text: str):
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text(text)
        os.replace(tmp, path)

    atomic(run_dir / "report.json", json.dumps(report, indent=2))
    t, s = report["teacher"], report["student"]
    lines = [f"# Linearization report: {report['name']}", "",
             f"teacher: `{report['teacher_dir']}`; student mixer: `{report['student_mixer']}` "
             f"{report['student_options']}", "",
             "| | teacher | student after stage 1 | student after stage 2 |", "|---|---|---|---|",
             f"| held-out perplexity ({t['eval_tokens']} tokens) | {t['ppl']:.3f} | {s['ppl_stage1']:.3f} | "
             f"{s['ppl']:.3f} |",
             f"| MQAR accuracy | {t['mqar_accuracy']:.3f} | | {s['mqar_accuracy']:.3f} |", "",
             f"student / teacher perplexity: {s['ppl'] / t['ppl']:.3f}", "",
             "| decode state bytes (batch 1) | teacher | student |", "|---|---|---|"]
    for ctx in report["state_bytes"]["teacher"]:
        lines.append(f"| {ctx} tokens | {report['state_bytes']['teacher'][ctx]:,} | "
                     f"{report['state_bytes']['student'][ctx]:,} |")
    st1, st2 = report["stage1"], report["stage2"]
    lines += ["", f"stage 1: {st1['tokens']:,} tokens; eval MSE per layer before "
              f"{[round(m, 6) for m in st1['layer_mse_before']]} after {[round(m, 6) for m in st1['layer_mse_after']]}",
              f"stage 2: {st2['tokens']:,} tokens; eval KL(teacher ‖ student) {st2['kl_before']:.4f} -> "
              f"{st2['kl_after']:.4f}"]
    if report.get("ablation"):
        a = report["ablation"]
        lines += ["", f"branch ablation (linear branch zeroed): student perplexity {a['ppl_without_linear']:.3f} "
                  f"vs {s['ppl']:.3f} -> {'raises perplexity (ok)' if a['raises_ppl'] else 'DOES NOT raise perplexity'}"]
    atomic(run_dir / "report.md", "\n".join(lines) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cfg = parse_run_args(argv, DEFAULTS, open_sections=("student.options", "ds"))
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
    micro = int(ds_config["train_micro_batch_size_per_gpu"])
    eval_batches = data.eval_batches(micro)
    if eval_batches is None:
        raise ValueError("the packed data has no validation split: set data.validation_fraction > 0")
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run_config.yaml").write_text(resolved)
    n_eval = cfg["report"]["eval_batches"]

    mixers, mse_before, mse_after, tokens1 = run_stage1(cfg, teacher, data, ds_config, info, run_dir, eval_batches)
    stage1_student = assemble_student(teacher, mixers)
    ppl_stage1, _ = perplexity(stage1_student, eval_batches(), n_eval)
    del stage1_student
    student, kl_before, kl_after, tokens2 = run_stage2(cfg, teacher, mixers, data, ds_config, info, run_dir,
                                                       eval_batches, n_eval)
    report = None
    if info.is_main:
        hf_dir = export_hf({k: v.float() for k, v in student.state_dict().items()}, student.cfg, data.tokenizer,
                           run_dir / "hf")
        report = build_report(cfg, teacher, student, ppl_stage1, eval_batches, n_eval, mse_before, mse_after,
                              kl_before, kl_after, tokens1, tokens2)
        write_report(run_dir, report)
        ScalarLog(run_dir / "report", True).add({"report/teacher_ppl": report["teacher"]["ppl"],
                                                 "report/student_ppl_stage1": ppl_stage1,
                                                 "report/student_ppl": report["student"]["ppl"]}, 0)
        print((run_dir / "report.md").read_text(), flush=True)
        print(f"[linearize] HF export: {hf_dir}  (python recipes/generate.py --model {hf_dir})", flush=True)
    barrier()
    return report


def build_report(cfg, teacher, student, ppl_stage1, eval_batches, n_eval, mse_before, mse_after, kl_before,
                 kl_after, tokens1, tokens2) -> dict:
    teacher_ppl, tokens = perplexity(teacher, eval_batches(), n_eval)
    student_ppl, _ = perplexity(student, eval_batches(), n_eval)
    mq = cfg["report"]["mqar"]
    report = {
        "name": cfg["name"], "teacher_dir": str(cfg["teacher"]), "student_mixer": cfg["student"]["mixer"],
        "student_options": student.cfg.mixer_options.get(cfg["student"]["mixer"], {}),
        "teacher": {"ppl": teacher_ppl, "eval_tokens": tokens, "mqar_accuracy": mqar_accuracy(teacher, **mq)},
        "student": {"ppl_stage1": ppl_stage1, "ppl": student_ppl, "mqar_accuracy": mqar_accuracy(student, **mq)},
        "state_bytes": {"teacher": {str(c): decode_state_bytes(teacher, c) for c in cfg["report"]["state_contexts"]},
                        "student": {str(c): decode_state_bytes(student, c) for c in cfg["report"]["state_contexts"]}},
        "stage1": {"tokens": tokens1, "layer_mse_before": mse_before, "layer_mse_after": mse_after},
        "stage2": {"tokens": tokens2, "kl_before": kl_before, "kl_after": kl_after},
        "mqar": mq,
        "ablation": None,
    }
    if cfg["report"]["ablation"]:
        with linear_branch_disabled(student):
            ablated, _ = perplexity(student, eval_batches(), n_eval)
        report["ablation"] = {"ppl_without_linear": ablated, "raises_ppl": ablated > student_ppl}
    return report


if __name__ == "__main__":
    try:
        main()
    except (NonFiniteLossError, ValueError) as exc:
        print(f"[linearize] error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
