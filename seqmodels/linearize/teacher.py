"""The softmax teacher of a linearization: a Llama-family HF directory loaded as a SeqLM, and its tokenizer.

docs/architecture.md §7 (recipes/linearize.py). Loading and the model checks are `seqmodels.llama.from_llama`'s
(not a causal LM / unsupported attention / missing files -> ValueError); here: every block's
mixer must be softmax attention (something `from_attention` can read), and the tokenizer must
fit the teacher's vocabulary.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from seqmodels.layers.attention import SoftmaxAttention
from seqmodels.llama import from_llama
from seqmodels.model import SeqLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_teacher(path: str | os.PathLike, dtype: Optional[torch.dtype] = None) -> SeqLM:
    """A frozen, eval-mode SeqLM (mixer: attention) with the weights of the HF causal LM at `path`."""
    if not Path(path).exists():
        raise ValueError(f"teacher {path} does not exist (expected a Llama-family save_pretrained directory)")
    teacher = from_llama(path, dtype=dtype)
    check_teacher(teacher)
    teacher.eval().requires_grad_(False)
    return teacher


def check_teacher(teacher: SeqLM) -> None:
    """Every block of `teacher` must hold a SoftmaxAttention mixer (the input of `from_attention`)."""
    if not isinstance(teacher, SeqLM):
        raise ValueError(f"the teacher must be a SeqLM, got {type(teacher).__name__}")
    for i, block in enumerate(teacher.blocks):
        if not isinstance(block.mixer, SoftmaxAttention):
            raise ValueError(f"teacher block {i} has mixer {type(block.mixer).__name__}; linearization needs "
                             "softmax attention (mixer 'attention') in every block")


def teacher_tokenizer_dir(path: str | os.PathLike) -> Optional[Path]:
    """`path` when it holds tokenizer files (tokenizer.json or tokenizer_config.json), else None."""
    path = Path(path)
    return path if any((path / name).is_file() for name in TOKENIZER_FILES) else None


def check_tokenizer(tokenizer, vocab_size: int) -> None:
    """A tokenizer whose ids do not all fit the teacher's embedding is an error."""
    n = len(tokenizer)
    if n > vocab_size:
        raise ValueError(f"tokenizer has {n} tokens but the teacher's vocab_size is {vocab_size}: "
                         "they do not belong together (use the teacher's own tokenizer)")
