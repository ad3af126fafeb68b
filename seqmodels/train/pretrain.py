"""Pretraining a causal LM of any registered family (docs/architecture.md §7): the run config, the model config
it resolves to, and the run itself: packed text data (seqmodels.data.text), the trainer
(seqmodels.train.trainer: engine, checkpoints, TensorBoard, NaN guard) and the HF export.

The model is whatever the `model:` section says (`mixer: <name>` or `layers: [...]`, or a
`preset:` plus overrides); nothing here names a family. Outputs under `<output_dir>/<name>/`:
TensorBoard events, metrics.jsonl, run_config.yaml, checkpoints/ (atomic, resumable) and hf/.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

from seqmodels.config import ModelConfig
from seqmodels.data.text import PackedTextData, TextDataSettings
from seqmodels.model import SeqLM
from seqmodels.run_config import format_config, parse_run_args, write_run_config
from seqmodels.train.deepspeed_config import micro_batch_size, resolve_deepspeed_config
from seqmodels.train.distributed import barrier, init_distributed
from seqmodels.train.export import engine_state_dict, export_hf, write_run_extras
from seqmodels.train.run_lock import run_lock
from seqmodels.train.safe_load import TRUST_FLAG
from seqmodels.train.trainer import Trainer, TrainResult, TrainSettings

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


def parse_args(argv: Optional[Sequence[str]] = None) -> dict:
    """The run config: DEFAULTS <- --config YAML files <- --section.key value flags (and --resume)."""
    return parse_run_args(argv, DEFAULTS, open_sections=("model", "ds"),
                          flags={"--resume": ("train.resume", True), TRUST_FLAG: ("train.trust_checkpoint", True)})


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


@dataclass
class PretrainRun:
    train: TrainResult
    run_dir: Path
    hf_dir: Optional[Path]  # None without export.hf
    is_main: bool


def pretrain(cfg: dict, callbacks: Iterable[Callable] = ()) -> PretrainRun:
    """Train (or resume) the run `cfg` describes, then export it; every rank calls. The run
    directory is locked for the whole run (seqmodels.train.run_lock)."""
    info = init_distributed(cfg["dist_backend"])
    resolved = format_config(cfg)
    if info.is_main:
        print(f"[pretrain] resolved config ({info.world_size} process(es)):\n{resolved}", flush=True)
    settings = TrainSettings.from_dict(cfg["train"])
    ds_config = resolve_deepspeed_config(cfg["deepspeed_config"], cfg["ds"])
    run_dir = Path(cfg["output_dir"]) / cfg["name"]
    with run_lock(run_dir, info.is_main):
        return _pretrain(cfg, callbacks, info, resolved, settings, ds_config, run_dir)


def _pretrain(cfg, callbacks, info, resolved, settings, ds_config, run_dir) -> PretrainRun:
    data = PackedTextData(TextDataSettings.from_dict(cfg["data"]), info)
    model_cfg = resolve_model_config(cfg["model"], len(data.tokenizer), data.seq_len)
    torch.manual_seed(settings.seed)  # same initial weights on every rank
    model = SeqLM(model_cfg)
    micro = micro_batch_size(ds_config)
    if info.is_main:
        write_run_config(run_dir, resolved)
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

    hf_dir = None
    if cfg["export"]["hf"]:
        hf_dir = run_dir / "hf"
        weights = engine_state_dict(trainer.engine, info.is_main)
        if info.is_main:
            export_hf(weights, model_cfg, data.tokenizer, hf_dir)
        barrier()
    return PretrainRun(result, run_dir, hf_dir, info.is_main)
