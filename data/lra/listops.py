"""ListOps (Nangia & Bowman 2018; the LRA variant, Tay et al. 2020, arXiv 2011.04006 §3.1):
a seeded generator, the official source format, tokenization and vocabulary.

Generation follows LRA's `lra_benchmarks/data/listops.py`: a node at depth < max_depth is a
leaf (digit 0-9, uniform) with probability 0.75, else an operator (MIN, MAX, MED, SM; uniform)
with 2..max_args children (uniform); at max_depth it is a leaf. A tree's length counts one
token per digit plus two per operator (its "[OP" and its "]"); trees are drawn until
min_length <= length <= max_length (LRA: strictly between). Unlike LRA the generator is seeded
(`random.Random(seed)`) and does not drop duplicate trees. Values: MIN/MAX; MED = int(median)
(the mean of the two middle values for an even count, truncated); SM = sum mod 10.

Source format (LRA's TSV "Source" column) is the binary-nested string, e.g.
"( ( ( [MAX 2 ) 9 ) ] )" for [MAX 2 9 ]. Tokenization splits on whitespace and drops "(" and
")" (they only restate the nesting that "[OP" ... "]" already gives; LRA's fixed pipeline and
S4 do the same), so the token count equals the tree length. Vocabulary (`VOCAB`): 0 = pad,
digits "0".."9" -> 1..10, "[MIN" 11, "[MAX" 12, "[MED" 13, "[SM" 14, "]" 15.
"""
from __future__ import annotations

import random
from typing import Sequence, Union

import numpy as np
import torch

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
PAD_ID = 0
VOCAB = {"<pad>": PAD_ID, **{str(d): d + 1 for d in range(10)}, **{op: 11 + i for i, op in enumerate(OPERATORS)}, END: 15}
LEAF_PROBABILITY = 0.75

Tree = Union[int, tuple]  # a digit, or (operator, [children])


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> tuple[Tree, int]:
    if depth >= max_depth or rng.random() < LEAF_PROBABILITY:
        return rng.randrange(10), 1
    children, length = [], 2
    for _ in range(rng.randint(2, max_args)):
        child, child_len = _tree(rng, depth + 1, max_depth, max_args)
        children.append(child)
        length += child_len
    return (rng.choice(OPERATORS), children), length


def evaluate(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    op, children = tree
    values = [evaluate(c) for c in children]
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return int(np.median(values))
    return sum(values) % 10


def to_source(tree: Tree) -> str:
    """LRA's Source string: each argument appended as a binary pair "( left right )"."""
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    text = f"( {op} {to_source(children[0])} )"
    for child in children[1:]:
        text = f"( {text} {to_source(child)} )"
    return f"( {text} {END} )"


def generate_listops(
    num_examples: int,
    *,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
) -> list[tuple[str, int]]:
    """`num_examples` (source string, answer 0-9) pairs with tree lengths in [min_length, max_length]."""
    for name, value in (("num_examples", num_examples), ("min_length", min_length), ("max_length", max_length),
                        ("max_depth", max_depth)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(max_args, int) or max_args < 2:
        raise ValueError(f"max_args must be an integer >= 2, got {max_args!r}")
    if min_length > max_length:
        raise ValueError(f"min_length={min_length} must be <= max_length={max_length}")
    if max_depth == 1 and min_length > 1:
        raise ValueError(f"max_depth=1 only makes single digits (length 1); min_length={min_length} is unreachable")
    rng = random.Random(seed)
    out = []
    while len(out) < num_examples:
        tree, length = _tree(rng, 1, max_depth, max_args)
        if min_length <= length <= max_length:
            out.append((to_source(tree), evaluate(tree)))
    return out


def tokenize(source: str) -> list[str]:
    """Whitespace tokens of a Source string, parentheses dropped."""
    return [t for t in source.split() if t not in ("(", ")")]


def encode(sources: Sequence[str], max_length: int) -> torch.Tensor:
    """[N, max_length] long ids (VOCAB), truncated to max_length and right-padded with PAD_ID."""
    ids = np.full((len(sources), max_length), PAD_ID, dtype=np.int64)
    for row, source in enumerate(sources):
        try:
            tokens = [VOCAB[t] for t in tokenize(source)[:max_length]]
        except KeyError as err:
            raise ValueError(f"ListOps source {row} has token {err.args[0]!r}, not in the vocabulary {list(VOCAB)}") from None
        ids[row, : len(tokens)] = tokens
    return torch.from_numpy(ids)
