"""Held-out documents of a training corpus, for the `seqmodels_ppl` task (loglikelihood_rolling).

The documents are exactly those `seqmodels.data.pack.pack_corpus` puts in the validation split
for the same `data:` settings (corpus, max_bytes, validation_fraction, split_seed), so a model
trained with those settings never saw them. Defaults: recipes/configs/demo.yaml (the embedded
stdlib corpus capped at 3,000,000 bytes, 5% of the documents, seed 0); other settings come from
lm-eval's `--metadata '{"corpus": "my_corpus/", "max_bytes": null, "validation_fraction": 0.01}'`.
"""
from __future__ import annotations

from typing import Optional

import datasets
import numpy as np

DEMO_DATA = {"corpus": "stdlib", "max_bytes": 3_000_000, "validation_fraction": 0.05, "split_seed": 0}


def held_out_documents(corpus: Optional[str], max_bytes: Optional[int], validation_fraction: float,
                       split_seed: int) -> list[str]:
    """The validation documents of `corpus` (pack_corpus's held-out choice), in corpus order."""
    from seqmodels.data.corpus import load_corpus
    from seqmodels.data.pack import _validation_mask  # the one definition of the held-out choice

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1) to hold documents out, got {validation_fraction!r}")
    documents = load_corpus(corpus, max_bytes=max_bytes)
    held_out = np.flatnonzero(_validation_mask(len(documents), validation_fraction, split_seed))
    return list(documents.select(held_out)["text"])


def dataset(corpus: Optional[str] = DEMO_DATA["corpus"], max_bytes: Optional[int] = DEMO_DATA["max_bytes"],
            validation_fraction: float = DEMO_DATA["validation_fraction"],
            split_seed: int = DEMO_DATA["split_seed"], **_lm_eval_metadata) -> datasets.DatasetDict:
    """lm-eval `custom_dataset`: {"test": one row {"text"} per held-out document}. lm-eval passes
    its model_args and --metadata as keyword arguments; keys other than the data settings are
    ignored."""
    texts = held_out_documents(corpus, max_bytes, float(validation_fraction), int(split_seed))
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": texts})})
