"""The one training loop of the recipes: a DeepSpeed engine, warmup + cosine LR, periodic eval,
atomic checkpoints with exact resume, NaN/inf guard, TensorBoard (docs/architecture.md §7).

The loop knows no model family and no data format: it gets an `nn.Module`, a train loader
(an iterable of batch dicts with `state_dict()` / `load_state_dict()`, e.g.
seqmodels.data.loader.PackedLoader), an optional eval-batches factory and a `loss_fn(engine,
batch) -> scalar loss` (default: the LM loss of `model(input_ids, labels=labels)`), so the
pretrain, linearize and probe recipes share it.

Steps are optimizer steps; one step consumes `gradient_accumulation_steps` micro-batches per
rank (the DeepSpeed JSON sets micro-batch size, accumulation and clipping). The logged loss of
a step is the mean over its micro-batches and over ranks.

Host-device synchronisation: a step's losses, non-finite flags and (ZeRO-0) gradient norm stay
on the device and are read once, after the last backward and before the update (StepTally);
metrics.jsonl gets every step from that read. Exceptions: while `train.nan_skip_batches` still
allows a skip, each micro-batch's flag is read before its backward (skipping needs the answer
then); under ZeRO >= 1 DeepSpeed's gradient norm is read after its step; eval, checkpoint and
callback steps read what they need.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from seqmodels.run_config import dataclass_from_section
from seqmodels.train.checkpoint import CheckpointManager, rng_state, set_rng_state
from seqmodels.train.distributed import DistInfo, all_reduce_max, all_reduce_mean, barrier
from seqmodels.train.monitor import Monitor
from seqmodels.train.run_lock import run_lock
from seqmodels.train.schedule import warmup_cosine_scheduler
from seqmodels.train.step_tally import StepReading, StepTally, nonfinite_ranks


@dataclass
class TrainSettings:
    """The `train:` section of a run config."""

    steps: int = 100
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    seed: int = 0
    log_every: int = 10  # TensorBoard scalars every k steps (metrics.jsonl gets every step)
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 8
    save_every: int = 0  # 0 = only at the end
    keep_last: int = 2
    resume: Any = "auto"  # "auto": resume when a checkpoint exists; True: must exist; False: must not
    nan_skip_batches: int = 0  # micro-batches with a non-finite loss that may be skipped before stopping
    activation_checkpointing: bool = False  # recompute each SeqLM block in the backward: less memory, same grads
    progress: bool = True
    trust_checkpoint: bool = False  # resume by unpickling DeepSpeed's files (only for checkpoints you wrote)

    def __post_init__(self) -> None:
        for name in ("steps", "log_every", "eval_batches", "keep_last"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train.{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "nan_skip_batches", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"train.{name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.activation_checkpointing, bool):
            raise ValueError(f"train.activation_checkpointing must be true or false, got {self.activation_checkpointing!r}")
        if self.resume not in ("auto", True, False):
            raise ValueError(f"train.resume must be auto, true or false, got {self.resume!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"train.lr must be > 0, got {self.lr!r}")
        if len(self.betas) != 2:
            raise ValueError(f"train.betas must be two numbers, got {self.betas!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        return dataclass_from_section(cls, values, "train")


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss, gradient norm or tensor."""

    user_error = True  # recipes print the message, not a traceback (run_cli)


@dataclass
class TrainResult:
    step: int
    last_loss: float
    eval_loss: Optional[float]
    checkpoint: Optional[Path]
    resumed_from: Optional[str]
    seconds: float


def lm_loss(engine, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy; batches hold aligned input_ids and labels."""
    return engine(batch["input_ids"], labels=batch["labels"]).loss


def check_deepspeed_config(ds_config: dict) -> dict:
    """The DeepSpeed JSON, checked for blocks the recipe owns (optimizer and LR schedule)."""
    for key in ("optimizer", "scheduler"):
        if key in ds_config:
            raise ValueError(
                f"the DeepSpeed config has an {key!r} block; remove it: the recipe passes a torch AdamW and a "
                "warmup+cosine schedule (train.lr, train.warmup_steps, ...). A DeepSpeed optimizer block would "
                "also JIT-compile a fused CPU Adam (~60 s)"
            )
    if "train_micro_batch_size_per_gpu" not in ds_config:
        raise ValueError("the DeepSpeed config must set train_micro_batch_size_per_gpu")
    return ds_config


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (ndim >= 2), none on gains and biases; empty groups left out (DeepSpeed
    drops them, which would desynchronize the LR scheduler, e.g. when only LoRA matrices train)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_engine(model: nn.Module, ds_config: dict, settings: TrainSettings):
    """deepspeed.initialize with a torch AdamW client optimizer and the warmup+cosine scheduler."""
    import deepspeed

    check_deepspeed_config(ds_config)
    optimizer = torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=settings.lr,
                                  betas=tuple(settings.betas), eps=settings.eps)
    scheduler = warmup_cosine_scheduler(optimizer, min(settings.warmup_steps, settings.steps), settings.steps,
                                          settings.min_lr_ratio)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=dict(ds_config))
    return engine


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_tokens(batch: dict) -> int:
    ids = batch.get("input_ids")
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0


def params_finite(engine) -> bool:
    """All parameters finite on every rank (ZeRO-3 checks each rank's own partition); one read."""
    local = [getattr(param, "ds_tensor", param) for param in engine.module.parameters()]
    finite = [torch.isfinite(tensor).all() for tensor in local if tensor.numel()]
    bad = 0.0 if not finite or bool(torch.stack(finite).all()) else 1.0
    return all_reduce_max(bad) == 0.0


def _ranks_text(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _memory_gb() -> float:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().max_memory_allocated() / 2**30


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        ds_config: dict,
        settings: TrainSettings,
        dist_info: DistInfo,
        run_dir: str | os.PathLike,
        train_loader,
        eval_batches: Optional[Callable[[], Iterable[dict]]] = None,
        loss_fn: Callable[[Any, dict], torch.Tensor] = lm_loss,
        write_extras: Optional[Callable[[Path], None]] = None,
        client_state: Optional[dict] = None,
        callbacks: Iterable[Callable[["Trainer", int, float], None]] = (),  # after each step; may set stop_requested
    ):
        self.settings = settings
        self.dist = dist_info
        self.run_dir = Path(run_dir)
        self.train_loader = train_loader
        self.eval_batches = eval_batches
        self.loss_fn = loss_fn
        self.write_extras = write_extras
        self.client_state = dict(client_state or {})
        self.callbacks = list(callbacks)
        if settings.activation_checkpointing:
            from seqmodels.model import enable_activation_checkpointing

            enable_activation_checkpointing(model)
        self.engine = build_engine(model, ds_config, settings)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", dist_info.rank, settings.keep_last,
                                      dist_info.world_size, settings.trust_checkpoint)
        self.skipped_batches = 0
        self.step_lr = settings.lr  # the lr of the last completed step (named when its update diverged)
        self.last_good_checkpoint: Optional[Path] = None
        self.stop_requested = False  # a callback sets it (early stop): fit ends after the current step
        self.monitor: Optional[Monitor] = None  # the running fit's monitor (callbacks log extra scalars)

    # ----------------------------------------------------------- checkpoints
    @property
    def step(self) -> int:
        return int(self.engine.global_steps)

    def save(self) -> Path:
        if not params_finite(self.engine):
            raise NonFiniteLossError(
                f"refusing to save a checkpoint at step {self.step}: the weights hold NaN/inf; "
                f"last good checkpoint: {self.last_good_checkpoint or 'none'}"
            )
        rank_state = {"loader": self.train_loader.state_dict(), "rng": rng_state(), "step": self.step,
                      "skipped_batches": self.skipped_batches}
        client = {**self.client_state, "step": self.step, "settings": asdict(self.settings)}
        path = self.ckpt.save(self.engine, self.step, client, rank_state, self.write_extras)
        self.last_good_checkpoint = path
        return path

    def maybe_resume(self) -> Optional[str]:
        self.ckpt.clean_incomplete()
        tag = self.ckpt.resume_tag()
        mode = self.settings.resume
        if tag is None:
            if mode is True:
                raise ValueError(f"train.resume is true but {self.ckpt.dir} holds no checkpoint")
            return None
        if mode is False:
            raise ValueError(
                f"{self.ckpt.dir} already holds checkpoint {tag} and train.resume is false; "
                "use another run name/output_dir, delete it, or resume (train.resume: auto)"
            )
        tag, _, rank_state = self.ckpt.load(self.engine, tag)
        self.train_loader.load_state_dict(rank_state["loader"])
        set_rng_state(rank_state["rng"])
        self.skipped_batches = int(rank_state.get("skipped_batches", 0))
        if rank_state["step"] != self.step:
            raise ValueError(f"checkpoint {tag}: train state is at step {rank_state['step']}, engine at {self.step}")
        self.last_good_checkpoint = self.ckpt.dir / tag
        return tag

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self) -> Optional[float]:
        """Token-weighted mean of loss_fn over the first train.eval_batches held-out batches of every
        rank (seqmodels.train.evaluation); None without eval batches."""
        from seqmodels.train.evaluation import TokenWeightedMean, scored_tokens

        if self.eval_batches is None:
            return None
        self.engine.eval()
        mean = TokenWeightedMean()
        for i, batch in enumerate(self.eval_batches()):
            if i >= self.settings.eval_batches:
                break
            mean.add(self.loss_fn(self.engine, _to_device(batch, self.engine.device)), scored_tokens(batch))
        self.engine.train()
        return mean.all_ranks()

    # ------------------------------------------------------------------ loop
    def _batches(self) -> Iterator[dict]:
        while True:
            produced = False
            for batch in self.train_loader:
                produced = True
                yield batch
            if not produced:
                raise ValueError("the train loader produced no batch in a whole epoch")

    def _nonfinite(self, what: str, step: int, micro: int, lr: float, skippable: bool = True) -> NonFiniteLossError:
        """The one-line stop message: what went non-finite, the step and micro-batch, the lr and the
        checkpoint to resume from."""
        where = self.last_good_checkpoint or "none (no checkpoint saved yet)"
        advice = (f"or set train.nan_skip_batches: k to skip up to k batches with a non-finite loss "
                  f"({self.skipped_batches} skipped so far)") if skippable else \
            "(skipping batches cannot help once the weights are non-finite)"
        return NonFiniteLossError(
            f"{what} at step {step} (micro-batch {micro + 1} of {self.engine.gradient_accumulation_steps()}) "
            f"with lr {lr:.3g}; stopped. Last good checkpoint: {where}. Resume from it with a lower train.lr, {advice}"
        )

    def _nonfinite_weights(self) -> Optional[str]:
        """None when every weight is finite on every rank, else the first non-finite parameter's name
        (for the stop message; read only after something went non-finite)."""
        if params_finite(self.engine):
            return None
        for name, param in self.engine.module.named_parameters():
            local = getattr(param, "ds_tensor", param)
            if local.numel() and not bool(torch.isfinite(local).all()):
                return name
        return "a parameter on another rank"

    def _diverged(self, name: str, detail: str) -> NonFiniteLossError:
        """The update of the last completed step made weight `name` non-finite."""
        return self._nonfinite(f"non-finite weights after the update of step {self.step} ({name}; {detail})",
                               self.step, self.engine.gradient_accumulation_steps() - 1, self.step_lr, skippable=False)

    def fit(self) -> TrainResult:
        """Train to train.steps (resuming when allowed), holding the run directory's lock."""
        with run_lock(self.run_dir, self.dist.is_main):
            return self._fit()

    def _fit(self) -> TrainResult:
        start_time = time.time()
        s = self.settings
        resumed = self.maybe_resume()
        monitor = Monitor(self.run_dir, self.dist.is_main, s.steps, self.step, progress=s.progress)
        self.monitor = monitor
        if resumed:
            monitor.message(f"resumed from {self.ckpt.dir / resumed} at step {self.step}")
        engine = self.engine
        engine.train()
        accum = engine.gradient_accumulation_steps()
        batches = self._batches()
        last_loss, eval_loss, saved_at = float("nan"), None, None
        try:
            while self.step < s.steps and not self.stop_requested:
                step_start, lr = time.time(), float(engine.get_lr()[0])  # the lr this step uses
                reading = self._accumulate(batches, accum, monitor, lr)
                self.step_lr = lr
                grad_norm = reading.grad_norm
                ds_norm = engine.get_global_grad_norm()
                if ds_norm is not None:  # DeepSpeed's own norm (ZeRO >= 1, bf16), known after its step
                    grad_norm = float(ds_norm)
                    if not math.isfinite(grad_norm):
                        raise self._nonfinite(f"non-finite gradient norm ({grad_norm})", self.step, accum - 1, lr)
                step = self.step
                last_loss = reading.loss
                elapsed = max(time.time() - step_start, 1e-9)
                tokens_per_s = reading.tokens / elapsed
                monitor.train_step(step, last_loss, lr, grad_norm, tokens_per_s, _memory_gb(),
                                   write_scalars=step % s.log_every == 0 or step == s.steps)
                if s.eval_every and step % s.eval_every == 0 and step < s.steps:
                    eval_loss = self.evaluate()
                    if eval_loss is not None:
                        monitor.eval(step, eval_loss)
                if s.save_every and step % s.save_every == 0 and step < s.steps:
                    saved_at = self.save()
                for callback in self.callbacks:
                    callback(self, step, last_loss)
            if self.step == s.steps or self.stop_requested:
                if self.stop_requested:
                    monitor.message(f"step {self.step}: stop requested by a callback (early stop)")
                eval_loss = self.evaluate()
                if eval_loss is not None:
                    monitor.eval(self.step, eval_loss)
                if self.last_good_checkpoint is None or self.last_good_checkpoint.name != f"global_step{self.step}":
                    saved_at = self.save()
                else:
                    saved_at = self.last_good_checkpoint
        finally:
            monitor.close()
        barrier()
        return TrainResult(self.step, last_loss, eval_loss, saved_at, resumed, time.time() - start_time)

    def _accumulate(self, batches: Iterator[dict], accum: int, monitor: Monitor, lr: float) -> StepReading:
        """Forward and backward over the step's micro-batches, then the step's one read (before the
        update, so a NaN/inf stops training with the weights untouched), then the update.

        Non-finite values: a non-finite loss is skipped while train.nan_skip_batches allows (checked
        before its backward); past that, training stops. Stopping checks the weights (one extra read,
        on that path only): non-finite weights (the previous update diverged, seen as a non-finite
        loss or as a model's own input check failing in the forward) are reported as such, naming
        the step whose update caused them; skipping cannot help there."""
        s, engine = self.settings, self.engine
        tally = StepTally(engine.device, self.dist)
        while True:
            batch = _to_device(next(batches), engine.device)
            try:
                loss = self.loss_fn(engine, batch)
            except ValueError as exc:  # e.g. a kernel refusing NaN gates: a diverged model, or a real bug
                bad = self._nonfinite_weights()
                if bad is None:
                    raise
                raise self._diverged(bad, f"the forward of step {self.step + 1} failed: {exc}") from exc
            if self.skipped_batches < s.nan_skip_batches and nonfinite_ranks(loss, self.dist):
                self.skipped_batches += 1
                monitor.message(f"step {self.step + 1}: skipped a batch with a non-finite loss "
                                f"({self.skipped_batches}/{s.nan_skip_batches})")
                continue
            tally.add(loss, _batch_tokens(batch))
            engine.backward(loss)
            if engine.is_gradient_accumulation_boundary():
                reading = tally.read(self._local_grad_norm())
                if reading.nonfinite:
                    bad = self._nonfinite_weights()
                    if bad is not None:
                        raise self._diverged(bad, f"the loss of step {self.step + 1} is non-finite")
                    micro, ranks = reading.nonfinite[0]
                    raise self._nonfinite(f"non-finite loss on {_ranks_text(ranks)}", self.step + 1, micro, lr)
                norm = reading.grad_norm
                if norm is not None and not math.isfinite(norm):
                    raise self._nonfinite(f"non-finite gradient norm ({norm})", self.step + 1, accum - 1, lr)
                engine.step()
                return reading
            engine.step()

    def _local_grad_norm(self) -> Optional[torch.Tensor]:
        """2-norm of the accumulated gradients before the update (ZeRO-0, where DeepSpeed keeps none):
        one fused reduction on the device."""
        if self.engine.zero_optimization_stage() > 0:
            return None
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        if not grads:
            return None
        return torch.nn.utils.get_total_norm(grads)
