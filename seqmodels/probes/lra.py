"""Long Range Arena (Tay et al. 2020, arXiv 2011.04006; docs/architecture.md §6-7): sequence classification
with any mixer, trained by seqmodels.train.trainer; reports test accuracy.

The model is SeqLM with `head: classify` (mean pooling over non-pad tokens by default, or
`model.pool: last`), so causal and bidirectional mixers both work; vocab_size and num_classes
come from the task. ListOps comes from our seeded generator (seqmodels.data.lra) by default,
or from the official files with `data.source: files`; the other tasks need their files under
`data.dir` (names in TASKS; a missing file is an error naming it and where it comes from).
Retrieval pairs are classified as one sequence, document 1 then document 2 (LRA uses a
two-tower encoder; a single tower is what SeqLM has). Multi-rank runs are data-parallel.
Outputs under runs/<name>/: TensorBoard (train loss, eval loss, eval/val_accuracy),
metrics.jsonl, run_config.yaml, checkpoints/ and result.json (test accuracy, budget).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from seqmodels.atomic import atomic_write_text
from seqmodels.config import ModelConfig
from seqmodels.data import lra
from seqmodels.data.tensors import TensorLoader, eval_batches
from seqmodels.model import SeqLM
from seqmodels.run_config import format_config, parse_run_args, write_run_config
from seqmodels.train.deepspeed_config import micro_batch_size, resolve_deepspeed_config
from seqmodels.train.distributed import init_distributed
from seqmodels.train.evaluation import evaluate_accuracy
from seqmodels.train.trainer import Trainer, TrainSettings

LISTOPS_PAD = lra.LISTOPS_VOCAB["<pad>"]
# task: (official file names under data.dir for train / val / test, loader, vocab_size, num_classes, pad id or None)
TASKS = {
    "listops": (("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"), lra.load_listops, len(lra.LISTOPS_VOCAB), 10,
                LISTOPS_PAD),
    "text": (("train.tsv", "test.tsv", "test.tsv"), lra.load_text, 257, 2, 0),
    "retrieval": (("new_aan_pairs.train.tsv", "new_aan_pairs.eval.tsv", "new_aan_pairs.test.tsv"),
                  lra.load_retrieval, 257, 2, 0),
    "image": (("train.npz", "test.npz", "test.npz"), lra.load_image, 256, 10, None),
    "pathfinder": (("train.npz", "val.npz", "test.npz"), lra.load_pathfinder, 256, 2, None),
}
LRA_TRANSFORMER_ACCURACY = {"listops": 36.37, "text": 64.27, "retrieval": 57.46, "image": 42.44, "pathfinder": 71.40}

DEFAULTS = {
    "name": None,  # default: lra_<task>
    "output_dir": "runs",
    "task": "listops",
    "data": {
        "source": "generate",  # listops only: generate (seeded generator) or files (data.dir)
        "dir": None,  # folder holding the task's official files
        "seq_len": 2000,  # tokens kept per example (right-padded / truncated)
        "train_examples": 96000, "val_examples": 2000, "test_examples": 2000,  # generator sizes (LRA's)
        "min_length": 500, "max_length": 2000, "max_depth": 10, "max_args": 10,  # generator (tree lengths)
        "seed": 0,
    },
    "model": {"n_layers": 4, "d_model": 128, "n_heads": 4, "mixer": "attention", "head": "classify", "pool": "mean"},
    "deepspeed_config": "cpu.json",
    "ds": {},
    "dist_backend": None,
    "train": {**asdict(TrainSettings()), "steps": 5000, "lr": 1e-3, "warmup_steps": 100, "eval_every": 500,
              "log_every": 20},
    "eval_batch_size": 64,
    "torch_threads": None,
}


def parse_args(argv: Optional[Sequence[str]] = None) -> dict:
    """The run config: DEFAULTS <- --config YAML files <- --section.key value flags (and --resume)."""
    return parse_run_args(argv, DEFAULTS, open_sections=("model", "ds"), flags={"--resume": ("train.resume", True)})


def _task(task: str) -> tuple:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[task]


def _listops_split(sources_and_answers, seq_len: int) -> dict:
    sources = [s for s, _ in sources_and_answers]
    return {"input_ids": lra.encode_listops(sources, seq_len),
            "labels": torch.tensor([a for _, a in sources_and_answers], dtype=torch.long)}


def load_task(task: str, data: dict) -> tuple[dict, dict, dict]:
    """(train, val, test) tensor dicts: input_ids [N, L], labels [N], attention_mask [N, L] for padded tasks."""
    names, loader, _, _, pad = _task(task)
    if data["source"] not in ("generate", "files"):
        raise ValueError(f"data.source must be 'generate' or 'files', got {data['source']!r}")
    if task == "listops" and data["source"] == "generate":
        common = {k: data[k] for k in ("min_length", "max_length", "max_depth", "max_args")}
        sizes = (data["train_examples"], data["val_examples"], data["test_examples"])
        splits = [_listops_split(lra.generate_listops(n, seed=data["seed"] + 7919 * i, **common), data["seq_len"])
                  for i, n in enumerate(sizes)]
    else:
        if data["dir"] is None:
            where = "" if task != "listops" else " (or data.source: generate)"
            raise ValueError(f"task {task} reads its files from data.dir{where}; expected {list(dict.fromkeys(names))} "
                             f"there; they come from {lra.files.ORIGIN[task]}")
        splits = []
        for name in names:
            path = Path(data["dir"]) / name
            kwargs = {"max_length": data["seq_len"]} if task in ("listops", "text", "retrieval") else {}
            input_ids, labels = loader(path, **kwargs)  # a missing file: ValueError naming it and its source
            if task == "retrieval":  # [N, 2, L] -> one sequence: document 1 then document 2
                input_ids = input_ids.flatten(1)
            splits.append({"input_ids": input_ids, "labels": labels})
    for split in splits:
        if pad is not None:
            split["attention_mask"] = split["input_ids"] != pad
    return splits[0], splits[1], splits[2]


def classify_loss(engine, batch: dict) -> torch.Tensor:
    return engine(batch["input_ids"], labels=batch["labels"], attention_mask=batch.get("attention_mask")).loss


@dataclass
class LRAResult:
    report: dict  # also written to result_file
    result_file: Path
    is_main: bool


def run_lra(cfg: dict) -> LRAResult:
    """Train the classifier of cfg["task"], then measure validation and test accuracy."""
    task = cfg["task"]
    _, _, vocab_size, num_classes, _ = _task(task)
    if cfg["torch_threads"]:
        torch.set_num_threads(int(cfg["torch_threads"]))
    seq_len = cfg["data"]["seq_len"] * (2 if task == "retrieval" else 1)
    model_cfg = ModelConfig.from_dict({**cfg["model"], "vocab_size": vocab_size, "num_classes": num_classes,
                                       "head": "classify",
                                       "max_seq_len": max(cfg["model"].get("max_seq_len") or 0, seq_len)})
    train, val, test = load_task(task, cfg["data"])
    info = init_distributed(cfg["dist_backend"])
    settings = TrainSettings.from_dict(cfg["train"])
    ds_config = resolve_deepspeed_config(cfg["deepspeed_config"], cfg["ds"])
    run_dir = Path(cfg["output_dir"]) / (cfg["name"] or f"lra_{task}")
    resolved = format_config(cfg)
    torch.manual_seed(settings.seed)
    model = SeqLM(model_cfg)
    micro = micro_batch_size(ds_config)
    if info.is_main:
        write_run_config(run_dir, resolved)
        print(f"[lra] resolved config:\n{resolved}\n[lra] {task}: {len(train['labels'])} train / {len(val['labels'])} "
              f"val / {len(test['labels'])} test examples of {train['input_ids'].shape[1]} tokens; model "
              f"{model_cfg.mixer_names()} {model.num_parameters() / 1e6:.3f}M parameters", flush=True)

    def val_accuracy(trainer, step, loss):
        if settings.eval_every and (step % settings.eval_every == 0 or step == settings.steps):
            accuracy = evaluate_accuracy(trainer.engine.module, val, cfg["eval_batch_size"], trainer.engine.device)
            trainer.monitor.scalars(step, "eval", {"val_accuracy": accuracy})
            trainer.monitor.message(f"step {step}: validation accuracy {accuracy:.4f}")

    trainer = Trainer(model, ds_config, settings, info, run_dir,
                      train_loader=TensorLoader(train, micro, seed=settings.seed, rank=info.rank,
                                                world_size=info.world_size),
                      eval_batches=eval_batches(val, micro), loss_fn=classify_loss, callbacks=[val_accuracy],
                      client_state={"model_config": model_cfg.to_dict()})
    start = time.time()
    result = trainer.fit()
    test_accuracy = evaluate_accuracy(trainer.engine.module, test, cfg["eval_batch_size"], trainer.engine.device)
    val_acc = evaluate_accuracy(trainer.engine.module, val, cfg["eval_batch_size"], trainer.engine.device)
    report = {"task": task, "test_accuracy": test_accuracy, "val_accuracy": val_acc, "steps": result.step,
              "seconds": round(time.time() - start, 1), "examples_seen": result.step * micro * info.world_size,
              "train_examples": len(train["labels"]), "seq_len": int(train["input_ids"].shape[1]),
              "parameters": model.num_parameters(), "model": model_cfg.to_dict(),
              "lra_transformer_accuracy": LRA_TRANSFORMER_ACCURACY[task] / 100}
    result_file = run_dir / "result.json"
    if info.is_main:
        atomic_write_text(result_file, json.dumps(report, indent=1))
    return LRAResult(report, result_file, info.is_main)
