"""Hugging Face wrappers (docs/architecture.md §4.4): `SeqModelsConfig`, `SeqModelsModel` (the trunk:
embedding, blocks, final norm) and `SeqModelsForCausalLM` (trunk + LM head).

Registered with AutoConfig / AutoModel / AutoModelForCausalLM when `seqmodels` is imported, so a
`save_pretrained` directory loads with `AutoModelForCausalLM.from_pretrained(path)` (or
`AutoModel` for the trunk) and no `trust_remote_code`.

- Generation: the model's recurrent `ModelState` is the cache. Transformers 4.x hands it around as
  `past_key_values`, 5.x as `cache`; both (and `cache_params`) are accepted. One forward over the
  prompt, then one token per call; beam search reorders the state (`ModelState.reorder_cache`).
  `use_cache` defaults to False in a plain forward (no state is built unless asked).
- The config carries the fields other tools read (`hidden_size`, `num_hidden_layers`,
  `num_attention_heads`, `num_key_value_heads`, `max_position_embeddings`, `vocab_size`,
  `tie_word_embeddings`, `initializer_range`): views of `model_config`, which stays the one source;
  setting one (e.g. `num_hidden_layers=3` in `from_pretrained`) edits `model_config`.
- `labels` follow HF's convention: labels = input_ids, shifted inside `forward`.
"""
from __future__ import annotations

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import modeling_utils as hf_modeling_utils
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from seqmodels.block import Block
from seqmodels.config import ModelConfig
from seqmodels.model import SeqLM, init_like_seqlm, upcast
from seqmodels.modules.norm import RMSNorm, build_norm
from seqmodels.state import ModelState

# The output field (and generate's keyword) holding the cache: `cache` in transformers 5.x,
# `past_key_values` before.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# from_pretrained's dtype keyword: `dtype` since transformers 4.56, `torch_dtype` before.
DTYPE_KEYWORD = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def dtype_kwargs(dtype) -> dict:
    """`from_pretrained(path, **dtype_kwargs(torch.float32))` on transformers 4.x and 5.x."""
    return {DTYPE_KEYWORD: dtype}

# Standard HF config name -> ModelConfig field.
STANDARD_FIELDS = {
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "max_position_embeddings": "max_seq_len",
    "vocab_size": "vocab_size",
    "tie_word_embeddings": "tie_embeddings",
    "initializer_range": "init_std",
}


def _standard_field(hf_name: str, field: str):
    def get(self):
        if field == "n_kv_heads":
            return self.to_model_config().kv_heads
        return self.model_config[field]

    def set_(self, value):
        if get(self) != value:
            self.model_config = ModelConfig.from_dict({**self.model_config, field: value}).to_dict()

    return property(get, set_, doc=f"model_config['{field}']")


class SeqModelsConfig(PretrainedConfig):
    model_type = "seqmodels"

    def __init__(self, model_config: dict | ModelConfig | None = None, use_cache: bool = True, **kwargs):
        if isinstance(model_config, ModelConfig):
            model_config = model_config.to_dict()
        self.model_config = ModelConfig.from_dict(dict(model_config or ModelConfig().to_dict())).to_dict()
        self.use_cache = use_cache
        for hf_name in STANDARD_FIELDS:  # HF's own defaults must not overwrite model_config's values
            kwargs.setdefault(hf_name, getattr(self, hf_name))
        super().__init__(**kwargs)

    def to_model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model_config)

    def _standard_values(self) -> dict:
        return {name: getattr(self, name) for name in STANDARD_FIELDS}

    def to_dict(self) -> dict:
        return {**super().to_dict(), **self._standard_values()}

    def to_diff_dict(self) -> dict:  # config.json always holds the standard fields
        return {**super().to_diff_dict(), **self._standard_values()}


for _name, _field in STANDARD_FIELDS.items():
    setattr(SeqModelsConfig, _name, _standard_field(_name, _field))


def _state_argument(*candidates) -> ModelState | None:
    """The one decoding state among the names transformers uses for the cache."""
    given = [c for c in candidates if c is not None]
    if len(given) > 1:
        raise ValueError("pass the decoding state once (cache, past_key_values or cache_params), not several times")
    if given and not isinstance(given[0], ModelState):
        raise ValueError(f"the cache must be a seqmodels ModelState, got {type(given[0]).__name__}")
    return given[0] if given else None


class SeqModelsPreTrainedModel(PreTrainedModel):
    """What the trunk and the LM share: config, init of new modules, checkpointing, embeddings."""

    config_class = SeqModelsConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _is_stateful = True

    def _build(self, config: SeqModelsConfig) -> SeqLM:
        model = SeqLM(config.to_model_config())
        if not getattr(hf_modeling_utils, "_init_weights", True):
            return model  # 4.x from_pretrained builds under no_init_weights (torch.nn.init disabled): HF then loads
            # or initializes each parameter through _init_weights
        for param in model.parameters():  # SeqLM initialized them: post_init must not draw them again
            if param.device.type != "meta":  # (5.x from_pretrained builds on meta: HF then loads or initializes)
                param._is_hf_initialized = True
        return model

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is the model's own recurrent state, not a DynamicCache

    # ------------------------------------------------------------------ init
    def _init_weights(self, module: nn.Module) -> None:
        """Initialize the parameters of `module` that nothing set yet (a layer added by an edited config,
        rows added by `resize_token_embeddings`) as SeqLM does: a block's values come from a fresh Block
        of that layer initialized by `init_like_seqlm` (its mixer's own init included), the embedding,
        head and final norm's from fresh ones. Loaded or already-initialized parameters (HF marks them
        `_is_hf_initialized`) are left alone."""
        if module is self:
            self._fresh_blocks = {}  # the root comes last in HF's init pass
            return
        new = [(name, p) for name, p in module.named_parameters(recurse=False)
               if not getattr(p, "_is_hf_initialized", False)]
        if not new:
            return
        source = self._fresh_source(module)
        with torch.no_grad():
            for name, param in new:
                param.copy_(getattr(source, name))

    def _fresh_source(self, module: nn.Module) -> nn.Module:
        cfg = self.model.cfg
        path = next((name for name, sub in self.model.named_modules() if sub is module), None)
        if path is not None and path.startswith("blocks."):
            _, layer, *rest = path.split(".")
            cache = self.__dict__.setdefault("_fresh_blocks", {})
            if int(layer) not in cache:
                with torch.device("cpu"):
                    block = Block(cfg, int(layer))
                init_like_seqlm(block, cfg)
                cache[int(layer)] = block
            return cache[int(layer)].get_submodule(".".join(rest))
        with torch.device("cpu"):
            if isinstance(module, nn.Linear):
                fresh = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            elif isinstance(module, nn.Embedding):
                fresh = nn.Embedding(module.num_embeddings, module.embedding_dim)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                fresh = build_norm(cfg, module.weight.shape[0])
            else:
                raise ValueError(f"no SeqLM init for a new {type(module).__name__} outside the blocks ({path})")
        init_like_seqlm(fresh, cfg)
        return fresh

    # --------------------------------------------------------- checkpointing
    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, every_n_layers: int = 1):
        """HF's `gradient_checkpointing_enable()` / `activation_checkpointing_enable()` land here."""
        self.model.set_activation_checkpointing(enable, every_n_layers, gradient_checkpointing_func)

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.model.activation_checkpointing

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.model.activation_checkpointing

    # ------------------------------------------------------------ embeddings
    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=False):
        """HF's resize, then the model's own config follows the new vocabulary. New rows are initialized as
        SeqLM initializes its embeddings (`_init_weights`: normal(0, init_std)); `mean_resizing=True` (HF's
        default) draws them near the old rows' mean instead."""
        embed = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing=mean_resizing)
        vocab = embed.weight.shape[0]
        self.config.vocab_size = vocab  # also model_config['vocab_size']
        self.model.cfg.vocab_size = vocab  # the ModelConfig SeqLM and its layers share
        return embed

    # ----------------------------------------------------------------- trunk
    def _trunk(self, input_ids, attention_mask, inputs_embeds, state, use_cache, output_hidden_states, **kwargs):
        """SeqLM's trunk (hidden states, new state, per-layer states) for one HF forward call."""
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions is not available: most families have no attention weights")
        unknown = sorted(k for k, v in kwargs.items() if k not in ("cache_position", "output_attentions") and v is not None)
        if unknown:
            raise ValueError(f"unexpected arguments {unknown}; SeqModels models take input_ids or inputs_embeds, "
                             "attention_mask, the cache, use_cache, labels and output_hidden_states")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if attention_mask is not None and (input_ids is not None or inputs_embeds is not None):
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]  # HF passes the whole
            # history's mask: keep this call's columns
            attention_mask = attention_mask[:, -length:]
        return self.model.hidden_states(input_ids, state=state, return_state=bool(use_cache), attention_mask=attention_mask,
                                        inputs_embeds=inputs_embeds, output_hidden_states=bool(output_hidden_states))


class SeqModelsModel(SeqModelsPreTrainedModel):
    """The trunk without the head: returns BaseModelOutputWithPast (last_hidden_state after the final norm)."""

    def __init__(self, config: SeqModelsConfig):
        super().__init__(config)
        self.model = self._build(config)
        if config.to_model_config().head == "lm":
            self.model.lm_head = None  # the trunk has no head
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, past_key_values=None,
                cache_params=None, use_cache=None, output_hidden_states=None, return_dict=None, **kwargs):
        state = _state_argument(cache, past_key_values, cache_params)
        h, new_state, per_layer = self._trunk(input_ids, attention_mask, inputs_embeds, state, use_cache,
                                              output_hidden_states, **kwargs)
        out = BaseModelOutputWithPast(last_hidden_state=h, hidden_states=per_layer, **{CACHE_FIELD: new_state})
        return out if return_dict is not False else out.to_tuple()


class SeqModelsForCausalLM(SeqModelsPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}

    def __init__(self, config: SeqModelsConfig):
        super().__init__(config)
        self.model = self._build(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.model.lm_head

    def set_output_embeddings(self, value):
        self.model.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None, cache=None,
                past_key_values=None, cache_params=None, use_cache=None, output_hidden_states=None,
                return_dict=None, num_items_in_batch=None, **kwargs) -> CausalLMOutputWithPast:
        state = _state_argument(cache, past_key_values, cache_params)
        if (state is not None and use_cache and input_ids is not None and input_ids.shape[1] == 1 and labels is None
                and not (output_hidden_states or kwargs or self.config.output_hidden_states)
                and (attention_mask is None or bool(attention_mask[:, -1].all()))):
            logits, new_state = self.model.step(input_ids[:, 0], state)  # a decoding step: the recurrent form
            out = CausalLMOutputWithPast(logits=logits[:, None], **{CACHE_FIELD: new_state})
            return out if return_dict is not False else out.to_tuple()
        h, new_state, per_layer = self._trunk(input_ids, attention_mask, inputs_embeds, state, use_cache,
                                              output_hidden_states, **kwargs)
        logits = self.model.lm_head(h)
        loss = None
        if labels is not None:
            shifted = torch.full_like(labels, -100)
            shifted[:, :-1] = labels[:, 1:]
            reduction = "mean" if num_items_in_batch is None else "sum"
            loss = nn.functional.cross_entropy(upcast(logits).flatten(0, 1), shifted.flatten(), ignore_index=-100,
                                               reduction=reduction)
            if num_items_in_batch is not None:  # HF Trainer's gradient accumulation: tokens of all micro-batches
                loss = loss / num_items_in_batch
        out = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=per_layer, **{CACHE_FIELD: new_state})
        return out if return_dict is not False else out.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, cache_params=None,
                                      attention_mask=None, inputs_embeds=None, use_cache=True,
                                      next_sequence_length=None, cache_position=None, **kwargs):
        """First call: the whole prompt (input_ids, or inputs_embeds). Then only the tokens the state has
        not seen: one per call (5.x says how many in next_sequence_length, 4.x in cache_position).
        The attention mask travels whole (HF extends it by one column per token); forward keeps the
        columns of the tokens it gets."""
        state = _state_argument(cache, past_key_values, cache_params)
        if state is None:
            inputs = {"input_ids": None, "inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": input_ids}
        else:
            if next_sequence_length is not None:
                new = next_sequence_length
            elif cache_position is not None:
                new = cache_position.shape[0]
            else:
                new = input_ids.shape[1] - state.seen_tokens
            inputs = {"input_ids": input_ids[:, -new:]}
        inputs.update({CACHE_FIELD: state, "attention_mask": attention_mask, "use_cache": use_cache})
        if kwargs.get("output_hidden_states"):
            inputs["output_hidden_states"] = True
        return inputs


AutoConfig.register(SeqModelsConfig.model_type, SeqModelsConfig, exist_ok=True)
AutoModel.register(SeqModelsConfig, SeqModelsModel, exist_ok=True)
AutoModelForCausalLM.register(SeqModelsConfig, SeqModelsForCausalLM, exist_ok=True)
