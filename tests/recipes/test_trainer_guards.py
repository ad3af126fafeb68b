"""The trainer's guards, in-process with a tiny model and an in-memory loader: a NaN loss stops
training naming the step and the last good checkpoint (or is skipped when allowed), NaN weights
are never saved, and an interrupted checkpoint write leaves the previous checkpoint loadable."""
import math

import pytest
import torch

from seqmodels import ModelConfig, SeqLM
from seqmodels.train.checkpoint import CheckpointManager, committed_tags, read_latest
from seqmodels.train.distributed import init_distributed
from seqmodels.train.monitor import read_metrics
from seqmodels.train.trainer import NonFiniteLossError, Trainer, TrainSettings, lm_loss

DS_CONFIG = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
             "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}


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


def make_trainer(tmp_path, poison=(), **settings):
    info = init_distributed()
    torch.manual_seed(0)
    model = SeqLM(ModelConfig.from_preset("transformer-tiny", vocab_size=50, d_model=32, n_heads=2))
    gen = torch.Generator().manual_seed(0)
    batches = []
    for i in range(12):
        ids = torch.randint(0, 50, (2, 9), generator=gen)
        batches.append({"input_ids": ids[:, :-1], "labels": ids[:, 1:], "poison": torch.tensor(i in poison)})

    def loss_fn(engine, batch):
        loss = lm_loss(engine, batch)
        return loss * float("nan") if bool(batch["poison"]) else loss

    settings = TrainSettings(**{"steps": 8, "lr": 1e-3, "warmup_steps": 1, "save_every": 3, "progress": False,
                                **settings})
    return Trainer(model, DS_CONFIG, settings, info, tmp_path, ListLoader(batches), loss_fn=loss_fn)


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
