"""`--model seqmodels`: lm-eval's Hugging Face LM (HFLM) with the defaults a seqmodels export needs.

Differences from `--model hf`, each applied only when the user did not pass the argument:
- prefix_token_id: the EOS id (the config's eos_token_id, else the tokenizer's). Packed training
  data is documents joined by EOS (seqmodels.data.pack), so a document starts after EOS; the
  tokenizer's BOS never occurs in training, and `--model hf` would put it before every text
  scored from its first token (loglikelihood_rolling, empty contexts).
- add_bos_token: False (training text is tokenized without special tokens).
- max_length: the config's max_position_embeddings, else the model's max_seq_len, instead of
  lm-eval's 2,048 for configs without a length field. Longer inputs are cut into windows of this
  length (loglikelihood_rolling) or left-truncated (lm-eval warns); pass max_length=N to run
  recurrent families past their training context.
Everything else (batching, device, dtype=float64, ...) is HFLM's, with the same model_args.
"""
from __future__ import annotations

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM


def document_start_token(config, tokenizer) -> int:
    """The token a training document follows: EOS (config first, then the tokenizer)."""
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the model's config and tokenizer define no eos_token_id; pass prefix_token_id=<id> in --model_args")
    return int(eos)


def context_length(config) -> int:
    """The model's context: max_position_embeddings when the config has it, else max_seq_len."""
    length = getattr(config, "max_position_embeddings", None)
    if length is None:
        length = config.to_model_config().max_seq_len
    return int(length)


@register_model("seqmodels")
class SeqModelsLM(HFLM):
    def __init__(self, pretrained, max_length=None, prefix_token_id=None, add_bos_token=False, **kwargs):
        kwargs.setdefault("backend", "causal")
        super().__init__(pretrained=pretrained, max_length=max_length, prefix_token_id=prefix_token_id,
                         add_bos_token=add_bos_token, **kwargs)
        model_type = getattr(self.config, "model_type", None)
        if model_type != "seqmodels":
            raise ValueError(f"--model seqmodels expects a seqmodels export (config model_type 'seqmodels'), "
                             f"got {model_type!r}; use --model hf for other models")
        if prefix_token_id is None:
            self.custom_prefix_token_id = document_start_token(self.config, self.tokenizer)
        if max_length is None:
            self._max_length = context_length(self.config)
