"""Host-device synchronisation of the training loop, counted in a CPU run.

Every Python-level read of a tensor's value (`item`, `tolist`, `bool`, `float`, `int`, ...)
waits for the device on CUDA; here each one is counted while the real Trainer runs a tiny
SeqLM with gradient accumulation 2. The loop must read at most once per optimizer step (the
step's loss, finiteness flags and gradient norm travel together), the logged numbers must be
the ones the per-micro-batch reads gave (the loss bit for bit), and while a NaN skip is still
allowed each micro-batch is checked before its backward."""
import math
import sys
from contextlib import contextmanager

import pytest
import torch

from seqmodels import ModelConfig, SeqLM
from seqmodels.train.distributed import init_distributed
from seqmodels.train.monitor import read_metrics
from seqmodels.train.trainer import Trainer, TrainSettings, lm_loss

ACCUM = 2
DS_CONFIG = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": ACCUM, "gradient_clipping": 1.0,
             "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}
READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__complex__")
READ_FUNCTIONS = ("equal", "allclose", "is_nonzero")  # torch functions that return a Python value


class ListLoader:
    """Batches from a list, cycling; position in state_dict (the PackedLoader protocol)."""

    def __init__(self, batches):
        self.batches, self.position = batches, 0

    def __iter__(self):
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def _host_only(frame) -> bool:
    """torch.optim keeps AdamW's step counters as CPU tensors (capturable=False) and reads them with
    `_get_value`: a host read on every device, so not a synchronisation."""
    code = frame.f_code
    return code.co_name == "_get_value" and code.co_filename.replace("\\", "/").endswith("torch/optim/optimizer.py")


@contextmanager
def counted_reads(monkeypatch):
    """Patches the tensor-to-Python reads; yields the list of (read, file:line) calls made inside."""
    calls = []

    def counting(name, original):
        def read(*args, **kwargs):
            caller = sys._getframe(1)
            if not _host_only(caller):
                calls.append((name, f"{caller.f_code.co_filename}:{caller.f_lineno}"))
            return original(*args, **kwargs)
        return read

    with monkeypatch.context() as patch:
        for name in READS:
            patch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        for name in READ_FUNCTIONS:
            patch.setattr(torch, name, counting(f"torch.{name}", getattr(torch, name)))
        yield calls


def make_trainer(tmp_path, poison=(), micro_losses=None, **settings):
    """A tiny Transformer LM on 24 random batches; batches whose index is in `poison` get a NaN
    loss; `micro_losses` (a list) receives each micro-batch's loss when given."""
    info = init_distributed()
    torch.manual_seed(0)
    model = SeqLM(ModelConfig.from_preset("transformer-tiny", vocab_size=50, d_model=32, n_heads=2))
    gen = torch.Generator().manual_seed(0)
    batches = []
    for i in range(24):
        ids = torch.randint(0, 50, (2, 9), generator=gen)
        batches.append({"input_ids": ids[:, :-1], "labels": ids[:, 1:], "poison": i in poison})

    def loss_fn(engine, batch):
        loss = lm_loss(engine, batch)
        if micro_losses is not None:
            micro_losses.append(loss.detach().clone())
        return loss * float("nan") if batch["poison"] else loss

    settings = TrainSettings(**{"steps": 4, "lr": 1e-3, "warmup_steps": 1, "log_every": 3, "eval_every": 0,
                                "save_every": 0, "progress": False, **settings})
    return Trainer(model, DS_CONFIG, settings, info, tmp_path, ListLoader(batches), loss_fn=loss_fn)


def reads_per_step(trainer, monkeypatch):
    """Runs fit; the reads made during each optimizer step (from the end of the previous one)."""
    per_step, seen = [], [0]

    def after_step(trainer, step, loss):
        per_step.append(calls[seen[0]:])
        seen[0] = len(calls)

    trainer.callbacks.append(after_step)
    with counted_reads(monkeypatch) as calls:
        trainer.fit()
    return per_step


def test_one_read_per_optimizer_step(tmp_path, monkeypatch):
    """log_every 3: steps 1, 2 and 4 write no TensorBoard scalars, step 3 does; metrics.jsonl gets
    every step from the same read."""
    trainer = make_trainer(tmp_path)
    per_step = reads_per_step(trainer, monkeypatch)
    assert len(per_step) == 4
    for step, calls in enumerate(per_step, 1):
        assert len(calls) <= 1, f"step {step} read the device {len(calls)} times: {calls}"
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3, 4]


def test_logged_loss_and_grad_norm_match_per_micro_batch_reads(tmp_path):
    """The logged loss is the float64 mean of the micro-batch losses, summed in order (as a
    Python sum of their floats); the gradient norm is the 2-norm of all gradients before the
    clipped update, against a float64 reference."""
    micro_losses, reference_norms = [], []
    trainer = make_trainer(tmp_path, micro_losses=micro_losses)
    engine = trainer.engine
    step = engine.step

    def step_recording_norm(*args, **kwargs):
        if engine.is_gradient_accumulation_boundary():
            grads = [p.grad.double() for p in engine.module.parameters() if p.grad is not None]
            reference_norms.append(math.sqrt(sum(float((g * g).sum()) for g in grads)))
        return step(*args, **kwargs)

    engine.step = step_recording_norm
    trainer.fit()
    records = [r for r in read_metrics(tmp_path) if "loss" in r]
    values = [float(loss) for loss in micro_losses]
    assert [r["loss"] for r in records] == [sum(values[i:i + ACCUM]) / ACCUM for i in range(0, 4 * ACCUM, ACCUM)]
    assert [r["grad_norm"] for r in records] == pytest.approx(reference_norms, rel=1e-6)


def test_micro_batches_checked_one_by_one_while_a_skip_is_allowed(tmp_path, monkeypatch):
    """nan_skip_batches 1: a bad micro-batch must be known before its backward, so steps read each
    micro-batch's flag plus the step's read until the skip is spent (batch 2, first of step 2); after
    step 3 on, one read per step again."""
    trainer = make_trainer(tmp_path, poison={2}, nan_skip_batches=1)
    per_step = reads_per_step(trainer, monkeypatch)
    assert trainer.skipped_batches == 1
    assert [len(calls) for calls in per_step[:2]] == [ACCUM + 1, 2]
    assert all(len(calls) <= 1 for calls in per_step[2:]), per_step[2:]
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path) if "loss" in r)
