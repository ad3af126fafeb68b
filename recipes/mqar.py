"""MQAR sweep (Zoology, Arora et al. 2023, arXiv 2312.04927 §3-4; docs/architecture.md §5.6, §7): a grid of
mixers (or hybrid layer patterns) x d_model x (seq_len, num_kv_pairs) x lr, each run a 2-layer
model without MLP trained by seqmodels.train.trainer with early stop at the target accuracy;
the best lr per cell goes into results.csv / results.md / results.png under the run directory.

    python recipes/mqar.py --config recipes/configs/mqar_cpu.yaml
    python recipes/mqar.py --config recipes/configs/mqar_cpu.yaml --grid.d_models '[64]' --name quick
    deepspeed --num_gpus 8 recipes/mqar.py --config recipes/configs/mqar_zoology.yaml

Accuracy = fraction of answer positions (labels != -100) whose argmax prediction is exactly the
value token, over the whole test set (Zoology's "valid/accuracy").

Grid entries of `grid.mixers`: a mixer name ("gla"), a layer pattern ([base_conv, based]; layer
l uses pattern[l mod len]), or a mapping {label: ..., mixer|layers: ..., lrs: [...], <ModelConfig
fields>} for per-mixer settings (n_heads, mixer_options ...) on top of the `model:` section; its
`lrs` replace grid.lrs for that mixer (Zoology tunes the lr per mixer).

Resume: every (cell, lr) run writes `runs/<name>/cells/<run>/result.json` atomically when it
finishes; a rerun skips those (an interrupted run resumes from its checkpoint if one was saved,
else restarts), then rewrites the outputs from all result files of the grid.

Several ranks (`deepspeed --num_gpus N` / a hostfile): each free rank claims the next unclaimed run
(a shared counter, so the ranks finish together) and trains it alone, as a world-size-1 DeepSpeed
engine. Why not all ranks
data-parallel on every run: MQAR models are tiny (2 layers, d_model <= 512), so a data-parallel
step is dominated by the all-reduce and N ranks would still walk the grid one run at a time;
independent runs scale linearly and each run's numbers do not depend on the rank count. The
trainer's collectives then run on a per-process group (this process alone), so the launcher's
RANK/WORLD_SIZE are read first and replaced by single-process values; the ranks meet only
through a torch.distributed.TCPStore on the launcher's MASTER_ADDR:MASTER_PORT, where rank 0
waits for every rank to finish before writing the combined outputs.
"""
from __future__ import annotations

import csv
import gc
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "recipes") not in sys.path:
    sys.path.insert(0, str(REPO / "recipes"))

from seqmodels.config import ModelConfig  # noqa: E402
from seqmodels.data.mqar import mqar  # noqa: E402
from seqmodels.model import SeqLM  # noqa: E402
from seqmodels.run_config import format_config, parse_run_args  # noqa: E402
from seqmodels.train.checkpoint import atomic_write_text  # noqa: E402
from seqmodels.train.distributed import init_distributed  # noqa: E402
from seqmodels.train.tensor_data import TensorLoader, eval_batches, evaluate_accuracy  # noqa: E402
from seqmodels.train.trainer import NonFiniteLossError, Trainer, TrainSettings  # noqa: E402

from pretrain import resolve_deepspeed_config  # noqa: E402

RESULT_FILE = "result.json"
CSV_COLUMNS = ["mixer", "seq_len", "num_kv_pairs", "d_model", "lr", "accuracy", "best_seen_accuracy", "steps",
               "early_stopped", "diverged", "seconds", "parameters", "best_lr"]

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


# --------------------------------------------------------------------------- grid
def _positive_list(name: str, values) -> list:
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"grid.{name} must be a non-empty list, got {values!r}")
    return list(values)


def mixer_entry(entry) -> tuple[str, dict, Optional[list]]:
    """(label, ModelConfig overrides, its own lrs or None for grid.lrs) of one grid.mixers entry."""
    if isinstance(entry, str):
        return entry, {"mixer": entry}, None
    if isinstance(entry, (list, tuple)):
        if not entry or not all(isinstance(n, str) for n in entry):
            raise ValueError(f"grid.mixers: a layer pattern must be a non-empty list of mixer names, got {entry!r}")
        return "+".join(entry), {"layers": list(entry), "mixer": None}, None
    if isinstance(entry, dict):
        spec = dict(entry)
        label = spec.pop("label", None)
        lrs = spec.pop("lrs", None)
        if "layers" not in spec and "mixer" not in spec:
            raise ValueError(f"grid.mixers: a mapping entry needs mixer: or layers:, got {entry!r}")
        default_label, base, _ = mixer_entry(spec.pop("layers") if "layers" in spec else spec.pop("mixer"))
        label = label or default_label
        return label, {**spec, **base}, None if lrs is None else _lrs(f"mixers[{label}].lrs", lrs)
    raise ValueError(f"grid.mixers: expected a mixer name, a list of names or a mapping, got {entry!r}")


def _lrs(name: str, values) -> list:
    values = _positive_list(name, values)
    for lr in values:
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"grid.{name}: {lr!r} is not a positive number")
    return values


def build_grid(cfg: dict) -> list[dict]:
    """Every (mixer, task, d_model, lr) run, validated up front (a bad value fails before any training)."""
    grid = cfg["grid"]
    mixers = [mixer_entry(e) for e in _positive_list("mixers", grid["mixers"])]
    labels = [label for label, _, _ in mixers]
    if len(set(labels)) != len(labels):
        raise ValueError(f"grid.mixers: labels must be distinct, got {labels}")
    d_models = _positive_list("d_models", grid["d_models"])
    grid_lrs = _lrs("lrs", grid["lrs"])
    tasks = _positive_list("tasks", grid["tasks"])
    for d in d_models:
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ValueError(f"grid.d_models: {d!r} is not a positive integer")
    data = cfg["data"]
    parsed_tasks = []
    for task in tasks:
        if not (isinstance(task, (list, tuple)) and len(task) == 2 and all(isinstance(v, int) for v in task)):
            raise ValueError(f"grid.tasks: each task is [seq_len, num_kv_pairs], got {task!r}")
        seq_len, pairs = task
        if pairs < 1 or seq_len < 4 * pairs:
            raise ValueError(f"grid.tasks: [{seq_len}, {pairs}]: seq_len must be >= 4 * num_kv_pairs = {4 * pairs} "
                             "(the pairs take 2K positions and the K queries need room)")
        if seq_len % 2:
            raise ValueError(f"grid.tasks: [{seq_len}, {pairs}]: seq_len must be even")
        if data["vocab_size"] <= seq_len:
            raise ValueError(f"data.vocab_size={data['vocab_size']} must be > seq_len={seq_len} (grid.tasks)")
        parsed_tasks.append((seq_len, pairs))
    if data["test_examples"] < 1 or data["train_examples"] < 1:
        raise ValueError(f"data.train_examples and data.test_examples must be >= 1, got {data}")
    max_len = max(t[0] for t in parsed_tasks)
    runs = []
    for seq_len, pairs in parsed_tasks:
        for label, overrides, own_lrs in mixers:
            lrs = own_lrs or grid_lrs
            for d_model in d_models:
                values = {**cfg["model"], **overrides, "d_model": d_model, "vocab_size": data["vocab_size"],
                          "max_seq_len": max(max_len, cfg["model"].get("max_seq_len") or 0)}
                try:
                    model_cfg = ModelConfig.from_dict(values)
                except ValueError as exc:
                    raise ValueError(f"grid cell mixer={label} d_model={d_model}: {exc}") from None
                for lr_index, lr in enumerate(lrs):
                    run_id = f"{label}_T{seq_len}_kv{pairs}_d{d_model}_lr{lr:g}"
                    runs.append({"id": run_id, "mixer": label, "seq_len": seq_len, "num_kv_pairs": pairs,
                                 "d_model": d_model, "lr": float(lr), "model": model_cfg.to_dict(),
                                 "lr_index": lr_index})
    # training order: every cell's first lr before any second lr (so skip_solved_lrs can skip the later
    # ones), and within that the costliest runs (longest sequence x widest model) first, so that ranks
    # taking runs from the queue finish close together
    runs.sort(key=lambda r: (r["lr_index"], -r["seq_len"] * r["d_model"]))
    return runs


# ------------------------------------------------------------------------ ranks
def split_ranks() -> tuple[int, int, Optional[object]]:
    """(rank, world_size, store) of the launcher; with several ranks the environment is then set
    for a world-size-1 process group of this process alone (see the module docstring)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    store = None
    if world > 1:
        from datetime import timedelta

        from torch.distributed import TCPStore

        from seqmodels.train.distributed import _free_port

        store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, rank == 0,
                         timeout=timedelta(minutes=30))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    return rank, world, store


def claimed_runs(runs: list[dict], store):
    """(index, run) pairs this rank trains: all of them alone; with several ranks each rank claims the
    next unclaimed run from a shared counter when it is free (a work queue: a rank with short runs
    takes more of them, so the ranks finish together; which rank trains a run changes nothing in it)."""
    if store is None:
        yield from enumerate(runs)
        return
    while True:
        i = store.add("mqar_next_run", 1) - 1
        if i >= len(runs):
            return
        yield i, runs[i]


def wait_for_ranks(store, world: int, rank: int, poll_s: float = 2.0) -> None:
    """Every rank reports it has finished; rank 0 (the store's server) returns once all have."""
    if store is None:
        return
    store.add("mqar_finished", 1)
    if rank == 0:
        while store.add("mqar_finished", 0) < world:
            time.sleep(poll_s)


# ------------------------------------------------------------------------- runs

def read_result(run_dir: Path) -> Optional[dict]:
    path = run_dir / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


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
    micro = int(ds_config["train_micro_batch_size_per_gpu"])
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
            "early_stopped": not diverged and steps < settings.steps, "diverged": diverged, "seconds": round(time.time() - start, 2),
            "parameters": parameters, "model": run["model"]}


def _solved_sibling(run: dict, runs: list[dict], cells_dir: Path, target: float) -> bool:
    for other in runs:
        if other is run or _cell_key(other) != _cell_key(run):
            continue
        done = read_result(cells_dir / other["id"])
        if done is not None and done["accuracy"] >= target:
            return True
    return False


# ---------------------------------------------------------------------- outputs
def _cell_key(row: dict) -> tuple:
    """(mixer, seq_len, num_kv_pairs, d_model): the grid cell of a run or a result row."""
    return row["mixer"], row["seq_len"], row["num_kv_pairs"], row["d_model"]


def best_per_cell(rows: list[dict]) -> dict:
    """{(mixer, seq_len, kv, d_model): the row with the highest accuracy (ties: lower lr)}."""
    best = {}
    for row in sorted(rows, key=lambda r: r["lr"]):
        key = _cell_key(row)
        if key not in best or row["accuracy"] > best[key]["accuracy"]:
            best[key] = row
    return best


def write_outputs(out_dir: Path, runs: list[dict], cells_dir: Path, title: str,
                  solved_target: Optional[float] = None) -> list[dict]:
    """results.csv (every finished run, best_lr marks the best of its cell), results.md, results.png.

    solved_target: with skip_solved_lrs, the accuracy that solves a cell; a run without a result
    whose cell another lr solved is listed as skipped, not as unfinished."""
    results = {run["id"]: read_result(cells_dir / run["id"]) for run in runs}
    rows = [r for r in results.values() if r is not None]
    best = best_per_cell(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "best_lr": int(best[_cell_key(row)] is row)})
    atomic_write_text(out_dir / "results.csv", buffer.getvalue())
    missing, skipped = [], []
    for run in runs:
        if results[run["id"]] is None:
            cell_best = best.get(_cell_key(run))
            solved = solved_target is not None and cell_best is not None and cell_best["accuracy"] >= solved_target
            (skipped if solved else missing).append(run["id"])
    atomic_write_text(out_dir / "results.md", results_markdown(runs, best, missing, title, skipped))
    plot_results(runs, best, out_dir / "results.png", title)
    return rows



def _axes(runs: list[dict]):
    tasks = sorted({(r["seq_len"], r["num_kv_pairs"]) for r in runs})
    mixers = list(dict.fromkeys(r["mixer"] for r in runs))
    d_models = sorted({r["d_model"] for r in runs})
    return tasks, mixers, d_models


def results_markdown(runs: list[dict], best: dict, missing: list[str], title: str,
                     skipped: Sequence[str] = ()) -> str:
    tasks, mixers, d_models = _axes(runs)
    lines = [f"# {title}", "", "Test accuracy (fraction of answer tokens predicted exactly) of the best lr per cell; "
             "in brackets: that lr and the optimizer steps it took (early stop at the target accuracy).", ""]
    for seq_len, pairs in tasks:
        lines += [f"## seq_len {seq_len}, {pairs} key-value pairs", "",
                  "| mixer | " + " | ".join(f"d_model {d}" for d in d_models) + " |",
                  "|---|" + "---|" * len(d_models)]
        for mixer in mixers:
            cells = []
            for d in d_models:
                row = best.get((mixer, seq_len, pairs, d))
                cells.append("—" if row is None else f"{row['accuracy']:.3f} (lr {row['lr']:g}, {row['steps']} steps)")
            lines.append(f"| {mixer} | " + " | ".join(cells) + " |")
        lines.append("")
    if skipped:
        lines += [f"Not run, another lr of the cell reached the target (skip_solved_lrs; {len(skipped)} runs): "
                  + ", ".join(skipped), ""]
    if missing:
        lines += [f"Not finished ({len(missing)} runs): " + ", ".join(missing), ""]
    return "\n".join(lines)


def plot_results(runs: list[dict], best: dict, path: Path, title: str) -> None:
    """Accuracy vs d_model, one panel per (seq_len, kv pairs), one line per mixer (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, mixers, d_models = _axes(runs)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False, sharey=True)
    for ax, (seq_len, pairs) in zip(axes[0], tasks):
        for mixer in mixers:
            points = [(d, best[(mixer, seq_len, pairs, d)]["accuracy"]) for d in d_models
                      if (mixer, seq_len, pairs, d) in best]
            if points:
                ax.plot(*zip(*points), marker="o", label=mixer)
        ax.set_xscale("log", base=2)
        ax.set_xticks(d_models, [str(d) for d in d_models])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"seq_len {seq_len}, {pairs} kv pairs", fontsize=9)
        ax.set_xlabel("d_model")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    cfg = parse_run_args(argv, DEFAULTS, open_sections=("model", "ds"))
    runs = build_grid(cfg)
    rank, world, store = split_ranks()
    if cfg["torch_threads"]:
        torch.set_num_threads(int(cfg["torch_threads"]))
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    info = init_distributed(cfg["dist_backend"])
    ds_config = resolve_deepspeed_config(cfg["deepspeed_config"], cfg["ds"])
    out_dir = Path(cfg["output_dir"]) / cfg["name"]
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out_dir / "run_config.yaml").write_text(format_config(cfg))
        print(f"[mqar] {len(runs)} runs on {world} rank(s):\n{format_config(cfg)}", flush=True)
    target = float(cfg["early_stop"]["accuracy"])
    data = TaskData(cfg["data"])
    start = time.time()
    try:
        for i, run in claimed_runs(runs, store):
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
            atomic_write_text(run_dir / RESULT_FILE, json.dumps(result, indent=1))
            if not cfg["keep_checkpoints"]:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            print(f"[mqar] rank {rank}: run {i + 1}/{len(runs)} {run['id']}: accuracy {result['accuracy']:.4f} "
                  f"after {result['steps']} steps in {result['seconds']:.1f} s", flush=True)
    finally:
        wait_for_ranks(store, world, rank)
    rows = []
    if rank == 0:
        rows = write_outputs(out_dir, runs, cells_dir, f"MQAR sweep: {cfg['name']}",
                             target if cfg["skip_solved_lrs"] else None)
        print(f"[mqar] {len(rows)}/{len(runs)} runs finished (the others: see results.md); "
              f"this launch took {time.time() - start:.1f} s; results: {out_dir / 'results.md'}, {out_dir / 'results.csv'}, {out_dir / 'results.png'}; "
              f"TensorBoard: tensorboard --logdir {cells_dir}", flush=True)
    return rows


if __name__ == "__main__":
    try:
        main()
    except (NonFiniteLossError, ValueError) as exc:
        print(f"[mqar] error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
