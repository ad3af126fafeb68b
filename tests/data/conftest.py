"""Shared fixtures: a small synthetic corpus and a small byte-level BPE trained once per session."""
import random

import datasets
import pytest

from seqmodels.data.tokenizer import train_bpe


def make_documents(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "état", "naïve", "数据", "x=1;", "\n", "  ", "def", "return"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 120))) for _ in range(n)]


@pytest.fixture(scope="session")
def documents():
    return make_documents()


@pytest.fixture(scope="session")
def corpus(documents):
    return datasets.Dataset.from_dict({"text": documents})


@pytest.fixture(scope="session")
def tokenizer(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return train_bpe(corpus, 300, out)
