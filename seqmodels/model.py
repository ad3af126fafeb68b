"""SeqLM: embedding -> blocks -> final norm -> head (docs/architecture.md §4.2).

    forward(input_ids, labels=None, state=None, return_state=False, attention_mask=None)
                                                                       parallel/chunked form
        (or inputs_embeds [B, T, d] instead of input_ids; output_hidden_states: embeddings + each block)
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
`set_activation_checkpointing(True)` recomputes each block's activations in the backward pass
instead of keeping them (training only): same loss and gradients, less memory.
"""
from __future__ import annotations

import math
from functools import partial
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

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
    hidden_states: Optional[tuple] = None  # embeddings, then each block's output; the last after the final norm


RESIDUAL_OUTPUT_WEIGHTS = ("o_proj.weight", "out_proj.weight", "down_proj.weight")


def init_like_seqlm(module: nn.Module, cfg: ModelConfig) -> None:
    """SeqLM's init of `module` and everything in it (a whole SeqLM, one Block, an embedding): GPT-2
    style normal(0, init_std) for linear and embedding weights, zero biases, residual output projections
    normal(0, init_std / sqrt(2 n_layers)), then each block mixer's own paper-specific `init_weights`."""
    std = cfg.init_std
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, 0.0, std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, 0.0, std)
    residual_std = std / math.sqrt(2 * cfg.n_layers)
    for name, param in module.named_parameters():
        if name.endswith(RESIDUAL_OUTPUT_WEIGHTS):
            nn.init.normal_(param, 0.0, residual_std)
    for sub in module.modules():
        hook = getattr(sub.mixer, "init_weights", None) if isinstance(sub, Block) else None
        if hook is not None:
            hook()


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
        self.set_activation_checkpointing(False)
        if cfg.head == "lm" and not self.causal:
            bidirectional = sorted({b.mixer.mixer_name for b in self.blocks if not b.mixer.causal})
            raise ValueError(
                f"mixer(s) {bidirectional} are bidirectional: use head: classify, not a language-model head"
            )
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """GPT-2 style init, then each mixer's paper-specific init (`init_like_seqlm`)."""
        init_like_seqlm(self, self.cfg)

    def set_activation_checkpointing(self, enabled: bool, every_n_layers: int = 1, checkpoint_fn=None) -> None:
        """Recompute blocks 0, n, 2n, ... in the backward pass instead of keeping their activations (only
        while training with autograd on). `checkpoint_fn(block, *args)` defaults to torch's non-reentrant
        checkpoint (Hugging Face's `gradient_checkpointing_enable` passes its own)."""
        if not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ValueError(f"every_n_layers must be a positive integer, got {every_n_layers!r}")
        self.activation_checkpointing = bool(enabled)
        self._checkpoint_every = every_n_layers
        self._checkpoint_fn = checkpoint_fn or partial(checkpoint, use_reentrant=False)

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
                      attention_mask: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                      output_hidden_states: bool = False):
        """(final-norm hidden states [B, T, d], new state or None, per-layer hidden states or None).
        `inputs_embeds` [B, T, d_model] replaces `embed(input_ids)` (pass input_ids=None); `attention_mask` as
        in forward (honoured by every mixer)."""
        x = self._embed_inputs(input_ids, inputs_embeds)
        if state is not None and len(state.layers) != len(self.blocks):
            raise ValueError(f"state has {len(state.layers)} layers, the model has {len(self.blocks)}")
        token_grid = x[..., 0]  # [B, T]: the shape the mask must have
        pad_mask = check_model_pad_mask(attention_mask, token_grid, 0 if state is None else state.seen_tokens, return_state)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        per_layer = [x] if output_hidden_states else None
        new_layers = []
        for i, block in enumerate(self.blocks):
            layer_state = None if state is None else state.layers[i]
            if recompute and i % self._checkpoint_every == 0:
                x, layer_state = self._checkpoint_fn(block, x, layer_state, return_state, pad_mask)
            else:
                x, layer_state = block(x, state=layer_state, return_state=return_state, pad_mask=pad_mask)
            new_layers.append(layer_state)
            if per_layer is not None:
                per_layer.append(x)
        seen = (state.seen_tokens if state is not None else 0) + x.shape[1]
        h = self.norm(x)
        if per_layer is not None:
            per_layer[-1] = h  # Llama's convention: the last entry is the final-norm output
        return h, (ModelState(new_layers, seen) if return_state else None), (tuple(per_layer) if per_layer else None)

    def _embed_inputs(self, input_ids, inputs_embeds) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] or inputs_embeds [B, T, d_model]")
        if inputs_embeds is None:
            self._check_ids(input_ids, "input_ids", 2)
            return self.embed(input_ids)
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.cfg.d_model:
            shape = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, torch.Tensor) else type(inputs_embeds).__name__
            raise ValueError(f"inputs_embeds has shape {shape}; expected [batch, time, d_model={self.cfg.d_model}]")
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        state: ModelState | None = None,
        return_state: bool = False,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> SeqLMOutput:
        lm_mask = attention_mask if self.cfg.head == "lm" else None  # classify: the mask picks the pooled tokens
        h, new_state, per_layer = self.hidden_states(input_ids, state, return_state, lm_mask, inputs_embeds,
                                                     output_hidden_states)
        if self.cfg.head == "classify":
            logits = self.classifier(self._pool(h, attention_mask))
            loss = None
            if labels is not None:
                if labels.shape != logits.shape[:1]:
                    raise ValueError(f"labels has shape {tuple(labels.shape)}; expected class ids [batch]={logits.shape[0]}")
                loss = F.cross_entropy(upcast(logits), labels)
            return SeqLMOutput(logits, loss, new_state, per_layer)
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            if labels.shape != h.shape[:2]:
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)}; expected {tuple(h.shape[:2])} "
                    "(aligned with input_ids; -100 where there is no target)"
                )
            loss = F.cross_entropy(upcast(logits).flatten(0, 1), labels.flatten(), ignore_index=-100)
        return SeqLMOutput(logits, loss, new_state, per_layer)

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


def enable_activation_checkpointing(model: nn.Module) -> None:
    """train.activation_checkpointing: every SeqLM inside `model` that trains recomputes its blocks."""
    trained = [m for m in model.modules() if isinstance(m, SeqLM) and any(p.requires_grad for p in m.parameters())]
    if not trained:
        raise ValueError(f"train.activation_checkpointing is true but {type(model).__name__} holds no trained SeqLM; "
                         "set it to false for this model")
    for seqlm in trained:
        seqlm.set_activation_checkpointing(True)


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
