"""Family comparison: every causal family (and a few hybrids) trained as a language model on equal
terms, with the held-out loss split on AR hits (Zoology, Arora et al. 2023, arXiv 2312.04927 §3).

Equal terms: one shape (d_model, n_layers) with the parameter count matched to the baseline's
(compare_grid), the same packed tokens in the same order, the same schedule and seed, each model
trained by the pretrain run (seqmodels.train.pretrain: trainer, checkpoints, TensorBoard under
`<output_dir>/<name>/<model>/`, HF export).

Per model (compare_tokens, compare_results): held-out loss and perplexity on the first
`eval.windows` validation windows, overall, on AR hits, on rare AR hits (bigram count in the
training tokens below `eval.rare_below`) and on the other tokens, and the share of the gap to the
baseline on AR hits; MQAR accuracy at the model's width (seqmodels.probes.mqar.train_run, the same
step budget for every model; `mqar.model` overrides the architecture, by default Zoology's 2
layers without MLP); training tokens/s and peak memory from the trainer's metrics (CPU: the
process's peak resident memory, reset before each model); decoding state bytes and ms/token
(min over the timed steps) at `decode.context` tokens (seqmodels.decode_timing, batch 1, the
model's config with max_seq_len raised to the context, random weights: neither number depends on
the weight values).

Resume: a finished model writes `<model>/result.json` (a failed one records its error there);
a rerun skips those, resumes an interrupted model from its checkpoint, then rewrites the outputs
from all result files. Several ranks: each free rank claims the next model
(seqmodels.train.work_queue) and trains it alone, as in the MQAR sweep.
"""
from __future__ import annotations

import copy
import gc
import itertools
import platform
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from seqmodels.config import ModelConfig
from seqmodels.data.text import PackedTextData, TextDataSettings, packed_windows, window_batches
from seqmodels.decode_timing import prefill, step_times
from seqmodels.model import SeqLM
from seqmodels.probes import mqar
from seqmodels.probes.compare_grid import build_grid
from seqmodels.probes.compare_results import read_result, write_outputs, write_result
from seqmodels.probes.compare_tokens import BigramCounts, split_loss
from seqmodels.run_config import format_config, parse_run_args, write_run_config
from seqmodels.train import pretrain as pretrain_run
from seqmodels.train.deepspeed_config import micro_batch_size, resolve_deepspeed_config
from seqmodels.train.export import load_for_inference
from seqmodels.train.monitor import read_metrics
from seqmodels.train.trainer import NonFiniteLossError, TrainSettings
from seqmodels.probes.sweep import start_sweep
from seqmodels.train.work_queue import claimed_items, wait_for_ranks

DEFAULTS = {
    "name": "compare",
    "output_dir": "runs",
    "grid": {
        "families": "all",  # every causal registered mixer, or a list of names
        "hybrids": [["base_conv", "based"], ["gla", "attention"], ["sliding_window", "based"]],
        "exclude": [],  # labels to leave out ("mega", "gla+attention")
    },
    "baseline": "attention",  # the parameter target and the reference of the gap
    "shape": {"d_model": 64, "n_layers": 4, "tolerance": 0.05},
    "model": {},  # ModelConfig overrides for every model (e.g. norm: layernorm)
    "data": asdict(TextDataSettings()),
    "deepspeed_config": "cpu.json",
    "ds": {},
    "dist_backend": None,
    "train": {**asdict(TrainSettings()), "progress": False},
    "eval": {"windows": 64, "batch_size": 8, "rare_below": 8},
    "mqar": {"steps": 300, "lr": 3.0e-3, "warmup_steps": 20, "seq_len": 64, "num_kv_pairs": 4, "batch_size": 32,
             "vocab_size": 256, "train_examples": 10000, "test_examples": 500, "eval_every": 100,
             "model": {"n_layers": 2, "mlp": "none"}},  # steps 0: no MQAR
    "decode": {"context": 4096, "tokens": 64, "step_budget_s": 10.0, "prefill_chunk": 1024},  # context 0: none
    "keep_checkpoints": False,  # false: a finished model's checkpoints are deleted (hf/ and result.json stay)
    "torch_threads": None,
}


def parse_args(argv: Optional[Sequence[str]] = None) -> dict:
    """The comparison config: DEFAULTS <- --config YAML files <- --section.key value flags."""
    return parse_run_args(argv, DEFAULTS, open_sections=("model", "ds", "mqar.model"))


def _training_batches(data: PackedTextData, micro: int, seed: int, count: int) -> Iterator[dict]:
    """The first `count` micro-batches of the training order (every model's), epochs wrapping."""
    loader = data.train_loader(micro, seed)
    return itertools.islice((batch for _ in itertools.count() for batch in loader), count)


def _pretrain_config(cfg: dict, model: dict, out_dir: Path, label: str) -> dict:
    run = copy.deepcopy(pretrain_run.DEFAULTS)
    run.update(name=label, output_dir=str(out_dir), model=model, data=copy.deepcopy(cfg["data"]),
               deepspeed_config=cfg["deepspeed_config"], ds=copy.deepcopy(cfg["ds"]),
               dist_backend=cfg["dist_backend"], train=copy.deepcopy(cfg["train"]), export={"hf": True})
    return run


def _mqar_probe(entry: dict, cfg: dict, tasks: "mqar.TaskData", info, model_dir: Path) -> Optional[dict]:
    """MQAR accuracy of the model's architecture (mqar.model overrides) at its width."""
    probe = cfg["mqar"]
    if not probe["steps"]:
        return None
    sweep = mqar.parse_args([])
    sweep["train"].update(steps=probe["steps"], lr=probe["lr"], warmup_steps=probe["warmup_steps"], min_lr_ratio=1.0,
                          log_every=10, progress=False)
    sweep["early_stop"] = {"accuracy": 0.99, "eval_every": probe["eval_every"]}
    sweep["eval_batch_size"] = 250
    values = {**entry["model"], **probe["model"], "vocab_size": probe["vocab_size"], "max_seq_len": probe["seq_len"]}
    run = {"id": entry["label"], "mixer": entry["label"], "seq_len": probe["seq_len"],
           "num_kv_pairs": probe["num_kv_pairs"], "d_model": values["d_model"], "lr": float(probe["lr"]),
           "model": ModelConfig.from_dict(values).to_dict()}
    ds_config = resolve_deepspeed_config(cfg["deepspeed_config"],
                                         {**cfg["ds"], "train_micro_batch_size_per_gpu": probe["batch_size"],
                                          "gradient_accumulation_steps": 1})
    record = mqar.train_run(run, sweep, tasks, info, ds_config, model_dir / "mqar")
    return {k: record[k] for k in ("accuracy", "best_seen_accuracy", "steps", "diverged", "seconds", "parameters")}


def _decode_cost(entry: dict, cfg: dict) -> Optional[dict]:
    """State bytes after a `decode.context`-token prefill and ms per decoded token (min and median)."""
    decode = cfg["decode"]
    if not decode["context"]:
        return None
    context, tokens = int(decode["context"]), int(decode["tokens"])
    model_cfg = ModelConfig.from_dict({**entry["model"], "max_seq_len": context + tokens + 8})
    torch.manual_seed(0)
    model = SeqLM(model_cfg).eval()
    ids = torch.randint(0, model_cfg.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
    state = prefill(model, ids, int(decode["prefill_chunk"]))
    state_bytes = state.nbytes()
    times = step_times(model, {context: state}, tokens, 0, model_cfg.vocab_size, torch.device("cpu"),
                       float(decode["step_budget_s"]))[context]
    return {"context": context, "state_bytes": state_bytes, "ms_per_token": min(times) * 1e3,
            "ms_per_token_median": statistics.median(times) * 1e3, "timed_steps": len(times)}


def _reset_peak_memory() -> None:
    from deepspeed.accelerator import get_accelerator

    get_accelerator().reset_max_memory_allocated()


class Shared:
    """What every model of a launch uses, built on first use: the training bigram counts, the
    held-out batches and the MQAR task data."""

    def __init__(self, cfg: dict, data: PackedTextData, micro: int, accumulation: int):
        self.cfg, self.data, self.micro, self.accumulation = cfg, data, micro, accumulation
        self._counts, self._tasks = None, None

    @property
    def counts(self) -> BigramCounts:
        if self._counts is None:
            train = self.cfg["train"]
            batches = _training_batches(self.data, self.micro, train["seed"], train["steps"] * self.accumulation)
            self._counts = BigramCounts.from_batches(batches, len(self.data.tokenizer))
        return self._counts

    def eval_batches(self) -> Iterator[dict]:
        ev = self.cfg["eval"]
        windows = itertools.islice(packed_windows(self.data.path, "validation", self.data.tokenizer), ev["windows"])
        return window_batches(windows, ev["batch_size"])

    @property
    def tasks(self) -> "mqar.TaskData":
        if self._tasks is None:
            p = self.cfg["mqar"]
            self._tasks = mqar.TaskData({"vocab_size": p["vocab_size"], "train_examples": p["train_examples"],
                                         "test_examples": p["test_examples"], "power_a": 0.01,
                                         "random_non_queries": True, "seed": self.cfg["train"]["seed"]})
        return self._tasks


def run_model(entry: dict, cfg: dict, shared: Shared, info, out_dir: Path) -> dict:
    """Train (or resume) one model of the grid and measure it; its result record."""
    start = time.time()
    label = entry["label"]
    _reset_peak_memory()
    run = pretrain_run.pretrain(_pretrain_config(cfg, entry["model"], out_dir, label))
    trained = [r for r in read_metrics(run.run_dir) if "tokens_per_s" in r]
    model, _ = load_for_inference(run.hf_dir)
    split = split_loss(model, shared.eval_batches(), shared.counts, int(cfg["eval"]["rare_below"]))
    del model
    result = {
        "label": label, "preset": entry["preset"], "model": entry["model"], "parameters": entry["parameters"],
        "non_embedding_parameters": entry["non_embedding_parameters"], "target_parameters": entry["target"],
        "steps": run.train.step, "tokens_trained": run.train.step * shared.micro * shared.accumulation * shared.data.seq_len,
        "train_loss": run.train.last_loss, "eval_loss": run.train.eval_loss, "train_seconds": round(run.train.seconds, 2),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in trained),
        "peak_mem_gb": max(r["mem_gb"] for r in trained), "split": split,
        "bigram_counts_tokens": shared.counts.tokens, "rare_below": int(cfg["eval"]["rare_below"]),
    }
    result["mqar"] = _mqar_probe(entry, cfg, shared.tasks, info, out_dir / label)
    result["decode"] = _decode_cost(entry, cfg)
    result["seconds"] = round(time.time() - start, 2)
    gc.collect()
    return result


def _header(cfg: dict, models: list[dict], notes: list[str], seq_len: int, micro: int, accumulation: int) -> list[str]:
    train, shape, ev = cfg["train"], cfg["shape"], cfg["eval"]
    tokens = train["steps"] * micro * accumulation * seq_len
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU {platform.machine()}"
    lines = [
        f"Models: d_model {shape['d_model']}, {shape['n_layers']} layers, parameters matched to {cfg['baseline']}'s "
        f"{models[0]['target']:,} within {shape['tolerance']:.0%}; {tokens:,} training tokens per model "
        f"({train['steps']} steps x {micro * accumulation} x {seq_len} tokens, lr {train['lr']:g}, seed {train['seed']}); "
        f"data: corpus {cfg['data']['corpus'] or cfg['data']['packed']}, vocab {models[0]['model']['vocab_size']}.",
        f"Held-out: the first {ev['windows']} validation windows; AR hit: the target completes a bigram seen earlier "
        f"in the window; rare: that bigram occurs fewer than {ev['rare_below']} times in the training tokens.",
        f"MQAR: seq_len {cfg['mqar']['seq_len']}, {cfg['mqar']['num_kv_pairs']} pairs, {cfg['mqar']['steps']} steps "
        f"at lr {cfg['mqar']['lr']:g}, model overrides {cfg['mqar']['model']}. Decoding: ctx = {cfg['decode']['context']} "
        "tokens, batch 1.",
        f"Device: {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); written {date.today()}.",
    ]
    return lines + [f"Left out: {note}" for note in notes]


@dataclass
class CompareResult:
    rows: list[dict]  # the outputs' rows (rank 0; [] on the other ranks)
    models: list[dict]  # every model of the grid
    out_dir: Path
    is_main: bool


def _packed_data(cfg: dict, info, rank: int, store) -> PackedTextData:
    """The packed tokens; rank 0 builds them first and the other ranks wait on the work-queue store."""
    settings = TextDataSettings.from_dict(cfg["data"])
    if store is None:
        return PackedTextData(settings, info)
    if rank == 0:
        try:
            data = PackedTextData(settings, info)
        finally:
            store.set("compare_data_ready", "1")
        return data
    store.wait(["compare_data_ready"])
    return PackedTextData(settings, info)


def run_compare(cfg: dict) -> CompareResult:
    """Train and measure every model this rank claims (skipping finished ones); rank 0 then writes
    the outputs from all result files."""
    rank, world, store, info, ds_config = start_sweep(cfg)
    micro, accumulation = micro_batch_size(ds_config), int(ds_config.get("gradient_accumulation_steps", 1))
    out_dir = Path(cfg["output_dir"]) / cfg["name"]
    data = _packed_data(cfg, info, rank, store)
    models, notes = build_grid(cfg, len(data.tokenizer), data.seq_len)
    if rank == 0:
        write_run_config(out_dir, format_config(cfg))
        print(f"[compare] {len(models)} models on {world} rank(s): "
              + ", ".join(f"{m['label']} {m['parameters'] / 1e6:.3f}M" for m in models), flush=True)
    shared = Shared(cfg, data, micro, accumulation)
    try:
        for i, entry in claimed_items(models, store, key="compare_next_model"):
            model_dir = out_dir / entry["label"]
            if read_result(model_dir) is not None:
                print(f"[compare] rank {rank}: {entry['label']} already done, skipped", flush=True)
                continue
            for folder in (model_dir, model_dir / "mqar"):  # interrupted before its first checkpoint: restart clean
                if folder.exists() and not (folder / "checkpoints" / "latest").exists():
                    shutil.rmtree(folder)
            try:
                result = run_model(entry, cfg, shared, info, out_dir)
            except (NonFiniteLossError, ValueError, RuntimeError, NotImplementedError) as exc:
                print(f"[compare] rank {rank}: {entry['label']} failed: {exc}", flush=True)
                result = {"label": entry["label"], "preset": entry["preset"], "error": f"{type(exc).__name__}: {exc}"}
            write_result(model_dir, result)
            if not cfg["keep_checkpoints"]:
                for folder in (model_dir / "checkpoints", model_dir / "mqar" / "checkpoints"):
                    shutil.rmtree(folder, ignore_errors=True)
            if "error" not in result:
                print(f"[compare] rank {rank}: model {i + 1}/{len(models)} {entry['label']}: held-out loss "
                      f"{result['split']['all']['loss_sum'] / result['split']['all']['tokens']:.4f} "
                      f"in {result['seconds']:.1f} s", flush=True)
    finally:
        wait_for_ranks(store, world, rank, key="compare_finished")
    rows = []
    if rank == 0:
        header = _header(cfg, models, notes, data.seq_len, micro, accumulation)
        rows = write_outputs(out_dir, [m["label"] for m in models], cfg["baseline"],
                             f"Family comparison: {cfg['name']}", header)
    return CompareResult(rows, models, out_dir, rank == 0)
