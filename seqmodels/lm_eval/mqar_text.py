"""Multi-query associative recall (Arora et al. 2023, arXiv 2312.04927, §3) as text, for the
`seqmodels_mqar` task: examples from `seqmodels.data.mqar.mqar`, each token id written as its
decimal number, space separated.

One lm-eval document per query: the example's tokens up to and including the query key are the
context, the paired value (after a space) is the continuation; lm-eval's loglikelihood gives
`acc` (greedy decoding reproduces every token of the value) and the value's log-likelihood.
Default size (the task's dataset_kwargs): vocabulary 128, 64 tokens, 4 key-value pairs,
64 examples (256 documents), seed 0.
"""
from __future__ import annotations

import datasets

from seqmodels.data.mqar import IGNORE_INDEX, mqar


def mqar_documents(vocab_size: int, seq_len: int, num_kv_pairs: int, num_examples: int, seed: int = 0) -> list[dict]:
    """Rows {"context", "value", "example", "position"}, ordered by example then query position."""
    inputs, labels = mqar(vocab_size, seq_len, num_kv_pairs, num_examples, seed=seed)
    rows = []
    for example, (ids, targets) in enumerate(zip(inputs.tolist(), labels.tolist())):
        for position, value in enumerate(targets):
            if value != IGNORE_INDEX:
                rows.append({"context": " ".join(map(str, ids[:position + 1])), "value": str(value),
                             "example": example, "position": position})
    return rows


def dataset(vocab_size: int = 128, seq_len: int = 64, num_kv_pairs: int = 4, num_examples: int = 64, seed: int = 0,
            **_lm_eval_metadata) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` (sizes from the task's dataset_kwargs; other keyword arguments,
    lm-eval's model_args and metadata, are ignored)."""
    rows = mqar_documents(int(vocab_size), int(seq_len), int(num_kv_pairs), int(num_examples), int(seed))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
