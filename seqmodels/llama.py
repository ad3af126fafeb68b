"""Interop with Hugging Face Llama-family checkpoints (Llama, Mistral, Qwen2 attention).

    model = from_llama("path/to/hf_dir")      # -> SeqLM with mixer: attention, same logits
    to_llama(model, "out_dir")                 # -> a LlamaForCausalLM directory

Our Transformer is Llama's architecture (RMSNorm, RoPE in rotate-half layout, SwiGLU, GQA;
docs/architecture.md §5.1), so conversion is a renaming of weights. What cannot be represented is refused
with the reason (rope scaling, MLP biases, sliding-window Mistral, other activations).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from seqmodels.config import ModelConfig
from seqmodels.model import SeqLM

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def _rope_theta(hf_config) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(f"rope type {rope_type!r} is not supported yet (only plain RoPE); got rope_parameters={params}")
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if theta is None:
        raise ValueError("the checkpoint's config has no rope_theta")
    return float(theta)


def config_from_llama(hf_config) -> ModelConfig:
    """ModelConfig of the softmax Transformer equal to a Llama-family HF config."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not a supported Llama-family causal LM; supported: {list(SUPPORTED_MODEL_TYPES)}"
        )
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_config.hidden_act!r} is not supported (SwiGLU with silu only)")
    if getattr(hf_config, "mlp_bias", False):
        raise ValueError("mlp_bias=True is not supported (our SwiGLU has no biases)")
    window = getattr(hf_config, "sliding_window", None)
    uses_window = getattr(hf_config, "use_sliding_window", model_type == "mistral")
    if window is not None and uses_window:
        raise ValueError(f"sliding-window attention (sliding_window={window}) is not supported by from_llama")
    qkv_bias = bool(getattr(hf_config, "attention_bias", False)) or model_type == "qwen2"
    o_bias = bool(getattr(hf_config, "attention_bias", False)) and model_type != "qwen2"
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    options = {"attention": {"qkv_bias": qkv_bias, "o_bias": o_bias}} if (qkv_bias or o_bias) else {}
    return ModelConfig(
        vocab_size=hf_config.vocab_size,
        d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers,
        n_heads=hf_config.num_attention_heads,
        n_kv_heads=getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads,
        head_dim_k=head_dim,
        head_dim_v=head_dim,
        mixer="attention",
        mlp="swiglu",
        mlp_hidden_dim=hf_config.intermediate_size,
        norm="rmsnorm",
        norm_eps=hf_config.rms_norm_eps,
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        max_seq_len=getattr(hf_config, "max_position_embeddings", 2048),
        rope_theta=_rope_theta(hf_config),
        mixer_options=options,
        name=f"from-{model_type}",
    )


def _layer_map(i: int) -> dict[str, str]:
    """Our parameter name -> HF parameter name, for block i."""
    ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
    names = {
        "mixer_norm.weight": "input_layernorm.weight",
        "mlp_norm.weight": "post_attention_layernorm.weight",
        "mlp.gate_proj.weight": "mlp.gate_proj.weight",
        "mlp.up_proj.weight": "mlp.up_proj.weight",
        "mlp.down_proj.weight": "mlp.down_proj.weight",
    }
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        for kind in ("weight", "bias"):
            names[f"mixer.{proj}.{kind}"] = f"self_attn.{proj}.{kind}"
    return {ours + a: theirs + b for a, b in names.items()}


def _name_map(cfg: ModelConfig) -> dict[str, str]:
    mapping = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        mapping["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        mapping.update(_layer_map(i))
    return mapping


def _load_hf(path_or_model, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

    from seqmodels.hf import dtype_kwargs

    if isinstance(path_or_model, PreTrainedModel):
        return path_or_model
    path = Path(path_or_model)
    if not path.is_dir():
        raise ValueError(f"teacher checkpoint {path} is not a directory (expected a save_pretrained folder)")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    hf_config = AutoConfig.from_pretrained(path)
    config_from_llama(hf_config)  # refuse unsupported checkpoints before loading weights
    try:
        return AutoModelForCausalLM.from_pretrained(path, **dtype_kwargs(dtype))
    except OSError as error:
        raise ValueError(f"{path}: could not load the model weights ({error})") from error


def from_llama(path_or_model, dtype: torch.dtype | None = None) -> SeqLM:
    """A SeqLM (mixer: attention) with the weights of a Llama-family HF causal LM."""
    hf_model = _load_hf(path_or_model, dtype)
    cfg = config_from_llama(hf_model.config)
    theirs = hf_model.state_dict()
    model = SeqLM(cfg).to(dtype or next(hf_model.parameters()).dtype)
    ours = model.state_dict()
    mapping = _name_map(cfg)
    converted = {}
    for name in ours:
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        source = mapping.get(name)
        if source not in theirs:
            raise ValueError(f"the checkpoint has no weight {source!r} for our {name!r}")
        converted[name] = theirs[source]
    model.load_state_dict(converted, strict=not cfg.tie_embeddings)
    return model


def to_llama(model: SeqLM, path: str | os.PathLike | None = None):
    """A LlamaForCausalLM with this softmax Transformer's weights (saved to `path` if given)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.cfg
    if cfg.layers is not None or cfg.mixer != "attention" or cfg.mlp != "swiglu" or cfg.norm != "rmsnorm":
        raise ValueError("to_llama needs a pure softmax Transformer (mixer: attention, mlp: swiglu, norm: rmsnorm)")
    options = cfg.options_for("attention")
    if options.qkv_bias != options.o_bias:
        raise ValueError("Llama has biases on all of q/k/v/o or none; this model has qkv_bias != o_bias (Qwen2 style)")
    hf_config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.dk,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=options.qkv_bias,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    dtype = next(model.parameters()).dtype
    hf_model = LlamaForCausalLM(hf_config).to(dtype)
    mapping = _name_map(cfg)
    ours = model.state_dict()
    state = {mapping[name]: tensor for name, tensor in ours.items() if name in mapping}
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings:
        hf_model.tie_weights()
    if path is not None:
        hf_model.save_pretrained(path)
    return hf_model
