"""The trainer's guards, in-process with a tiny model and an in-memory loader: a NaN loss stops
training naming the step and the last good checkpoint (or is skipped when allowed), NaN weights
are never saved, and an interrupted checkpoint write leaves the previous checkpoint loadable.

Host-device synchronisation, counted: on CUDA every Python-level read of a tensor's value
(`item`, `tolist`, `bool`, `float`, `int`, ...) waits for the device. Each one is counted while
the Trainer runs with gradient accumulation 2: at most one read per optimizer step (the step's
loss, finiteness flags and gradient norm travel together), the logged loss bit for bit what
per-micro-batch reads gave, and while a NaN skip is still allowed each micro-batch is checked
before its backward."""
import math
import sys
from contextlib import contextmanager

import pytest
import torch

from seqmodels import ModelConfig, SeqLM
from seqmodels.train.checkpoint import CheckpointManager, committed_tags, read_latest
from seqmodels.train.distributed import init_distributed
from seqmodels.train.monitor import read_metrics
from seqmodels.train.trainer import NonFiniteLossError, Trainer, TrainSettings, lm_loss

DS_CONFIG = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
             "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}
ACCUM = 2  # the read-counting tests
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


def make_trainer(tmp_path, poison=(), accum=1, micro_losses=None, **settings):
    """A tiny Transformer LM on 12 random batches (cycled); batches whose index is in `poison` get a
    NaN loss; `micro_losses` (a list) receives each micro-batch's loss when given."""
    info = init_distributed()
    torch.manual_seed(0)
    model = SeqLM(ModelConfig.from_preset("transformer-tiny", vocab_size=50, d_model=32, n_heads=2))
    gen = torch.Generator().manual_seed(0)
    batches = []
    for i in range(12):
        ids = torch.randint(0, 50, (2, 9), generator=gen)
        batches.append({"input_ids": ids[:, :-1], "labels": ids[:, 1:], "poison": i in poison})

    def loss_fn(engine, batch):
        loss = lm_loss(engine, batch)
        if micro_losses is not None:
            micro_losses.append(loss.detach().clone())
        return loss * float("nan") if batch["poison"] else loss

    settings = TrainSettings(**{"steps": 8, "lr": 1e-3, "warmup_steps": 1, "save_every": 3, "progress": False,
                                **settings})
    ds_config = {**DS_CONFIG, "gradient_accumulation_steps": accum}
    return Trainer(model, ds_config, settings, info, tmp_path, ListLoader(batches), loss_fn=loss_fn)


def test_nan_loss_stops_naming_step_and_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, poison={5})  # the 6th batch feeds step 6
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    assert "non-finite loss on rank 0 at step 6 (micro-batch 1 of 1)" in message
    assert f"Last good checkpoint: {tmp_path / 'checkpoints' / 'global_step3'}" in message
    assert "train.nan_skip_batches" in message
    assert read_latest(tmp_path / "checkpoints") == "global_step3"
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]


def test_nan_batches_skipped_when_allowed(tmp_path):
    trainer = make_trainer(tmp_path, poison={5}, nan_skip_batches=1)
    result = trainer.fit()
    assert result.step == 8 and trainer.skipped_batches == 1
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)


def test_nan_weights_are_never_saved(tmp_path):
    trainer = make_trainer(tmp_path, steps=2, save_every=0)
    trainer.fit()
    assert committed_tags(tmp_path / "checkpoints") == ["global_step2"]
    with torch.no_grad():
        next(trainer.engine.module.parameters())[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="refusing to save a checkpoint at step 2: the weights hold NaN"):
        trainer.save()
    assert committed_tags(tmp_path / "checkpoints") == ["global_step2"]


@pytest.mark.parametrize("where", ["inside DeepSpeed's save", "before the rename"])
def test_interrupted_checkpoint_write_keeps_previous_loadable(tmp_path, monkeypatch, where):
    """An exception stands in for a kill here (the SIGKILL version is a slow test)."""
    trainer = make_trainer(tmp_path, steps=3, save_every=0)
    trainer.fit()
    ckpt = tmp_path / "checkpoints"
    saved = {k: v.clone() for k, v in trainer.engine.module.state_dict().items()}
    trainer.engine.global_steps = 4  # pretend one more step ran, then die while saving it
    if where == "before the rename":
        monkeypatch.setattr(CheckpointManager, "_commit", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    else:
        original = torch.save
        calls = []

        def dying_save(obj, f, *args, **kwargs):
            calls.append(f)
            if len(calls) == 1:
                with open(f, "wb") as handle:
                    handle.write(b"half a file")
                raise KeyboardInterrupt
            return original(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    monkeypatch.undo()
    assert (ckpt / ".tmp-global_step4").is_dir() and read_latest(ckpt) == "global_step3"
    fresh = make_trainer(tmp_path, steps=3, save_every=0)
    with torch.no_grad():
        for p in fresh.engine.module.parameters():
            p.zero_()
    assert fresh.maybe_resume() == "global_step3" and fresh.step == 3
    assert not (ckpt / ".tmp-global_step4").exists()  # cleaned at start
    for name, value in fresh.engine.module.state_dict().items():
        assert torch.equal(value, saved[name]), name


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


COUNTED = {"steps": 4, "log_every": 3, "save_every": 0}  # no eval, no checkpoint before the end


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
    trainer = make_trainer(tmp_path, accum=ACCUM, **COUNTED)
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
    trainer = make_trainer(tmp_path, accum=ACCUM, micro_losses=micro_losses, **COUNTED)
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
    """nan_skip_batches 1: a bad micro-batch must be known before its backward, so each micro-batch's
    flag is read (plus the step's read) until the skip is spent: step 1 reads 2 + 1, step 2 reads
    batch 2's flag (skipped) + 1; from step 3 on, one read per step again."""
    trainer = make_trainer(tmp_path, poison={2}, accum=ACCUM, nan_skip_batches=1, **COUNTED)
    per_step = reads_per_step(trainer, monkeypatch)
    assert trainer.skipped_batches == 1
    assert [len(calls) for calls in per_step[:2]] == [ACCUM + 1, 2]
    assert all(len(calls) <= 1 for calls in per_step[2:]), per_step[2:]
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path) if "loss" in r)


def test_nan_found_by_the_steps_read_names_its_micro_batch(tmp_path):
    """With accumulation the flags are read once per step, before the update: the error still names
    the step and micro-batch of the bad loss, and the weights stay those of the last step."""
    trainer = make_trainer(tmp_path, poison={5}, accum=ACCUM, **COUNTED)  # batch 6 = micro-batch 2 of step 3
    before = {}
    trainer.callbacks.append(lambda trainer, step, loss: before.update(
        {name: p.detach().clone() for name, p in trainer.engine.module.named_parameters()}))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss on rank 0 at step 3 \(micro-batch 2 of 2\)"):
        trainer.fit()
    assert trainer.step == 2 and [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    for name, p in trainer.engine.module.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
