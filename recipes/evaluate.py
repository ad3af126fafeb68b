"""Perplexity of a trained model on held-out packed shards or on a text file (docs/architecture.md §7).

    python recipes/evaluate.py --model runs/demo/hf --packed .cache/seqmodels/packed-<key>
    python recipes/evaluate.py --model runs/demo/checkpoints --text notes.txt --seq_len 256

Shards: every window of the split (default "validation"), in order; the shards' tokenizer
hash must match the model's tokenizer. Text file: tokenized with the model's tokenizer, an EOS
appended, cut into windows of seq_len + 1 tokens with stride seq_len (the packing layout), the
last partial window included. Reports the mean next-token loss over all predicted tokens and
its exponential (perplexity).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from seqmodels.run_config import format_config, parse_run_args, run_cli
from seqmodels.train.export import load_for_inference

DEFAULTS = {
    "model": None,
    "packed": None,
    "split": "validation",
    "text": None,
    "seq_len": 256,  # for --text
    "batch_size": 8,
    "max_batches": None,
    "out": None,  # optional JSON file for the result
}


def text_windows(tokenizer, path: str | Path, seq_len: int) -> Iterable[torch.Tensor]:
    """Windows [n <= seq_len + 1] over the file's tokens + EOS, stride seq_len."""
    ids = tokenizer(Path(path).read_text(), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    if len(ids) < 2:
        raise ValueError(f"{path} has {len(ids)} token(s); need at least 2 to score a prediction")
    tokens = torch.tensor(ids, dtype=torch.long)
    for start in range(0, len(tokens) - 1, seq_len):
        yield tokens[start:start + seq_len + 1]


def batch_windows(windows: Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    """Stack consecutive windows of equal length into batches of at most batch_size."""
    pending: list[torch.Tensor] = []
    for window in windows:
        if pending and (len(window) != len(pending[0]) or len(pending) == batch_size):
            yield torch.stack(pending)
            pending = []
        pending.append(window)
    if pending:
        yield torch.stack(pending)


@torch.no_grad()
def score_windows(model, windows: Iterable[torch.Tensor], batch_size: int, max_batches: Optional[int] = None) -> dict:
    """Mean next-token NLL (float64 sum) over the windows' predicted tokens, and its exponential."""
    total_nll, total_tokens, batches = 0.0, 0, 0
    for batch in batch_windows(windows, batch_size):
        if max_batches is not None and batches >= max_batches:
            break
        logits = model(batch[:, :-1]).logits.double()
        total_nll += float(F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"))
        total_tokens += batch[:, 1:].numel()
        batches += 1
    if total_tokens == 0:
        raise ValueError("nothing to score: no window with a target token")
    loss = total_nll / total_tokens
    return {"tokens": total_tokens, "loss": loss, "ppl": math.exp(min(loss, 80.0)), "batches": batches}


def packed_windows(path: str | Path, split: str, tokenizer) -> Iterable[torch.Tensor]:
    from seqmodels.data.loader import PackedDataset
    from seqmodels.data.tokenizer import tokenizer_hash

    dataset = PackedDataset(path, split, tokenizer_hash=tokenizer_hash(tokenizer))
    for i in range(len(dataset)):
        yield torch.from_numpy(dataset[i])


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cfg = parse_run_args(argv, DEFAULTS)
    print(f"[evaluate] resolved config:\n{format_config(cfg)}")
    if not cfg["model"]:
        raise ValueError("--model is required: an HF export directory or a checkpoint directory")
    if (cfg["packed"] is None) == (cfg["text"] is None):
        raise ValueError("give exactly one of --packed <packed dir> or --text <file>")
    model, tokenizer = load_for_inference(cfg["model"])
    if tokenizer is None:
        raise ValueError(f"{cfg['model']} holds no tokenizer; export it with the pretrain recipe")
    if cfg["packed"] is not None:
        windows, source = packed_windows(cfg["packed"], cfg["split"], tokenizer), f"{cfg['packed']} [{cfg['split']}]"
    else:
        windows, source = text_windows(tokenizer, cfg["text"], int(cfg["seq_len"])), str(cfg["text"])
    result = {"model": str(cfg["model"]), "source": source,
              **score_windows(model, windows, int(cfg["batch_size"]), cfg["max_batches"])}
    print(f"[evaluate] {source}: {result['tokens']:,} tokens, loss {result['loss']:.4f}, perplexity {result['ppl']:.2f}")
    if cfg["out"]:
        Path(cfg["out"]).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run_cli(main, "evaluate")
