"""Student mixers built from the teacher's attention layers, and the student model around them.

docs/architecture.md §5.10 / §7: a student mixer class is any registered mixer that defines
`from_attention(attn, **options)` (Lizard, LoLCATs). It copies the teacher's q/k/v/o; the
*new* parameters (feature maps, gates, meta logits, mixing factors) are the ones stage 1
trains. The student model is the teacher with each block's mixer replaced.
"""
from __future__ import annotations

import copy
import dataclasses

from torch import nn

from seqmodels.config import ModelConfig
from seqmodels.layers.registry import get_mixer
from seqmodels.model import SeqLM

COPIED_FROM_TEACHER = ("q_proj", "k_proj", "v_proj", "o_proj")


def student_mixer_class(name: str):
    """The registered mixer `name`; it must define `from_attention`."""
    cls = get_mixer(name)
    if not callable(getattr(cls, "from_attention", None)):
        raise ValueError(f"mixer {name!r} has no from_attention(attn, **options): it cannot be built from a "
                         "softmax attention layer; use e.g. lizard or lolcats")
    return cls


def build_student_mixers(teacher: SeqLM, mixer: str, options: dict | None = None) -> nn.ModuleList:
    """One `mixer.from_attention(block.mixer, **options)` per teacher block (teacher untouched)."""
    cls = student_mixer_class(mixer)
    return nn.ModuleList(cls.from_attention(block.mixer, **(options or {})) for block in teacher.blocks)


def new_parameter_names(mixer: nn.Module) -> list[str]:
    """Names of the mixer's parameters that were not copied from the teacher's attention."""
    return [n for n, _ in mixer.named_parameters() if n.split(".")[0] not in COPIED_FROM_TEACHER]


def freeze_all_but_new(mixers: nn.ModuleList) -> int:
    """requires_grad only on the new parameters (stage 1); returns how many scalars train."""
    count = 0
    for mixer in mixers:
        new = set(new_parameter_names(mixer))
        for name, param in mixer.named_parameters():
            param.requires_grad_(name in new)
            count += param.numel() if name in new else 0
    if count == 0:
        raise ValueError("the student mixers have no new parameters to train in stage 1")
    return count


def student_config(teacher_cfg: ModelConfig, mixers: nn.ModuleList) -> ModelConfig:
    """The teacher's config with the student's mixer name and options (from the built mixers)."""
    mixer_cfg = mixers[0].cfg
    name = mixer_cfg.mixer
    return dataclasses.replace(teacher_cfg, mixer=name, layers=None,
                               mixer_options={name: dict(mixer_cfg.mixer_options.get(name, {}))},
                               name=f"{teacher_cfg.name}-{name}")


def assemble_student(teacher: SeqLM, mixers: nn.ModuleList) -> SeqLM:
    """A SeqLM with the teacher's non-mixer weights (copied) and `mixers`' weights (copied); all trainable."""
    cfg = student_config(teacher.cfg, mixers)
    student = SeqLM(cfg).to(device=teacher.embed.weight.device, dtype=teacher.embed.weight.dtype)
    state = {k: v for k, v in teacher.state_dict().items() if ".mixer." not in k}
    for i, mixer in enumerate(mixers):
        state.update({f"blocks.{i}.mixer.{k}": v for k, v in mixer.state_dict().items()})
    student.load_state_dict(copy.deepcopy(state))
    student.requires_grad_(True)
    return student
