"""Packing (token stream, shards, index, validation by document) and the resumable rank-aware loader."""
import json

import numpy as np
import pytest
import torch

from seqmodels.data.loader import PackedDataset, PackedLoader, read_index
from seqmodels.data.pack import choose_dtype, pack_corpus
from seqmodels.data.tokenizer import tokenizer_hash, train_bpe

SEQ_LEN = 16


def token_stream(tokenizer, docs):
    eos = tokenizer.eos_token_id
    return np.array([t for d in docs for t in tokenizer(d, add_special_tokens=False)["input_ids"] + [eos]])


def stored_stream(ds: PackedDataset) -> np.ndarray:
    """Windows overlap by one token: window i's first seq_len tokens, then the last window's last token."""
    parts = [ds[i][:-1] for i in range(len(ds))] + [ds[len(ds) - 1][-1:]]
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def packed(corpus, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    index = pack_corpus(corpus, tokenizer, out, SEQ_LEN, shard_tokens=200, progress=False)
    return out, index


def test_round_trip_text_to_loader(packed, tokenizer, documents):
    out, index = packed
    expected = token_stream(tokenizer, documents)
    # decoding the full stream gives the documents joined (and ended) by EOS
    assert tokenizer.decode(expected.tolist()) == "".join(d + tokenizer.eos_token for d in documents)
    train = index["splits"]["train"]
    assert train["num_tokens"] == len(expected) and train["documents"] == len(documents)
    assert train["num_tokens_used"] == train["num_sequences"] * SEQ_LEN + 1
    assert train["dropped_tail_tokens"] == len(expected) - train["num_tokens_used"] < SEQ_LEN
    assert len(train["shards"]) > 2 and index["dtype"] == "uint16" and index["vocab_size"] == 300
    assert index["tokenizer_hash"] == tokenizer_hash(tokenizer)
    assert json.loads((out / "index.json").read_text()) == index
    assert not list(out.glob("*.tmp"))
    ds = PackedDataset(out)
    np.testing.assert_array_equal(stored_stream(ds), expected[: train["num_tokens_used"]])
    # the loader in order (no shuffle): inputs are consecutive windows, labels shifted by one
    loader = PackedLoader(out, 4, shuffle=False, drop_last=False)
    batches = list(loader)
    inputs = torch.cat([b["input_ids"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert inputs.dtype == labels.dtype == torch.long and inputs.shape == (len(ds), SEQ_LEN)
    flat = torch.cat([inputs.reshape(-1), labels[-1, -1:]]).numpy()
    np.testing.assert_array_equal(flat, expected[: train["num_tokens_used"]])
    np.testing.assert_array_equal(labels[:, :-1].numpy(), inputs[:, 1:].numpy())


def test_validation_held_out_by_document(corpus, tokenizer, documents, tmp_path):
    index = pack_corpus(corpus, tokenizer, tmp_path, SEQ_LEN, validation_fraction=0.2, split_seed=3, progress=False)
    val_ids = np.random.default_rng(3).permutation(len(documents))[:12]
    val_docs = [d for i, d in enumerate(documents) if i in set(val_ids)]
    train_docs = [d for i, d in enumerate(documents) if i not in set(val_ids)]
    assert index["splits"]["validation"]["documents"] == 12 and index["splits"]["train"]["documents"] == 48
    for split, docs in (("train", train_docs), ("validation", val_docs)):
        used = index["splits"][split]["num_tokens_used"]
        np.testing.assert_array_equal(stored_stream(PackedDataset(tmp_path, split)), token_stream(tokenizer, docs)[:used])


def test_uint32_forced_and_dtype_choice(corpus, tokenizer, documents, tmp_path):
    assert choose_dtype(65536) == np.uint16 and choose_dtype(65537) == np.uint32
    with pytest.raises(ValueError, match="dtype='uint16' cannot hold vocab_size=70000"):
        choose_dtype(70000, "uint16")
    index = pack_corpus(corpus, tokenizer, tmp_path, SEQ_LEN, dtype="uint32", progress=False)
    assert index["dtype"] == "uint32"
    used = index["splits"]["train"]["num_tokens_used"]
    np.testing.assert_array_equal(stored_stream(PackedDataset(tmp_path)), token_stream(tokenizer, documents)[:used])


def test_uint16_forced_on_large_vocab_errors(corpus, tokenizer, tmp_path):
    class Big:  # a tokenizer whose vocabulary does not fit uint16
        eos_token_id = 1
        def __len__(self):
            return 70_000
    with pytest.raises(ValueError, match="dtype='uint16' cannot hold vocab_size=70000"):
        pack_corpus(corpus, Big(), tmp_path, SEQ_LEN, dtype="uint16", progress=False)


def test_pack_errors(corpus, tokenizer, tmp_path):
    total = len(token_stream(tokenizer, corpus["text"]))
    with pytest.raises(ValueError, match=rf"train split has {total} tokens .* fewer than seq_len \+ 1 = {total + 1}"):
        pack_corpus(corpus, tokenizer, tmp_path, total, progress=False)
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        pack_corpus(corpus, tokenizer, tmp_path, 0, progress=False)
    with pytest.raises(ValueError, match="validation_fraction"):
        pack_corpus(corpus, tokenizer, tmp_path, SEQ_LEN, validation_fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="empty corpus"):
        pack_corpus(corpus.select([]), tokenizer, tmp_path, SEQ_LEN, progress=False)


def test_tokenizer_hash_mismatch(packed, tokenizer, documents):
    out, index = packed
    other = tokenizer_hash(train_bpe(documents, 280))
    with pytest.raises(ValueError, match=rf"packed with tokenizer {index['tokenizer_hash']}.*hashes to {other}; re-pack"):
        PackedLoader(out, 2, tokenizer_hash=other)
    PackedLoader(out, 2, tokenizer_hash=tokenizer_hash(tokenizer))  # the right one is accepted
    with pytest.raises(ValueError, match="index.json is missing"):
        PackedDataset(out / "nowhere")


def batches_as_arrays(iterable):
    return [b["input_ids"].numpy().copy() for b in iterable]


def test_resume_equals_uninterrupted(packed):
    out, _ = packed
    full = PackedLoader(out, 3, seed=7)
    per_epoch = len(full)
    uninterrupted = batches_as_arrays(full) + batches_as_arrays(full)  # epochs 0 and 1
    for stop in (0, 2, per_epoch - 1, per_epoch):
        first = PackedLoader(out, 3, seed=7)
        seen, it = [], iter(first)
        for _ in range(stop):
            seen.append(next(it)["input_ids"].numpy().copy())
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
        resumed = PackedLoader(out, 3, seed=7)
        resumed.load_state_dict(state)
        assert (state["epoch"], state["step"]) == ((0, stop) if stop < per_epoch else (1, 0))
        rest = batches_as_arrays(resumed)  # the rest of the epoch the state points into
        if stop < per_epoch:
            rest += batches_as_arrays(resumed)  # then epoch 1
        assert len(seen) + len(rest) == len(uninterrupted)
        for a, b in zip(seen + rest, uninterrupted):
            np.testing.assert_array_equal(a, b)


def test_epochs_deterministic_and_distinct(packed):
    out, _ = packed
    a, b = PackedLoader(out, 2, seed=1), PackedLoader(out, 2, seed=1)
    np.testing.assert_array_equal(a.rank_indices(0), b.rank_indices(0))
    assert not np.array_equal(a.rank_indices(0), a.rank_indices(1))
    assert not np.array_equal(a.rank_indices(0), PackedLoader(out, 2, seed=2).rank_indices(0))


@pytest.mark.parametrize("drop_last", [True, False])
def test_two_ranks_disjoint_and_cover(packed, drop_last):
    out, _ = packed
    n = len(PackedDataset(out))
    ranks = [PackedLoader(out, 4, seed=5, rank=r, world_size=2, drop_last=drop_last) for r in range(2)]
    got = [ranks[r].rank_indices(3) for r in range(2)]
    assert not set(got[0]) & set(got[1])
    covered = set(got[0]) | set(got[1])
    if drop_last:
        assert len(covered) == (n // 8) * 8
        # global step s = the batch of 8 a single process would see
        single = PackedLoader(out, 8, seed=5).rank_indices(3)
        for s in range(len(ranks[0])):
            assert set(got[0][4 * s:4 * s + 4]) | set(got[1][4 * s:4 * s + 4]) == set(single[8 * s:8 * s + 8])
    else:
        assert covered == set(range(n))
    # the batches themselves are those windows
    ds = PackedDataset(out)
    ranks[1].epoch = 3
    first = next(iter(ranks[1]))["input_ids"].numpy()
    np.testing.assert_array_equal(first, np.stack([ds[int(i)][:-1] for i in got[1][:4]]))


def test_loader_errors(packed):
    out, _ = packed
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, world_size=2\), got 2"):
        PackedLoader(out, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        PackedLoader(out, 0)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        PackedLoader(out, 10_000)
    with pytest.raises(ValueError, match="split 'validation' is not in"):
        PackedLoader(out, 2, split="validation")
    state = PackedLoader(out, 2, seed=1).state_dict()
    with pytest.raises(ValueError, match="loader state has seed=1 but this loader has seed=2"):
        PackedLoader(out, 2, seed=2).load_state_dict(state)
    assert read_index(out)["seq_len"] == SEQ_LEN


def test_two_ranks_iterate_every_window_once_without_drop_last(packed):
    out, _ = packed
    ds = PackedDataset(out)
    seen = []
    for r in range(2):
        for batch in PackedLoader(out, 3, seed=2, rank=r, world_size=2, drop_last=False):
            seen += [tuple(row) for row in batch["input_ids"].tolist()]
    assert sorted(seen) == sorted(tuple(ds[i][:-1].tolist()) for i in range(len(ds)))
