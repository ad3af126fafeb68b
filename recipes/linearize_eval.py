"""Field evaluation of a linearized model: the softmax teacher vs its students (docs/linearize.md).

    python recipes/linearize_eval.py --teacher DIR --student lizard=runs/X/hf --student lolcats=runs/Y/hf \
        --out runs/smollm2-eval --passkey_contexts 512 1024 2048 4096 --passkey_documents 4 \
        --decode_contexts 1024 4096 16384

Perplexity on held-out code and English prose, passkey retrieval and zero-shot MQAR through
lm-eval, decode ms/token and state bytes per context, greedy generations; eval.json and eval.md
under --out. The planned token counts are printed first (--dry_run stops there). Every item and
setting: seqmodels.linearize.field_eval.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from seqmodels.linearize.field_eval import EvalPlan, field_eval, parse_students
from seqmodels.run_config import run_cli


def main(argv: Optional[Sequence[str]] = None) -> dict:
    defaults = EvalPlan()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="the teacher's Llama-family HF directory")
    parser.add_argument("--student", action="append", metavar="NAME=DIR", help="a student's hf/ export (repeat)")
    parser.add_argument("--out", required=True, help="folder for eval.json and eval.md")
    parser.add_argument("--data_config", help="the linearize run's run_config.yaml (default: beside the first student)")
    for name, value in vars(defaults).items():
        kind = int if name != "seq_len" else lambda v: None if v == "none" else int(v)
        parser.add_argument(f"--{name}", type=kind, nargs="+" if isinstance(value, list) else None, default=value)
    parser.add_argument("--dry_run", action="store_true", help="print the planned token counts and stop")
    args = vars(parser.parse_args(argv))
    plan = EvalPlan(**{name: args[name] for name in vars(defaults)})
    result = field_eval(args["teacher"], parse_students(args["student"]), args["out"], plan, args["data_config"],
                        args["dry_run"])
    if not args["dry_run"]:
        print(open(f"{args['out']}/eval.md").read(), flush=True)
    return result


if __name__ == "__main__":
    run_cli(main, "linearize_eval", errors=(ValueError,))
