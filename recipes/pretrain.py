"""Pretrain a causal LM of any registered family under DeepSpeed (docs/architecture.md §7).

    deepspeed --num_gpus 1 recipes/pretrain.py --config recipes/configs/demo.yaml
    python recipes/pretrain.py --config recipes/configs/demo.yaml --train.steps 50   # one process
    deepspeed --hostfile hosts recipes/pretrain.py --config run.yaml --deepspeed_config recipes/configs/zero3_bf16.json

The model is whatever the `model:` section says (`mixer: <name>` or `layers: [...]`, or a
`preset:` plus overrides); the recipe never names a family. Data: packed shards built from the
`data:` section (seqmodels.train.text_data). Engine, checkpoints, TensorBoard and the NaN guard:
seqmodels.train.trainer. Outputs under `<output_dir>/<name>/`: TensorBoard events,
metrics.jsonl, run_config.yaml, checkpoints/ (atomic, resumable) and hf/ (the HF export).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

from seqmodels.config import ModelConfig
from seqmodels.model import SeqLM
from seqmodels.run_config import format_config, merge_config, parse_run_args, run_cli
from seqmodels.train.distributed import barrier, init_distributed
from seqmodels.train.export import engine_state_dict, export_hf, write_run_extras
from seqmodels.train.text_data import PackedTextData, TextDataSettings
from seqmodels.train.trainer import NonFiniteLossError, Trainer, TrainResult, TrainSettings

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

DEFAULTS = {
    "name": "run",
    "output_dir": "runs",
    "model": {},
    "data": asdict(TextDataSettings()),
    "deepspeed_config": "cpu.json",
    "ds": {},  # overrides merged into the DeepSpeed JSON, e.g. --ds.gradient_accumulation_steps 4
    "dist_backend": None,  # None: the accelerator's (gloo on CPU, nccl on CUDA)
    "train": asdict(TrainSettings()),
    "export": {"hf": True},
}


def resolve_deepspeed_config(name: str, overrides: dict) -> dict:
    """The DeepSpeed JSON at `name` (a path, or a file name under recipes/configs/) merged with `overrides`."""
    path = Path(name)
    if not path.is_file() and (CONFIG_DIR / name).is_file():
        path = CONFIG_DIR / name
    if not path.is_file():
        shipped = sorted(p.name for p in CONFIG_DIR.glob("*.json"))
        raise ValueError(f"deepspeed_config {name!r} not found (as a path or under {CONFIG_DIR}: {shipped})")
    return merge_config(json.loads(path.read_text()), overrides, open_sections=("",), where="ds")


def resolve_model_config(model: dict, vocab_size: int, seq_len: int) -> ModelConfig:
    """ModelConfig from the `model:` section; vocab_size defaults to the tokenizer's."""
    if not model:
        raise ValueError("the run config has no model section: set model.mixer, model.layers or model.preset")
    values = dict(model)
    given = values.get("vocab_size")
    if given is not None and given < vocab_size:
        raise ValueError(f"model.vocab_size={given} is smaller than the tokenizer's {vocab_size} tokens")
    values["vocab_size"] = given if given is not None else vocab_size  # beats a preset's vocab_size
    cfg = ModelConfig.from_dict(values)
    if cfg.max_seq_len < seq_len:
        raise ValueError(f"model.max_seq_len={cfg.max_seq_len} is shorter than data.seq_len={seq_len}")
    return cfg


def main(argv: Optional[Sequence[str]] = None, callbacks: Iterable[Callable] = ()) -> TrainResult:
    cfg = parse_run_args(argv, DEFAULTS, open_sections=("model", "ds"), flags={"--resume": ("train.resume", True)})
    info = init_distributed(cfg["dist_backend"])
    resolved = format_config(cfg)
    if info.is_main:
        print(f"[pretrain] resolved config ({info.world_size} process(es)):\n{resolved}", flush=True)
    settings = TrainSettings.from_dict(cfg["train"])
    ds_config = resolve_deepspeed_config(cfg["deepspeed_config"], cfg["ds"])
    run_dir = Path(cfg["output_dir"]) / cfg["name"]

    data = PackedTextData(TextDataSettings.from_dict(cfg["data"]), info)
    model_cfg = resolve_model_config(cfg["model"], len(data.tokenizer), data.seq_len)
    torch.manual_seed(settings.seed)  # same initial weights on every rank
    model = SeqLM(model_cfg)
    micro = int(ds_config["train_micro_batch_size_per_gpu"])
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run_config.yaml").write_text(resolved)
        print(f"[pretrain] model {model_cfg.mixer_names()} {model.num_parameters() / 1e6:.2f}M parameters; "
              f"global batch {micro * ds_config.get('gradient_accumulation_steps', 1) * info.world_size} x "
              f"{data.seq_len} tokens", flush=True)

    trainer = Trainer(
        model, ds_config, settings, info, run_dir,
        train_loader=data.train_loader(micro, settings.seed),
        eval_batches=data.eval_batches(micro),
        write_extras=lambda path: write_run_extras(path, model_cfg, data.tokenizer, resolved),
        client_state={"model_config": model_cfg.to_dict()},
        callbacks=callbacks,
    )
    result = trainer.fit()

    hf_dir = run_dir / "hf"
    if cfg["export"]["hf"]:
        weights = engine_state_dict(trainer.engine, info.is_main)
        if info.is_main:
            export_hf(weights, model_cfg, data.tokenizer, hf_dir)
        barrier()
    if info.is_main:
        eval_text = f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
        print(f"[pretrain] done: step {result.step}, train loss {result.last_loss:.4f}{eval_text} "
              f"in {result.seconds:.1f} s", flush=True)
        print(f"[pretrain] TensorBoard logs: {run_dir}  (view: tensorboard --logdir {run_dir.parent})")
        print(f"[pretrain] checkpoints: {run_dir / 'checkpoints'}  (latest: {result.checkpoint})")
        if cfg["export"]["hf"]:
            print(f"[pretrain] HF export: {hf_dir}  (python recipes/generate.py --model {hf_dir})")
    return result


if __name__ == "__main__":
    run_cli(main, "pretrain", errors=(NonFiniteLossError, ValueError))
