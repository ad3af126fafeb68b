"""The two training stages of the linearization pipeline, each run by seqmodels.train.trainer
(DeepSpeed engine, warmup+cosine, eval, atomic checkpoints with resume under
`<run>/stage{1,2}/checkpoints`, TensorBoard under `<run>/stage{1,2}`).

Stage 1 (transfer.py): every attention layer gets a student mixer built with `from_attention`;
only the new parameters train, on Σ_l MSE(student_l(h_l), attention_l(h_l)). Stage 2
(distill.py): the student model trains on `stage2.loss` (kl | ce | kl+ce) through LoRA adapters on
the attention projections; LoRA is merged before the student is returned.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch

from seqmodels.linearize.distill import Distiller, apply_lora, kl_teacher_student, merge_lora
from seqmodels.linearize.student import assemble_student, build_student_mixers, freeze_all_but_new
from seqmodels.linearize.transfer import AttentionTransfer, layer_mse
from seqmodels.train.deepspeed_config import micro_batch_size
from seqmodels.train.distributed import all_reduce_mean
from seqmodels.train.evaluation import TokenWeightedMean, perplexity, scored_tokens
from seqmodels.train.export import engine_state_dict
from seqmodels.train.trainer import Trainer, TrainSettings


def stage_tokens(settings: TrainSettings, ds_config: dict, world_size: int, seq_len: int) -> int:
    """Tokens one stage consumes: steps × micro-batch × accumulation × ranks × seq_len."""
    accumulation = int(ds_config.get("gradient_accumulation_steps", 1))
    return settings.steps * micro_batch_size(ds_config) * accumulation * world_size * seq_len


def gathered_state_dict(engine) -> dict:
    """float32 CPU weights of the engine's module on EVERY rank (ZeRO-3 partitions gathered)."""
    return engine_state_dict(engine, is_main=True)


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
    n_eval = cfg["report"]["eval_batches"]  # held-out batches of the before/after transfer MSE
    mse_before = layer_mse(teacher, mixers, itertools.islice(eval_batches(), n_eval))
    transfer = AttentionTransfer(teacher, mixers)
    log = ScalarLog(run_dir / "stage1", info.is_main)

    def log_layers(trainer, step, _loss):
        means = transfer.pop_train_means()
        if means is not None and step % settings.log_every == 0:
            log.add({f"transfer/mse_layer_{i}": all_reduce_mean(m) for i, m in enumerate(means)}, step)

    if info.is_main:
        print(f"[linearize] stage 1: {len(mixers)} x {cfg['student']['mixer']} mixers, {trainable} new parameters "
              f"train; eval MSE per layer {[f'{m:.3g}' for m in mse_before]}", flush=True)
    trainer = Trainer(transfer, ds_config, settings, info, run_dir / "stage1",
                      train_loader=data.train_loader(micro_batch_size(ds_config), settings.seed),
                      eval_batches=eval_batches, loss_fn=lambda engine, batch: engine(batch["input_ids"]),
                      client_state={"stage": 1}, callbacks=[log_layers])
    trainer.fit()
    log.close()
    weights = gathered_state_dict(trainer.engine)
    trained = build_student_mixers(teacher, cfg["student"]["mixer"], cfg["student"]["options"])
    trained.load_state_dict({k.removeprefix("mixers."): v for k, v in weights.items()})
    mse_after = layer_mse(teacher, trained, itertools.islice(eval_batches(), n_eval))
    return trained, mse_before, mse_after, stage_tokens(settings, ds_config, info.world_size, data.seq_len)


def build_distiller(cfg, teacher, mixers) -> Distiller:
    s2 = cfg["stage2"]
    lora = s2["lora"]
    student = assemble_student(teacher, mixers)
    wrapped = apply_lora(student, lora["rank"], lora["alpha"], lora["dropout"], lora["target_modules"],
                         s2["extra_trainable"])
    return Distiller(wrapped, teacher, s2["loss"], s2["kl_weight"], s2["ce_weight"], s2["temperature"])


@torch.no_grad()
def eval_kl(distiller: Distiller, eval_batches, max_batches: int) -> float:
    """Token-weighted mean KL(teacher ‖ student) over held-out batches (weights as they are)."""
    distiller.eval()
    mean = TokenWeightedMean()
    device = distiller.teacher.embed.weight.device
    for i, batch in enumerate(eval_batches()):
        if i >= max_batches:
            break
        ids = batch["input_ids"].to(device)
        kl = kl_teacher_student(distiller.teacher(ids).logits, distiller.student(ids).logits)
        mean.add(kl, scored_tokens({"input_ids": ids}))
    distiller.train()
    return mean.local() or 0.0


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
            scalars = {f"distill/{name}": all_reduce_mean(value) for name, value in means.items()}
            log.add({**scalars, "distill/student_ppl": perplexity(scalars["distill/ce"])}, step)

    trainable = sum(p.numel() for p in distiller.parameters() if p.requires_grad)
    if info.is_main:
        print(f"[linearize] stage 2: {trainable} parameters train (LoRA {cfg['stage2']['lora']}); "
              f"eval KL {kl_before:.4f}", flush=True)
    trainer = Trainer(distiller, ds_config, settings, info, run_dir / "stage2",
                      train_loader=data.train_loader(micro_batch_size(ds_config), settings.seed + 1),
                      eval_batches=eval_batches,
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
