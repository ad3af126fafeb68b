"""The pretrain recipe in-process (one process, plain python, DeepSpeed ZeRO-0 on gloo): loss goes
down, TensorBoard holds the scalars, checkpoints are committed and pruned, an interrupted run
resumes exactly, the HF export reproduces the training model's logits."""
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

import seqmodels  # noqa: F401  (registers the Auto classes)
from seqmodels.train.checkpoint import committed_tags, read_latest
from seqmodels.train.export import load_for_inference
from seqmodels.train.monitor import read_metrics

STEPS = 8  # the base run of conftest.base_run
SCALARS = ["train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mem_gb",
           "eval/loss", "eval/ppl"]


def step_losses(run_dir) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_loss_decreases_and_every_step_is_logged(base_run):
    run_dir, result, _ = base_run
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.5, losses  # ln(300) = 5.7 at init; templated text is easy
    assert result.step == STEPS and result.last_loss == losses[STEPS]
    assert result.eval_loss is not None and result.eval_loss < losses[1]


def test_tensorboard_event_files_hold_the_scalars(base_run):
    run_dir, _, _ = base_run
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(SCALARS)
    losses = step_losses(run_dir)
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert sorted(logged) == list(range(1, STEPS + 1))
    for step, value in logged.items():  # TensorBoard stores float32
        assert value == pytest.approx(losses[step], rel=1e-6)
    assert [e.step for e in events.Scalars("eval/loss")] == [4, 8]
    ppl = events.Scalars("eval/ppl")[-1].value
    assert ppl == pytest.approx(torch.tensor(events.Scalars("eval/loss")[-1].value).exp().item(), rel=1e-5)


def test_checkpoints_committed_and_pruned(base_run):
    run_dir, result, _ = base_run
    ckpt = run_dir / "checkpoints"
    assert read_latest(ckpt) == f"global_step{STEPS}" and result.checkpoint == ckpt / f"global_step{STEPS}"
    assert committed_tags(ckpt) == ["global_step4", "global_step8"]  # keep_last=2
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".")]


def test_hf_export_gives_the_training_models_logits(base_run):
    run_dir, _, trainer = base_run
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    training_model = trainer.engine.module.eval()
    hf = AutoModelForCausalLM.from_pretrained(str(run_dir / "hf")).eval()
    from_checkpoint, tokenizer = load_for_inference(run_dir / "checkpoints")
    with torch.no_grad():
        expected = training_model(ids).logits
        assert torch.equal(hf(ids).logits, expected)
        assert torch.equal(from_checkpoint(ids).logits, expected)
    assert tokenizer is not None and len(tokenizer) == 300


class Crash(RuntimeError):
    pass


def test_interrupted_run_resumes_exactly(base_run, pretrain, run_args, tmp_path):
    """Crash after step 6 (checkpoint at 4); the resumed run's steps 5-8 are bit-identical (float32, CPU)."""
    base = step_losses(base_run[0])

    def crash(trainer, step, loss):
        if step == 6:
            raise Crash

    args = run_args(tmp_path, name="crash", steps=STEPS)
    with pytest.raises(Crash):
        pretrain(args, callbacks=[crash])
    first = step_losses(tmp_path / "crash")
    assert first == {s: base[s] for s in range(1, 7)}
    result = pretrain(args)
    assert result.resumed_from == "global_step4"
    records = [r for r in read_metrics(tmp_path / "crash") if "loss" in r]
    resumed = {r["step"]: r["loss"] for r in records[6:]}
    assert resumed == {s: base[s] for s in range(5, STEPS + 1)}


def test_resume_modes(base_run, pretrain, run_args, tmp_path):
    out = base_run[0].parent
    with pytest.raises(ValueError, match="already holds checkpoint global_step8 and train.resume is false"):
        pretrain(run_args(out, name="base", steps=STEPS, **{"train.resume": False}))
    with pytest.raises(ValueError, match="train.resume is true but .* holds no checkpoint"):
        pretrain(run_args(tmp_path, name="fresh", steps=STEPS, **{"train.resume": True}))
