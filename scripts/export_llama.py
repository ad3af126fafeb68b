"""Export a softmax-Transformer SeqLM (an HF export or checkpoint of recipes/pretrain.py) to a
LlamaForCausalLM directory with its tokenizer, e.g. to make a teacher for recipes/linearize.py.

    python scripts/export_llama.py --model runs/linearize-teacher/hf --out runs/linearize-teacher/llama
"""
from __future__ import annotations

import argparse

from seqmodels.llama import to_llama
from seqmodels.train.export import load_for_inference


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF export dir or checkpoint of a mixer: attention model")
    parser.add_argument("--out", required=True, help="output LlamaForCausalLM directory")
    args = parser.parse_args(argv)
    model, tokenizer = load_for_inference(args.model)
    to_llama(model, args.out)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.out)
    print(f"[export_llama] wrote {args.out} ({model.num_parameters() / 1e6:.2f}M parameters"
          f"{', with tokenizer' if tokenizer is not None else ', no tokenizer found'})")


if __name__ == "__main__":
    main()
