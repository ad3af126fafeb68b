"""SeqLM: embedding -> blocks -> final norm -> head (docs/architecture.md §4.2).

    forward(input_ids, labels=None, state=None, return_state=False, attention_mask=None)
                                                                       parallel/chunked form
    init_state(batch_size)                                             empty decoding state
    step(token_ids, state)                                             one token per sequence
    generate(input_ids, max_new_tokens, ...)                           chunked prefill, then step

`labels` are aligned with `input_ids`: labels[:, t] is the target of logits[:, t] (the data
loaders and MQAR emit them that way); the loss is the mean cross-entropy over labels != -100.
`attention_mask` [B, T] (1 = real token, 0 = pad; left and/or right padding) reaches every mixer
as `pad_mask`: with `head: lm` a padded row's logits on its real tokens equal the unpadded
sequence's, and decoding continues a left-padded prefill exactly (docs/architecture.md §4.1).
With `head: classify` the mask selects the pooled tokens only and the mixers see every token
(LRA's convention: pads are part of the input). With `head: classify` the model pools the final hidden states (mean over non-pad tokens, or
the last one) into `num_classes` logits and `labels` are class ids [B].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.block import Block
from seqmodels.config import ModelConfig
from seqmodels.modules.norm import build_norm
from seqmodels.modules.padding import check_model_pad_mask
from seqmodels.state import ModelState


@dataclass
class SeqLMOutput:
    logits: torch.Tensor
    loss: Optional[torch.Tensor] = None
    state: Optional[ModelState] = None


class SeqLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"SeqLM needs a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = build_norm(cfg)
        if cfg.head == "lm":
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            if cfg.tie_embeddings:
                self.lm_head.weight = self.embed.weight
        else:
            self.classifier = nn.Linear(cfg.d_model, cfg.num_classes)
        self.causal = all(b.mixer.causal for b in self.blocks)
        if cfg.head == "lm" and not self.causal:
            bidirectional = sorted({b.mixer.mixer_name for b in self.blocks if not b.mixer.causal})
            raise ValueError(
                f"mixer(s) {bidirectional} are bidirectional: use head: classify, not a language-model head"
            )
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """GPT-2 style init (normal(0, init_std), residual outputs scaled by 1/sqrt(2 n_layers)),
        then each mixer's own paper-specific init (`Mixer.init_weights`)."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(("o_proj.weight", "out_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, 0.0, residual_std)
        for block in self.blocks:
            hook = getattr(block.mixer, "init_weights", None)
            if hook is not None:
                hook()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --------------------------------------------------------------- checks
    def _check_ids(self, input_ids: torch.Tensor, name: str, rank: int) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != rank:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            want = "[batch, time]" if rank == 2 else "[batch]"
            raise ValueError(f"{name} has shape {shape}; expected {want}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must hold integer token ids, got dtype {input_ids.dtype}")
        if not input_ids.numel():
            return
        low, high = torch.aminmax(input_ids)
        in_range = (low >= 0) & (high < self.cfg.vocab_size)
        disagree = f"but vocab_size is {self.cfg.vocab_size}: the tokenizer and the model config disagree"
        try:  # on CUDA a device-side assert (no host read, fails at a later sync); on CPU it raises here
            torch._assert_async(in_range, f"{name} has token ids outside [0, {self.cfg.vocab_size}) {disagree}")
        except RuntimeError:
            if input_ids.is_cuda:  # an earlier kernel's error surfacing here
                raise
            raise ValueError(f"{name} has token ids in [{int(low)}, {int(high)}] {disagree}") from None

    # -------------------------------------------------------------- forward
    def init_state(self, batch_size: int, device=None, dtype=None) -> ModelState:
        if not self.causal:
            raise ValueError("a bidirectional model has no recurrent decoding state")
        param = self.embed.weight
        device = device or param.device
        dtype = dtype or param.dtype
        return ModelState([b.mixer.init_state(batch_size, device, dtype) for b in self.blocks], 0)

    def hidden_states(self, input_ids, state: ModelState | None = None, return_state: bool = False,
                      attention_mask: torch.Tensor | None = None):
        """Final-norm hidden states [B, T, d]; `attention_mask` as in forward (honoured by every mixer)."""
        self._check_ids(input_ids, "input_ids", 2)
        if state is not None and len(state.layers) != len(self.blocks):
            raise ValueError(f"state has {len(state.layers)} layers, the model has {len(self.blocks)}")
        pad_mask = check_model_pad_mask(attention_mask, input_ids, 0 if state is None else state.seen_tokens, return_state)
        x = self.embed(input_ids)
        new_layers = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, state=None if state is None else state.layers[i], return_state=return_state,
                                   pad_mask=pad_mask)
            new_layers.append(layer_state)
        seen = (state.seen_tokens if state is not None else 0) + input_ids.shape[1]
        return self.norm(x), (ModelState(new_layers, seen) if return_state else None)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        state: ModelState | None = None,
        return_state: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> SeqLMOutput:
        if self.cfg.head == "classify":  # the mask picks the pooled tokens (module docstring)
            h, new_state = self.hidden_states(input_ids, state, return_state)
            logits = self.classifier(self._pool(h, attention_mask))
            loss = None
            if labels is not None:
                if labels.shape != logits.shape[:1]:
                    raise ValueError(f"labels has shape {tuple(labels.shape)}; expected class ids [batch]={logits.shape[0]}")
                loss = F.cross_entropy(upcast(logits), labels)
            return SeqLMOutput(logits, loss, new_state)
        h, new_state = self.hidden_states(input_ids, state, return_state, attention_mask)
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)}; expected {tuple(input_ids.shape)} "
                    "(aligned with input_ids; -100 where there is no target)"
                )
            loss = F.cross_entropy(upcast(logits).flatten(0, 1), labels.flatten(), ignore_index=-100)
        return SeqLMOutput(logits, loss, new_state)

    def _pool(self, h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        if attention_mask.shape != h.shape[:2]:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected {tuple(h.shape[:2])}")
        mask = attention_mask.to(h.dtype)
        if self.cfg.pool == "mean":
            return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        last = mask.sum(1).long().clamp_min(1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]

    def step(self, token_ids: torch.Tensor, state: ModelState):
        """One token per sequence: token_ids [B] -> (logits [B, V], new state)."""
        if self.cfg.head != "lm":
            raise ValueError("step() needs a language-model head (head: lm)")
        self._check_ids(token_ids, "token_ids", 1)
        x = self.embed(token_ids)
        new_layers = []
        for block, layer_state in zip(self.blocks, state.layers):
            x, layer_state = block.step(x, layer_state)
            new_layers.append(layer_state)
        return self.lm_head(self.norm(x)), ModelState(new_layers, state.seen_tokens + 1)

    # ------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Chunked prefill of the prompt (returning states), then one `step` per new token.

        temperature 0 is greedy decoding. Returns prompt + generated ids [B, T + new]; after
        `eos_token_id` a sequence keeps emitting eos. Prompts of different lengths are left-padded
        with `attention_mask` (0 at pads); each row then decodes as it would alone.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        out = self.forward(input_ids, return_state=True, attention_mask=attention_mask)
        logits, state = out.logits[:, -1], out.state
        generated = []
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                token = token.masked_fill(finished, eos_token_id)
                finished |= token == eos_token_id
            generated.append(token)
            if eos_token_id is not None and bool(finished.all()):
                generated.extend([token] * (max_new_tokens - i - 1))
                break
            if i + 1 < max_new_tokens:
                logits, state = self.step(token, state)
        if not generated:
            return input_ids
        return torch.cat([input_ids, torch.stack(generated, dim=1)], dim=1)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> float32 for losses and sampling; float32/float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def sample_next(logits, temperature: float = 1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """Sample one token per row of logits [B, V]; temperature 0 = argmax."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = upcast(logits) / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
