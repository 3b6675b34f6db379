"""Tokenizer benchmark: encode throughput against tiktoken on the same ranks and pattern, and
training time against HuggingFace `tokenizers` BPE on the same text (each comparison runs when
the other package is installed; both are measured in the same process).

The text is the standard library's own .py sources (the `stdlib` source, no download), cut to
--train-mb for training and --encode-mb for encoding.

    python bench/tokenizer_bench.py [--vocab 32768] [--train-mb 10] [--encode-mb 4] [--out FILE]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import llmscratch_core as core
from llmscratch.data import split_documents
from llmscratch.tokenizer import Tokenizer


def load_docs(mb: float) -> list[str]:
    docs, total = [], 0
    for d in split_documents("stdlib", "all"):
        t = d.read()
        docs.append(t)
        total += len(t.encode("utf-8"))
        if total >= mb * 1e6:
            break
    return docs


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--train-mb", type=float, default=10.0)
    ap.add_argument("--encode-mb", type=float, default=4.0)
    ap.add_argument("--pattern", default="cl100k", choices=["gpt2", "cl100k", "cl100k_original"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", help="append a markdown report to this file")
    args = ap.parse_args()
    threads = core.get_num_threads()
    lines = []

    def report(s=""):
        print(s, flush=True)
        lines.append(s)

    docs = load_docs(args.train_mb)
    train_bytes = sum(len(d.encode("utf-8")) for d in docs)
    report(f"# Tokenizer benchmark ({platform.processor() or platform.machine()}, {threads} threads)")
    report()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "?"
    report(f"- date: {datetime.date.today()}, commit: {commit}, python {platform.python_version()}")
    report(f"- command: `python bench/tokenizer_bench.py {' '.join(sys.argv[1:])}`")
    report(f"- text: stdlib .py sources, {train_bytes / 1e6:.1f} MB for training, pattern {args.pattern}, "
           f"vocabulary {args.vocab}")
    report()

    # ---------------------------------------------------------------- training
    report("| training | seconds |")
    report("|---|---:|")
    t0 = time.perf_counter()
    tok = Tokenizer.train(docs, args.vocab, pattern=args.pattern, special_tokens=["<|endoftext|>"])
    ours_train = time.perf_counter() - t0
    report(f"| llmscratch BPE ({threads} threads) | {ours_train:.2f} |")
    try:
        import tokenizers
        from tokenizers import decoders, models, pre_tokenizers, trainers
        hf = tokenizers.Tokenizer(models.BPE())
        # the same pre-tokenization regex as ours, then HF's byte-level mapping
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(core.pattern_regex(args.pattern)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=args.vocab, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=["<|endoftext|>"])
        t0 = time.perf_counter()
        hf.train_from_iterator(docs, trainer=trainer)
        hf_train = time.perf_counter() - t0
        report(f"| HF tokenizers {tokenizers.__version__} BpeTrainer (same regex, byte-level, "
               f"RAYON threads: {os.environ.get('RAYON_NUM_THREADS', 'all')}) | {hf_train:.2f} |")
        report(f"| speed-up | {hf_train / ours_train:.2f}x |")
    except ImportError:
        report("| HF tokenizers | not installed |")
    report()

    # ---------------------------------------------------------------- encoding
    enc_docs, total = [], 0
    for d in docs:
        enc_docs.append(d)
        total += len(d.encode("utf-8"))
        if total >= args.encode_mb * 1e6:
            break
    text = "".join(enc_docs)
    mb = len(text.encode("utf-8")) / 1e6
    report(f"Encoding {mb:.1f} MB ({len(enc_docs)} documents), best of {args.repeat}, MB/s:")
    report()
    report("| encoder | 1 thread, one text | "
           f"{threads} threads, one text | {threads} threads, batch of documents |")
    report("|---|---:|---:|---:|")
    ours_ids = tok.encode_to_numpy(text)
    core.set_num_threads(1)
    o1 = mb / best_of(lambda: tok.encode_to_numpy(text), args.repeat)
    core.set_num_threads(threads)
    on = mb / best_of(lambda: tok.encode_to_numpy(text), args.repeat)
    ob = mb / best_of(lambda: tok.encode_batch(enc_docs), args.repeat)
    report(f"| llmscratch | {o1:.2f} | {on:.2f} | {ob:.2f} |")
    try:
        import tiktoken
        enc = tok.to_tiktoken()
        same = enc.encode_ordinary(text) == ours_ids.tolist()
        t1 = mb / best_of(lambda: enc.encode_ordinary(text), args.repeat)
        tb = mb / best_of(lambda: enc.encode_ordinary_batch(enc_docs, num_threads=threads), args.repeat)
        report(f"| tiktoken {tiktoken.__version__} (same ranks and pattern) | {t1:.2f} | "
               f"{t1:.2f} (no threads for one text) | {tb:.2f} |")
        report(f"| llmscratch / tiktoken | {o1 / t1:.2f}x | {on / t1:.2f}x | {ob / tb:.2f}x |")
        report()
        report(f"Identical token ids to tiktoken on the whole text: {same}")
    except ImportError:
        report("| tiktoken | not installed | | |")
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
