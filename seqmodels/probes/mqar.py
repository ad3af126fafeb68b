"""MQAR sweep (Zoology, Arora et al. 2023, arXiv 2312.04927 §3-4; docs/architecture.md §5.6, §7): a grid of
mixers (or hybrid layer patterns) x d_model x (seq_len, num_kv_pairs) x lr (mqar_grid), each run a
2-layer model without MLP trained by seqmodels.train.trainer with early stop at the target
accuracy; the best lr per cell goes into results.csv / results.md / results.png under the run
directory (mqar_results).

Accuracy = fraction of answer positions (labels != -100) whose argmax prediction is exactly the
value token, over the whole test set (Zoology's "valid/accuracy").

Resume: every (cell, lr) run writes `runs/<name>/cells/<run>/result.json` atomically when it
finishes; a rerun skips those (an interrupted run resumes from its checkpoint if one was saved,
else restarts), then rewrites the outputs from all result files of the grid.

Several ranks: each free rank claims the next unclaimed run (seqmodels.train.work_queue) and
trains it alone, as a world-size-1 DeepSpeed engine. Why not all ranks data-parallel on every
run: MQAR models are tiny (2 layers, d_model <= 512), so a data-parallel step is dominated by the
all-reduce and N ranks would still walk the grid one run at a time; independent runs scale
linearly and each run's numbers do not depend on the rank count.
"""
from __future__ import annotations

import gc
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from seqmodels.config import ModelConfig
from seqmodels.data.mqar import mqar
from seqmodels.data.tensors import TensorLoader, eval_batches
from seqmodels.model import SeqLM
from seqmodels.probes.mqar_grid import build_grid
from seqmodels.probes.mqar_results import cell_key, read_result, write_outputs, write_result
from seqmodels.run_config import format_config, parse_run_args, write_run_config
from seqmodels.train.deepspeed_config import micro_batch_size
from seqmodels.train.evaluation import evaluate_accuracy
from seqmodels.train.trainer import NonFiniteLossError, Trainer, TrainSettings
from seqmodels.probes.sweep import start_sweep
from seqmodels.train.work_queue import claimed_items, wait_for_ranks

DEFAULTS = {
    "name": "mqar",
    "output_dir": "runs",
    "grid": {
        "mixers": ["attention"],
        "d_models": [64, 128, 256],
        "tasks": [[64, 4], [128, 8], [256, 16]],  # [seq_len, num_kv_pairs]
        "lrs": [1e-3],
    },
    "model": {"n_layers": 2, "mlp": "none", "n_heads": 1},  # any ModelConfig field; vocab/max_seq_len set per cell
    "data": {"vocab_size": 8192, "train_examples": 100000, "test_examples": 3000, "power_a": 0.01,
             "random_non_queries": True, "seed": 0},
    "early_stop": {"accuracy": 0.99, "eval_every": 100},  # eval_every: steps between test-accuracy checks
    "skip_solved_lrs": False,  # true: once one lr of a cell reaches early_stop.accuracy, its other lrs are not run
    "keep_checkpoints": False,  # false: a finished run's checkpoints are deleted (result.json stays)
    "torch_threads": None,  # torch.set_num_threads (1 is fastest on a loaded CPU)
    "deepspeed_config": "cpu.json",
    "ds": {},
    "dist_backend": None,
    "train": {**asdict(TrainSettings()), "steps": 2000, "lr": 1e-3, "warmup_steps": 50, "weight_decay": 0.1,
              "log_every": 50, "progress": False},
    "eval_batch_size": 256,
}


def parse_args(argv: Optional[Sequence[str]] = None) -> dict:
    """The sweep config: DEFAULTS <- --config YAML files <- --section.key value flags."""
    return parse_run_args(argv, DEFAULTS, open_sections=("model", "ds"))


class TaskData:
    """The train/test MQAR sets of each (seq_len, num_kv_pairs), generated on first use and kept."""

    def __init__(self, data_cfg: dict):
        self.cfg = data_cfg
        self.sets = {}

    def get(self, seq_len: int, pairs: int) -> tuple[dict, dict]:
        if (seq_len, pairs) not in self.sets:
            c = self.cfg
            common = dict(power_a=c["power_a"], random_non_queries=c["random_non_queries"])
            x, y = mqar(c["vocab_size"], seq_len, pairs, c["train_examples"], seed=c["seed"], **common)
            tx, ty = mqar(c["vocab_size"], seq_len, pairs, c["test_examples"], seed=c["seed"] + 1_000_003, **common)
            self.sets[seq_len, pairs] = {"input_ids": x, "labels": y}, {"input_ids": tx, "labels": ty}
        return self.sets[seq_len, pairs]


def train_run(run: dict, cfg: dict, data: TaskData, info, ds_config: dict, run_dir: Path) -> dict:
    """Train one (cell, lr) run to early stop or train.steps; its result record."""
    start = time.time()
    train, test = data.get(run["seq_len"], run["num_kv_pairs"])
    settings = TrainSettings.from_dict({**cfg["train"], "lr": run["lr"]})
    torch.manual_seed(settings.seed)
    model_cfg = ModelConfig.from_dict(run["model"])
    model = SeqLM(model_cfg)
    parameters = model.num_parameters()
    micro = micro_batch_size(ds_config)
    target, every = float(cfg["early_stop"]["accuracy"]), int(cfg["early_stop"]["eval_every"])
    seen = {"best": float("nan")}

    def early_stop(trainer, step, loss):
        if step % every and step < settings.steps:
            return
        accuracy = evaluate_accuracy(trainer.engine.module, test, cfg["eval_batch_size"], trainer.engine.device)
        seen["best"] = accuracy if math.isnan(seen["best"]) else max(seen["best"], accuracy)
        trainer.monitor.scalars(step, "eval", {"accuracy": accuracy})
        trainer.monitor.message(f"step {step}: test accuracy {accuracy:.4f}")
        if accuracy >= target:
            trainer.stop_requested = True

    trainer = Trainer(model, ds_config, settings, info, run_dir,
                      train_loader=TensorLoader(train, micro, seed=settings.seed),
                      eval_batches=eval_batches(test, micro), callbacks=[early_stop],
                      client_state={"model_config": model_cfg.to_dict()})
    diverged = False
    try:
        result = trainer.fit()
        steps = result.step
        accuracy = evaluate_accuracy(trainer.engine.module, test, cfg["eval_batch_size"], trainer.engine.device)
    except NonFiniteLossError as exc:  # a too-high lr: recorded (accuracy 0), the sweep goes on
        print(f"[mqar] {run['id']}: diverged: {exc}", flush=True)
        diverged, steps, accuracy = True, trainer.step, 0.0
    trainer.monitor = None
    del trainer, model
    gc.collect()
    best = accuracy if math.isnan(seen["best"]) else max(seen["best"], accuracy)
    return {**{k: run[k] for k in ("mixer", "seq_len", "num_kv_pairs", "d_model", "lr")},
            "accuracy": accuracy, "best_seen_accuracy": best, "steps": steps,
            "early_stopped": not diverged and steps < settings.steps, "diverged": diverged,
            "seconds": round(time.time() - start, 2), "parameters": parameters, "model": run["model"]}


def _solved_sibling(run: dict, runs: list[dict], cells_dir: Path, target: float) -> bool:
    for other in runs:
        if other is run or cell_key(other) != cell_key(run):
            continue
        done = read_result(cells_dir / other["id"])
        if done is not None and done["accuracy"] >= target:
            return True
    return False


@dataclass
class SweepResult:
    rows: list[dict]  # the finished runs' results (rank 0; [] on the other ranks)
    runs: list[dict]  # every run of the grid
    out_dir: Path
    is_main: bool  # rank 0, which wrote the outputs


def run_sweep(cfg: dict) -> SweepResult:
    """Train every run of the grid this rank claims (skipping finished ones); rank 0 then writes
    the outputs from all result files."""
    runs = build_grid(cfg)
    rank, world, store, info, ds_config = start_sweep(cfg)
    out_dir = Path(cfg["output_dir"]) / cfg["name"]
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        write_run_config(out_dir, format_config(cfg))
        print(f"[mqar] {len(runs)} runs on {world} rank(s):\n{format_config(cfg)}", flush=True)
    target = float(cfg["early_stop"]["accuracy"])
    data = TaskData(cfg["data"])
    try:
        for i, run in claimed_items(runs, store, key="mqar_next_run"):
            run_dir = cells_dir / run["id"]
            if read_result(run_dir) is not None:
                print(f"[mqar] rank {rank}: {run['id']} already done, skipped", flush=True)
                continue
            if cfg["skip_solved_lrs"] and _solved_sibling(run, runs, cells_dir, target):
                print(f"[mqar] rank {rank}: {run['id']} skipped (another lr of its cell reached {target})", flush=True)
                continue
            if run_dir.exists() and not (run_dir / "checkpoints" / "latest").exists():
                shutil.rmtree(run_dir)  # an interrupted run without a checkpoint restarts cleanly
            result = train_run(run, cfg, data, info, ds_config, run_dir)
            write_result(run_dir, result)
            if not cfg["keep_checkpoints"]:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            print(f"[mqar] rank {rank}: run {i + 1}/{len(runs)} {run['id']}: accuracy {result['accuracy']:.4f} "
                  f"after {result['steps']} steps in {result['seconds']:.1f} s", flush=True)
    finally:
        wait_for_ranks(store, world, rank, key="mqar_finished")
    rows = []
    if rank == 0:
        rows = write_outputs(out_dir, runs, cells_dir, f"MQAR sweep: {cfg['name']}",
                             target if cfg["skip_solved_lrs"] else None)
    return SweepResult(rows, runs, out_dir, rank == 0)
