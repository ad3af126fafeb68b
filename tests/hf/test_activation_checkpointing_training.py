"""train.activation_checkpointing: true in the recipes' TrainSettings reaches SeqLM and trains the same."""
import pytest
import torch

from seqmodels import ModelConfig, SeqLM
from seqmodels.train.distributed import init_distributed
from seqmodels.train.monitor import read_metrics
from seqmodels.train.trainer import Trainer, TrainSettings

DS_CONFIG = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}


class Batches:
    """A fixed list of batches with the loader protocol (state_dict / load_state_dict)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def train(tmp_path, checkpointing: bool):
    torch.manual_seed(0)
    model = SeqLM(ModelConfig.from_preset("gla-tiny", vocab_size=50, n_layers=3))
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
               for ids in (torch.randint(0, 50, (2, 17), generator=gen) for _ in range(3))]
    settings = TrainSettings(steps=3, lr=1e-2, warmup_steps=1, progress=False, activation_checkpointing=checkpointing)
    run_dir = tmp_path / f"checkpointing-{checkpointing}"
    Trainer(model, DS_CONFIG, settings, init_distributed(), run_dir, Batches(batches)).fit()
    return model, [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


def test_activation_checkpointing_setting_trains_the_same(tmp_path):
    plain, plain_losses = train(tmp_path, False)
    recomputed, losses = train(tmp_path, True)
    assert recomputed.activation_checkpointing and not plain.activation_checkpointing
    assert losses == plain_losses and len(losses) == 3
    for (name, a), b in zip(plain.state_dict().items(), recomputed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_activation_checkpointing_setting_is_checked():
    with pytest.raises(ValueError, match="train.activation_checkpointing must be true or false"):
        TrainSettings(activation_checkpointing="yes")
