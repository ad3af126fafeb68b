"""Sample text from a trained model with the recurrent form (docs/architecture.md §7): one chunked prefill of
the prompt, then one O(1)-state `step` per new token. Prints the text, prefill and decode
speed, and the decoding state's memory after the prompt and at the end (constant for the
linear families; the Transformer's KV cache grows).

    python recipes/generate.py --model runs/demo/hf --prompt "def main(" --max_new_tokens 200
    python recipes/generate.py --model runs/demo/checkpoints --temperature 0   # latest checkpoint

`--model`: an HF export directory or a DeepSpeed checkpoint (tag directory, or a checkpoints
directory with `latest`), with its tokenizer. Sampling: temperature (0 = greedy), top_k, top_p.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from seqmodels.run_config import format_config, parse_run_args, run_cli
from seqmodels.train.export import load_for_inference

DEFAULTS = {
    "model": None,
    "prompt": "def ",
    "max_new_tokens": 128,
    "temperature": 0.8,
    "top_k": 50,
    "top_p": None,
    "seed": 0,
    "dtype": "float32",
    "threads": None,
}


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, top_k, top_p,
                  seed: int) -> dict:
    """Generate and measure: {"text", "new_tokens", "prefill_s", "decode_tokens_per_s", "state_bytes_prompt",
    "state_bytes_end"}."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], dtype=torch.long)
    if ids.shape[1] == 0:
        raise ValueError(f"prompt {prompt!r} encodes to no tokens; give a non-empty prompt")
    with torch.no_grad():
        model(ids, return_state=True)  # warm-up: first-call set-up is not the model's speed
        start = time.perf_counter()
        prefill = model(ids, return_state=True)
        prefill_s = time.perf_counter() - start
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             generator=generator)
        total_s = time.perf_counter() - start
        end_state = model(out[:, :-1], return_state=True).state if out.shape[1] > 1 else prefill.state
    new = out.shape[1] - ids.shape[1]
    decode_s = max(total_s - prefill_s, 1e-9)
    return {
        "text": tokenizer.decode(out[0].tolist()),
        "prompt_tokens": ids.shape[1],
        "new_tokens": new,
        "prefill_s": prefill_s,
        "decode_tokens_per_s": new / decode_s,
        "state_bytes_prompt": prefill.state.nbytes(),
        "state_bytes_end": end_state.nbytes(),
    }


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cfg = parse_run_args(argv, DEFAULTS)
    print(f"[generate] resolved config:\n{format_config(cfg)}")
    if not cfg["model"]:
        raise ValueError("--model is required: an HF export directory or a checkpoint directory")
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    dtype = getattr(torch, cfg["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"--dtype {cfg['dtype']!r} is not a torch dtype (float32, bfloat16, float64)")
    model, tokenizer = load_for_inference(cfg["model"], dtype=dtype)
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
