"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention", arXiv 2305.16300, §4.2):
a 5-digit number hidden in repeated filler text, asked for at the end; `seqmodels_passkey_<L>`.

A prompt of context length L is exactly L - ANSWER_TOKENS tokens of the model's tokenizer, so
prompt plus answer budget fill L (lm-eval keeps max_length - max_gen_toks prompt tokens):
the instruction, filler words, the needle sentence after a fraction `depth` of the filler,
more filler, then the question ending in "The pass key is". Filler is whole words of the
paper's sentences; the last few tokens up to the exact length are single-token units (" .").
Document i of n (default 16; lm-eval's `--metadata '{"num_documents": 4}'` sets it) has depth
i / (n - 1) (a single document: depth 0.5) and a key drawn from numpy's generator
seeded with L, so the documents depend only on L, n and the tokenizer. All n prompts of a task
have the same length, so a batch of generations needs no padding while the batch size divides n
(1, 2, 4, 8, 16): lm-eval batches the requests sorted by length, one task's after another's. Scoring: the first run of digits in the
generation must equal the key (metric `acc`).
"""
from __future__ import annotations

import re
from typing import Callable

import datasets
import numpy as np

ANSWER_TOKENS = 8  # the tasks' max_gen_toks
INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.")
FILLER_WORDS = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.".split()
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
TOP_UP_UNITS = (" .", ".", " -", "-", " *", "\n")


def _prompt(words: int, depth: float, key: int, top_up: str = "") -> str:
    filler = [FILLER_WORDS[i % len(FILLER_WORDS)] for i in range(words)]
    cut = round(depth * words)
    before, after = "".join(" " + w for w in filler[:cut]), "".join(" " + w for w in filler[cut:])
    return INSTRUCTION + before + NEEDLE.format(key=key) + after + top_up + QUESTION


def passkey_prompt(count_tokens: Callable[[str], int], prompt_tokens: int, depth: float, key: int) -> str:
    """The longest prompt of at most `prompt_tokens` tokens, topped up to exactly that many
    when a single-token unit repeated allows it (count_tokens: text -> number of tokens)."""
    if count_tokens(_prompt(0, depth, key)) > prompt_tokens:
        raise ValueError(f"{prompt_tokens} prompt tokens cannot hold the instruction, needle and question "
                         f"({count_tokens(_prompt(0, depth, key))} tokens); use a longer context length")
    low, high = 0, 1
    while count_tokens(_prompt(high, depth, key)) <= prompt_tokens:
        low, high = high, 2 * high
    while high - low > 1:  # largest word count that fits (token count grows with the words)
        mid = (low + high) // 2
        low, high = (mid, high) if count_tokens(_prompt(mid, depth, key)) <= prompt_tokens else (low, mid)
    best = _prompt(low, depth, key)
    gap = prompt_tokens - count_tokens(best)
    for unit in TOP_UP_UNITS if gap else ():
        candidate = _prompt(low, depth, key, unit * gap)
        if count_tokens(candidate) == prompt_tokens:
            return candidate
    return best


def passkey_documents(count_tokens: Callable[[str], int], context_length: int, num_documents: int = 16) -> list[dict]:
    """`num_documents` rows {"text": prompt, "passkey": "12345", "depth": d} for context length L."""
    if num_documents < 1:
        raise ValueError(f"num_documents must be >= 1, got {num_documents}")
    rng = np.random.default_rng(context_length)
    keys = rng.integers(10_000, 100_000, size=num_documents)
    rows = []
    for i, key in enumerate(keys.tolist()):
        depth = i / (num_documents - 1) if num_documents > 1 else 0.5
        text = passkey_prompt(count_tokens, context_length - ANSWER_TOKENS, depth, key)
        rows.append({"text": text, "passkey": str(key), "depth": depth})
    return rows


def token_counter(tokenizer=None, pretrained=None) -> Callable[[str], int]:
    """Number of tokens of a text under the evaluated model's tokenizer (lm-eval's model_args
    `tokenizer`, else `pretrained`), without special tokens as `--model seqmodels` encodes."""
    from transformers import AutoTokenizer

    source = tokenizer if isinstance(tokenizer, str) else pretrained
    if not isinstance(source, str):
        raise ValueError("the passkey tasks measure prompts in the model's tokens: pass pretrained=<model dir> "
                         "(or tokenizer=<dir>) in --model_args")
    tok = AutoTokenizer.from_pretrained(source)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def dataset(context_length: int, num_documents: int = 16, tokenizer=None, pretrained=None,
            **_lm_eval_metadata) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` (context_length from the task's dataset_kwargs; lm-eval's
    model_args arrive as keyword arguments and name the tokenizer)."""
    rows = passkey_documents(token_counter(tokenizer, pretrained), int(context_length), int(num_documents))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results(doc: dict, results: list[str]) -> dict:
    """acc = 1 when the generation's first run of digits is the passkey."""
    found = re.search(r"\d+", results[0])
    return {"acc": float(found is not None and found.group(0) == doc["passkey"])}
