"""Shared fixtures for the recipe tests: a small deterministic text corpus and run arguments
for a tiny model, so a training run takes seconds on CPU. The tests call the package functions
the recipes wire (recipes/ is not a package), or run a recipe as a subprocess end to end."""
import random
from pathlib import Path

import pytest

from seqmodels.train import pretrain as pretrain_run

REPO = Path(__file__).resolve().parents[2]


def write_corpus(out: Path, documents: int = 40) -> Path:
    """Text files of templated sentences (seeded): learnable structure, a few hundred KB at most."""
    rng = random.Random(0)
    subjects = ["the cat", "a dog", "my model", "the loss", "our token", "this layer"]
    verbs = ["sees", "eats", "predicts", "decays", "mixes", "remembers"]
    objects = ["the state", "a number", "the gate", "every key", "the value", "one chunk"]
    out.mkdir(parents=True, exist_ok=True)
    for d in range(documents):
        lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.randint(0, 99)}."
                 for _ in range(60)]
        (out / f"doc{d:03d}.txt").write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data-cache")


def tiny_run_args(corpus_dir, data_cache, out_dir, name="run", steps=8, **extra) -> list[str]:
    """Command-line arguments of a tiny pretrain run (0.05M-parameter Transformer, seq_len 32)."""
    args = {
        "name": name, "output_dir": out_dir,
        "model.preset": "transformer-tiny", "model.d_model": 32, "model.n_heads": 2, "model.max_seq_len": 64,
        "data.corpus": corpus_dir, "data.vocab_size": 300, "data.seq_len": 32, "data.validation_fraction": 0.1,
        "data.cache_dir": data_cache,
        "deepspeed_config": "cpu.json", "ds.train_micro_batch_size_per_gpu": 4,
        "train.steps": steps, "train.lr": 0.01, "train.warmup_steps": 2, "train.log_every": 1,
        "train.eval_every": 4, "train.eval_batches": 2, "train.save_every": 4, "train.progress": False,
    }
    args.update(extra)
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def run_pretrain(argv, callbacks=()):
    """What recipes/pretrain.py runs: the TrainResult of the run `argv` describes."""
    return pretrain_run.pretrain(pretrain_run.parse_args(argv), callbacks).train


@pytest.fixture(scope="session")
def pretrain():
    """pretrain(argv, callbacks=()) -> TrainResult (see run_pretrain)."""
    return run_pretrain


@pytest.fixture(scope="session")
def run_args(corpus_dir, data_cache):
    """run_args(out_dir, name=..., steps=..., **overrides) -> argv of a tiny pretrain run."""
    return lambda out_dir, **kwargs: tiny_run_args(corpus_dir, data_cache, out_dir, **kwargs)


@pytest.fixture(scope="session")
def base_run(run_args, tmp_path_factory):
    """One 8-step tiny run (checkpoints at 4 and 8): (run_dir, TrainResult, Trainer)."""
    out = tmp_path_factory.mktemp("runs")
    trainers = []
    result = run_pretrain(run_args(out, name="base", steps=8),
                          callbacks=[lambda trainer, step, loss: trainers.append(trainer)])
    return out / "base", result, trainers[-1]
