"""Packing speed on the embedded corpus: tokens/s of pack_corpus for num_proc = 1 and 2.

Wall-clock tokens/s depends on what else runs on the machine, so the table also gives tokens
per CPU-second (this process + its children, Rust tokenizer threads included) and the load average.

Trains (or reuses) a byte-level BPE, then times tokenize + pack end to end (datasets.map,
shard writing, index), printing a table with the speed-up of num_proc=2 over 1.
Usage: python scripts/bench_pack.py [--vocab 8192] [--seq-len 1024] [--max-bytes 20000000]
"""
import argparse
import os
import platform
import resource
import tempfile
import time

from seqmodels.data.corpus import corpus_stats, load_corpus
from seqmodels.data.pack import pack_corpus
from seqmodels.data.tokenizer import train_bpe


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--max-bytes", type=int, default=20_000_000)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    t0 = time.perf_counter()
    corpus = load_corpus(max_bytes=args.max_bytes)
    stats = corpus_stats(corpus)
    t_corpus = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok = train_bpe(corpus, args.vocab)
    t_train = time.perf_counter() - t0
    print(f"device: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"corpus: {stats['documents']} documents, {stats['bytes'] / 1e6:.2f} MB (loaded in {t_corpus:.1f}s); "
          f"BPE vocab {args.vocab} trained in {t_train:.1f}s")
    rows = []
    for procs in args.procs:
        with tempfile.TemporaryDirectory() as out:
            cpu0 = _cpu_seconds()
            t0 = time.perf_counter()
            index = pack_corpus(corpus, tok, out, args.seq_len, num_proc=procs, progress=False)
            seconds = time.perf_counter() - t0
            cpu = _cpu_seconds() - cpu0
        tokens = index["splits"]["train"]["num_tokens"]
        rows.append((procs, tokens, seconds, tokens / seconds, tokens / cpu))
    print(f"load average (1 min) after the runs: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"\n| num_proc | tokens | seconds | tokens/s | vs num_proc={rows[0][0]} | tokens/CPU-s |")
    print("|---|---|---|---|---|---|")
    for procs, tokens, seconds, rate, per_cpu in rows:
        print(f"| {procs} | {tokens:,} | {seconds:.2f} | {rate:,.0f} | {rate / rows[0][3]:.2f}x | {per_cpu:,.0f} |")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
