"""ListOps generator (answers vs an independent evaluator, lengths, seeding, official format)
and the LRA file loaders on small files written in the documented formats."""
import csv

import numpy as np
import pytest
import torch

from seqmodels.data.lra import (
    LISTOPS_VOCAB, encode_listops, generate_listops, load_image, load_listops, load_pathfinder, load_retrieval, load_text,
)


def reference_value(source: str) -> int:
    """Stack evaluation of the token string (parentheses ignored), independent of the generator's tree."""
    stack = []
    for tok in source.split():
        if tok in ("(", ")"):
            continue
        if tok.startswith("["):
            stack.append([tok])
        elif tok == "]":
            op, *args = stack.pop()
            if op == "[MIN":
                v = min(args)
            elif op == "[MAX":
                v = max(args)
            elif op == "[MED":
                s = sorted(args)
                m = len(s) // 2
                v = s[m] if len(s) % 2 else (s[m - 1] + s[m]) // 2
            else:
                assert op == "[SM"
                v = sum(args) % 10
            if not stack:
                return v
            stack[-1].append(v)
        else:
            stack[-1].append(int(tok))
    raise AssertionError("unbalanced expression")


def test_listops_answers_and_lengths():
    examples = generate_listops(40, min_length=100, max_length=400, seed=5)
    ops = set()
    for source, label in examples:
        tokens = [t for t in source.split() if t not in "()"]
        assert 100 <= len(tokens) <= 400
        assert source.count("(") == source.count(")")
        assert reference_value(source) == label
        ops |= {t for t in tokens if t.startswith("[")}
    assert ops == {"[MIN", "[MAX", "[MED", "[SM"}
    assert generate_listops(5, min_length=100, max_length=400, seed=5) == examples[:5]
    assert generate_listops(5, min_length=100, max_length=400, seed=6) != examples[:5]


def test_listops_default_lengths_and_depth():
    for source, label in generate_listops(3, seed=0):  # defaults: 500-2000 tokens, depth <= 10
        tokens = [t for t in source.split() if t not in "()"]
        assert 500 <= len(tokens) <= 2000 and reference_value(source) == label
        depth = best = 0
        for t in tokens:
            depth += t.startswith("[")
            depth -= t == "]"
            best = max(best, depth)
        assert best <= 9  # operators sit at depths 1..9, digits at most at depth 10


def test_listops_small_format_and_encoding():
    ids = encode_listops(["( ( ( [MAX 2 ) 9 ) ] )"], 8)
    v = LISTOPS_VOCAB
    assert ids.tolist() == [[v["[MAX"], v["2"], v["9"], v["]"], 0, 0, 0, 0]]
    assert sorted(LISTOPS_VOCAB.values()) == list(range(16))
    with pytest.raises(ValueError, match="min_length=10 must be <= max_length=5"):
        generate_listops(1, min_length=10, max_length=5)
    with pytest.raises(ValueError, match="max_args must be an integer >= 2"):
        generate_listops(1, max_args=1)
    with pytest.raises(ValueError, match="token 'X'"):
        encode_listops(["( [MAX X ] )"], 4)


def test_listops_file(tmp_path):
    examples = generate_listops(4, min_length=10, max_length=60, seed=1)
    path = tmp_path / "basic_train.tsv"
    with open(path, "w", newline="") as f:  # as LRA writes it: csv.writer, tab, header Source/Target
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["Source", "Target"])
        writer.writerows(examples)
    ids, labels = load_listops(path, max_length=64)
    assert labels.tolist() == [y for _, y in examples] and ids.shape == (4, 64) and ids.dtype == torch.long
    torch.testing.assert_close(ids, encode_listops([s for s, _ in examples], 64))
    with pytest.raises(ValueError, match=r"LRA listops file not found: .*basic_val\.tsv; it comes from the LRA release lra_release\.gz"):
        load_listops(tmp_path / "basic_val.tsv")
    (tmp_path / "bad.tsv").write_text("Src\tTarget\n")
    with pytest.raises(ValueError, match="must start with the header"):
        load_listops(tmp_path / "bad.tsv")


def test_text_and_retrieval_files(tmp_path):
    (tmp_path / "imdb.tsv").write_text('Source\tTarget\nA "great" film é\t1\nbad\t0\n', encoding="utf-8")
    ids, labels = load_text(tmp_path / "imdb.tsv", max_length=20)
    assert labels.tolist() == [1, 0]
    expected = [b + 1 for b in 'A "great" film é'.encode()] + [0, 0, 0]
    assert ids[0].tolist() == expected and ids[1, :4].tolist() == [ord("b") + 1, ord("a") + 1, ord("d") + 1, 0]
    (tmp_path / "new_aan_pairs.eval.tsv").write_text("1.0\tp1\tp2\tfirst text\tsecond\n0.0\tp3\tp4\tx\ty \"q\n")
    ids, labels = load_retrieval(tmp_path / "new_aan_pairs.eval.tsv", max_length=6)
    assert labels.tolist() == [1, 0] and ids.shape == (2, 2, 6)
    assert ids[0, 0].tolist() == [b + 1 for b in b"first "] and ids[1, 1].tolist() == [b + 1 for b in b'y "q'] + [0, 0]
    with pytest.raises(ValueError, match=r"new_aan_pairs\.train\.tsv; it comes from .*tsv_data"):
        load_retrieval(tmp_path / "new_aan_pairs.train.tsv")
    (tmp_path / "short.tsv").write_text("1.0\tp1\tp2\tonly four\n")
    with pytest.raises(ValueError, match="line 1 has 4 tab-separated columns, expected 5"):
        load_retrieval(tmp_path / "short.tsv")


def test_image_and_pathfinder_files(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar.npz", images=rgb, labels=np.array([3, 1, 9]))
    ids, labels = load_image(tmp_path / "cifar.npz")
    gray = np.rint(0.2989 * rgb[..., 0] + 0.5870 * rgb[..., 1] + 0.1140 * rgb[..., 2]).reshape(3, 1024)
    assert ids.tolist() == gray.astype(int).tolist() and labels.tolist() == [3, 1, 9]
    path_imgs = rng.integers(0, 256, size=(2, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "pf.npz", images=path_imgs, labels=np.array([0, 1]))
    ids, labels = load_pathfinder(tmp_path / "pf.npz")
    assert ids.tolist() == path_imgs.reshape(2, 64).astype(int).tolist() and labels.tolist() == [0, 1]
    np.savez(tmp_path / "nolabels.npz", images=path_imgs)
    with pytest.raises(ValueError, match=r"lacks keys \['labels'\]"):
        load_pathfinder(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "float.npz", images=path_imgs / 255.0, labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="dtype float64; expected uint8"):
        load_pathfinder(tmp_path / "float.npz")
    with pytest.raises(ValueError, match=r"LRA pathfinder file not found: .*pf32\.npz; it comes from the LRA release"):
        load_pathfinder(tmp_path / "pf32.npz")
    with pytest.raises(ValueError, match=r"LRA image file not found: .*c\.npz; it comes from CIFAR-10"):
        load_image(tmp_path / "c.npz")
