"""Sample text from a trained model with the recurrent form (docs/architecture.md §7; seqmodels.generate): one
chunked prefill of the prompt, then one O(1)-state `step` per new token. Prints the text, prefill
and decode speed, and the decoding state's memory after the prompt and at the end (constant for
the linear families; the Transformer's KV cache grows).

    python recipes/generate.py --model runs/demo/hf --prompt "def main(" --max_new_tokens 200
    python recipes/generate.py --model runs/demo/checkpoints --temperature 0   # latest checkpoint

`--model`: an HF export directory or a DeepSpeed checkpoint (tag directory, or a checkpoints
directory with `latest`), with its tokenizer. Sampling: temperature (0 = greedy), top_k, top_p.
`--prompt` is taken verbatim ("3.14", "yes", "print(x)  # show" stay text).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from seqmodels.generate import generate_text
from seqmodels.run_config import format_config, parse_run_args, run_cli
from seqmodels.train.export import load_for_inference
from seqmodels.train.safe_load import TRUST_FLAG

DEFAULTS = {
    "model": None,
    "trust_checkpoint": False,  # --trust-checkpoint: unpickle DeepSpeed's files (only checkpoints you wrote)
    "prompt": "def ",
    "max_new_tokens": 128,
    "temperature": 0.8,
    "top_k": 50,
    "top_p": None,
    "seed": 0,
    "dtype": "float32",
    "threads": None,
}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cfg = parse_run_args(argv, DEFAULTS, flags={TRUST_FLAG: ("trust_checkpoint", True)}, literal=("prompt",))
    print(f"[generate] resolved config:\n{format_config(cfg)}")
    if not cfg["model"]:
        raise ValueError("--model is required: an HF export directory or a checkpoint directory")
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    dtype = getattr(torch, cfg["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"--dtype {cfg['dtype']!r} is not a torch dtype (float32, bfloat16, float64)")
    model, tokenizer = load_for_inference(cfg["model"], dtype=dtype, trust=cfg["trust_checkpoint"])
    if tokenizer is None:
        raise ValueError(f"{cfg['model']} holds no tokenizer; export it with the pretrain recipe")
    result = generate_text(model, tokenizer, cfg["prompt"], cfg["max_new_tokens"], cfg["temperature"], cfg["top_k"],
                           cfg["top_p"], cfg["seed"])
    print(result["text"])
    print(f"\n[generate] {model.cfg.mixer_names()}: prompt {result['prompt_tokens']} tokens, prefill "
          f"{result['prefill_s'] * 1e3:.1f} ms; {result['new_tokens']} new tokens at "
          f"{result['decode_tokens_per_s']:.1f} tokens/s; decoding state {result['state_bytes_prompt']:,} bytes after "
          f"the prompt, {result['state_bytes_end']:,} bytes at the end")
    return result


if __name__ == "__main__":
    run_cli(main, "generate")
