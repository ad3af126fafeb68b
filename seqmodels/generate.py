"""Text generation with measurements, for recipes/generate.py: one chunked prefill of the prompt,
then one `step` of the recurrent form per new token (SeqLM.generate); the prefill time, the
decoding speed and the decoding state's bytes after the prompt and at the end (constant for the
linear families; the Transformer's KV cache grows)."""
from __future__ import annotations

import time

import torch


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
