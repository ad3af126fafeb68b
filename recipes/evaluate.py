"""Perplexity of a trained model on held-out packed shards or on a text file (docs/architecture.md §7).

    python recipes/evaluate.py --model runs/demo/hf --packed .cache/seqmodels/packed-<key>
    python recipes/evaluate.py --model runs/demo/checkpoints --text notes.txt --seq_len 256

Shards: every window of the split (default "validation"), in order; the shards' tokenizer
hash must match the model's tokenizer. Text file: tokenized with the model's tokenizer, an EOS
appended, cut into windows of seq_len + 1 tokens with stride seq_len (the packing layout), the
last partial window included. Reports the token-weighted mean next-token loss over all predicted
tokens and its exponential (perplexity; seqmodels.train.evaluation).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from seqmodels.data.text import packed_windows, text_windows, window_batches
from seqmodels.run_config import format_config, parse_run_args, run_cli
from seqmodels.train.evaluation import evaluate_lm
from seqmodels.train.export import load_for_inference
from seqmodels.train.safe_load import TRUST_FLAG

DEFAULTS = {
    "model": None,
    "trust_checkpoint": False,  # --trust-checkpoint: unpickle DeepSpeed's files (only checkpoints you wrote)
    "packed": None,
    "split": "validation",
    "text": None,
    "seq_len": 256,  # for --text
    "batch_size": 8,
    "max_batches": None,
    "out": None,  # optional JSON file for the result
}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cfg = parse_run_args(argv, DEFAULTS, flags={TRUST_FLAG: ("trust_checkpoint", True)})
    print(f"[evaluate] resolved config:\n{format_config(cfg)}")
    if not cfg["model"]:
        raise ValueError("--model is required: an HF export directory or a checkpoint directory")
    if (cfg["packed"] is None) == (cfg["text"] is None):
        raise ValueError("give exactly one of --packed <packed dir> or --text <file>")
    model, tokenizer = load_for_inference(cfg["model"], trust=cfg["trust_checkpoint"])
    if tokenizer is None:
        raise ValueError(f"{cfg['model']} holds no tokenizer; export it with the pretrain recipe")
    if cfg["packed"] is not None:
        windows, source = packed_windows(cfg["packed"], cfg["split"], tokenizer), f"{cfg['packed']} [{cfg['split']}]"
    else:
        windows, source = text_windows(tokenizer, cfg["text"], int(cfg["seq_len"])), str(cfg["text"])
    scores = evaluate_lm(model, window_batches(windows, int(cfg["batch_size"])), cfg["max_batches"])
    result = {"model": str(cfg["model"]), "source": source, **asdict(scores)}
    print(f"[evaluate] {source}: {result['tokens']:,} tokens, loss {result['loss']:.4f}, perplexity {result['ppl']:.2f}")
    if cfg["out"]:
        Path(cfg["out"]).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run_cli(main, "evaluate")
