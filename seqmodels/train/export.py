"""From training to inference: the full float32 weights of a DeepSpeed engine or checkpoint, the
Hugging Face export (`save_pretrained` + tokenizer, written atomically), and loading any of
them back as a SeqLM for the generate/evaluate recipes.

A checkpoint tag directory (checkpoint.py) holds `model_config.yaml` and `tokenizer/` next to
DeepSpeed's files (written by `write_run_extras`), so it is self-contained. Loading one checks its
manifest first and never unpickles code (seqmodels.train.safe_load) unless `trust=True`; HF
directories are written and read as safetensors only.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from seqmodels.atomic import atomic_replace_dir
from seqmodels.config import ModelConfig

MODEL_CONFIG_FILE = "model_config.yaml"
TOKENIZER_DIR = "tokenizer"


def engine_state_dict(engine, is_main: bool) -> Optional[dict]:
    """float32 CPU copy of the module's weights on rank 0 (None elsewhere); every rank must call
    (ZeRO-3 gathers the partitions)."""
    import deepspeed

    module = engine.module
    gather = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None, enabled=gather):
        if not is_main:
            return None
        return {k: v.detach().to("cpu", torch.float32).clone() for k, v in module.state_dict().items()}


def export_hf(state_dict: dict, model_config: ModelConfig, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write an HF directory (config.json, generation_config.json, model.safetensors, tokenizer files)
    loadable with `AutoModelForCausalLM.from_pretrained(out_dir)` after `import seqmodels`.

    The config (and generation_config, so `generate` stops at EOS) carries the tokenizer's
    bos/eos/pad ids; the saved tokenizer's `model_max_length` is the model's context,
    ModelConfig.max_seq_len (also the config's `max_position_embeddings`)."""
    from seqmodels.hf import SeqModelsConfig, SeqModelsForCausalLM

    out = Path(out_dir)
    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    special = {} if tokenizer is None else {f"{kind}_token_id": getattr(tokenizer, f"{kind}_token_id")
                                            for kind in ("bos", "eos", "pad")}
    model = SeqModelsForCausalLM(SeqModelsConfig(model_config, **special))
    missing, unexpected = model.model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not match the model config: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(str(tmp), safe_serialization=True)
    if tokenizer is not None:
        context = tokenizer.model_max_length
        tokenizer.model_max_length = model_config.max_seq_len
        try:
            tokenizer.save_pretrained(str(tmp))
        finally:
            tokenizer.model_max_length = context  # the caller's tokenizer is left as it was
    atomic_replace_dir(tmp, out)
    return out


def write_run_extras(path: Path, model_config: ModelConfig, tokenizer, run_config_yaml: Optional[str] = None) -> None:
    """Model config, tokenizer (and the resolved run config) into a checkpoint tag directory."""
    model_config.to_yaml(path / MODEL_CONFIG_FILE)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path / TOKENIZER_DIR))
    if run_config_yaml is not None:
        (path / "run_config.yaml").write_text(run_config_yaml)


def _checkpoint_state_dict(tag_dir: Path, trust: bool = False) -> dict:
    """float32 module weights of one DeepSpeed checkpoint tag (any ZeRO stage)."""
    from seqmodels.train.safe_load import safe_unpickling

    if any(tag_dir.glob("zero_pp_rank_*_mp_rank_00_model_states.pt")):  # ZeRO-3: weights are partitioned
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with safe_unpickling(trust):
            state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        return {k: v.float() for k, v in state.items()}
    model_file = tag_dir / "mp_rank_00_model_states.pt"
    if not model_file.is_file():
        raise ValueError(f"{tag_dir} is not a DeepSpeed checkpoint ({model_file.name} is missing)")
    with safe_unpickling(trust):
        module = torch.load(model_file, map_location="cpu")["module"]
    return {k: v.float() for k, v in module.items()}


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """An intact tag directory: `path` itself, or the newest intact one of a checkpoints directory
    (the one `latest` names unless its manifest check fails: seqmodels.train.checkpoint.intact_tag)."""
    from seqmodels.train.checkpoint import intact_tag
    from seqmodels.train.manifest import checkpoint_problem

    path = Path(path)
    if (path / MODEL_CONFIG_FILE).is_file():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise ValueError(f"checkpoint {path} is damaged: {problem}; load an intact one (its parent directory "
                             "picks the newest intact checkpoint)")
        return path
    tag = intact_tag(path)
    if tag is None:
        raise ValueError(
            f"{path} is neither an HF directory (config.json), a checkpoint tag ({MODEL_CONFIG_FILE}) "
            "nor a checkpoint directory with a `latest` file"
        )
    return path / tag


def load_for_inference(path: str | os.PathLike, device="cpu", dtype=torch.float32, trust: bool = False):
    """(SeqLM in eval mode, tokenizer or None) from an HF export directory (safetensors) or a
    checkpoint (a tag directory or a checkpoints directory with `latest`); `trust=True` lets
    DeepSpeed's files load with pickle."""
    from transformers import AutoTokenizer

    from seqmodels.model import SeqLM

    path = Path(path)
    if not path.exists():
        raise ValueError(f"model path {path} does not exist")
    if (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        import seqmodels  # noqa: F401  (registers the Auto classes)
        from seqmodels.hf import dtype_kwargs

        if not any(path.glob("*.safetensors")):
            raise ValueError(f"{path} holds no .safetensors weights; only safetensors HF exports are loaded "
                             "(re-export with the pretrain recipe)")
        hf = AutoModelForCausalLM.from_pretrained(str(path), **dtype_kwargs(dtype), use_safetensors=True)
        model = hf.model
        tok_dir = path if (path / "tokenizer_config.json").is_file() else None
    else:
        tag_dir = resolve_checkpoint(path)
        model = SeqLM(ModelConfig.from_yaml(tag_dir / MODEL_CONFIG_FILE))
        model.load_state_dict(_checkpoint_state_dict(tag_dir, trust))
        tok_dir = tag_dir / TOKENIZER_DIR if (tag_dir / TOKENIZER_DIR).is_dir() else None
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir)) if tok_dir is not None else None
    return model.to(device=device, dtype=dtype).eval(), tokenizer
