"""Hugging Face wrappers: `SeqModelsConfig` / `SeqModelsForCausalLM` (docs/architecture.md §4.4).

Registered with AutoConfig / AutoModelForCausalLM when `seqmodels` is imported, so a
`save_pretrained` directory loads with `AutoModelForCausalLM.from_pretrained(path)` and no
`trust_remote_code`. HF `generate` works: the recurrent `ModelState` travels as
`past_key_values` (one prefill, then one token per call).
HF's label convention holds here: `labels` = input_ids, shifted inside `forward`.
"""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from seqmodels.config import ModelConfig
from seqmodels.model import SeqLM, upcast
from seqmodels.state import ModelState


class SeqModelsConfig(PretrainedConfig):
    model_type = "seqmodels"

    def __init__(self, model_config: dict | ModelConfig | None = None, **kwargs):
        if isinstance(model_config, ModelConfig):
            model_config = model_config.to_dict()
        self.model_config = dict(model_config or ModelConfig().to_dict())
        resolved = self.to_model_config()  # validates early, with the config's own errors
        kwargs.setdefault("tie_word_embeddings", resolved.tie_embeddings)
        kwargs.setdefault("vocab_size", resolved.vocab_size)
        super().__init__(**kwargs)

    def to_model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model_config)


class SeqModelsForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = SeqModelsConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}
    _is_stateful = True
    supports_gradient_checkpointing = False

    def __init__(self, config: SeqModelsConfig):
        super().__init__(config)
        self.model = SeqLM(config.to_model_config())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our cache is the model's own recurrent state, not a DynamicCache

    def _init_weights(self, module):
        pass  # SeqLM initializes itself (and each mixer's paper-specific init) at construction

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: ModelState | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if past_key_values is not None and not isinstance(past_key_values, ModelState):
            raise ValueError(f"past_key_values must be a seqmodels ModelState, got {type(past_key_values).__name__}")
        if attention_mask is not None:  # HF may pass the whole history's mask: keep this call's columns
            attention_mask = attention_mask[:, -input_ids.shape[1]:]
        out = self.model(input_ids, state=past_key_values, return_state=bool(use_cache), attention_mask=attention_mask)
        loss = None
        if labels is not None:
            shifted = torch.full_like(labels, -100)
            shifted[:, :-1] = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(upcast(out.logits).flatten(0, 1), shifted.flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=out.logits, past_key_values=out.state)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, use_cache=True, **kwargs):
        if past_key_values is not None:
            input_ids = input_ids[:, past_key_values.seen_tokens :]
        return {"input_ids": input_ids, "past_key_values": past_key_values, "use_cache": use_cache,
                "attention_mask": attention_mask if past_key_values is None else None}  # the state keeps the pads


AutoConfig.register(SeqModelsConfig.model_type, SeqModelsConfig, exist_ok=True)
AutoModelForCausalLM.register(SeqModelsConfig, SeqModelsForCausalLM, exist_ok=True)
