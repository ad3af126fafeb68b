"""The start of a multi-run sweep process (MQAR grid, family comparison): ranks that share the
work queue, torch threads, DeepSpeed logging, the distributed group and the DeepSpeed config."""
from __future__ import annotations

import logging

import torch

from seqmodels.train.deepspeed_config import resolve_deepspeed_config
from seqmodels.train.distributed import init_distributed
from seqmodels.train.work_queue import split_ranks


def start_sweep(cfg: dict):
    """(rank, world, store, dist info, resolved DeepSpeed config) for this process of a sweep."""
    rank, world, store = split_ranks()
    if cfg["torch_threads"]:
        torch.set_num_threads(int(cfg["torch_threads"]))
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    info = init_distributed(cfg["dist_backend"])
    return rank, world, store, info, resolve_deepspeed_config(cfg["deepspeed_config"], cfg["ds"])
