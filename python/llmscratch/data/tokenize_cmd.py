"""``llmscratch tokenize``: train a tokenizer on a source, or encode a source into shards.

    llmscratch tokenize train  --source stdlib --vocab-size 8192 --out tok/stdlib
    llmscratch tokenize encode --source stdlib --tokenizer tok/stdlib --out shards/stdlib

``train`` learns on the train split only and writes ``OUT.tiktoken`` + ``OUT.json``.
``encode`` writes ``OUT_val_000000.bin``, ``OUT_train_000000.bin``, ... (llm.c layout); every
document is preceded by the end-of-text token, as llm.c's scripts do.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

from .._progress import Progress
from .shards import write_shard
from .sources import split_documents

EOT = "<|endoftext|>"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="train a BPE tokenizer or encode text into shards",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="tokenize_cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--source", required=True,
                        help="'stdlib', a text file, a directory, a glob, or file.jsonl[:field]")
    common.add_argument("--val-fraction", type=float, default=0.01,
                        help="share of the source in the validation split: documents by path hash, "
                             "see llmscratch.data.sources for sources of few documents")
    common.add_argument("--threads", type=int, default=0, help="threads (0: all)")
    common.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")
    t = sub.add_parser("train", parents=[common], help="train a tokenizer on the train split")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--pattern", choices=["gpt2", "cl100k", "cl100k_original"], default="cl100k")
    t.add_argument("--special", action="append", default=None,
                   help=f"special token (repeatable; default {EOT})")
    t.add_argument("--out", required=True, help="output prefix: writes OUT.tiktoken and OUT.json")
    e = sub.add_parser("encode", parents=[common], help="encode both splits into llm.c shards")
    e.add_argument("--tokenizer", required=True, help="prefix given to 'tokenize train --out'")
    e.add_argument("--out", required=True, help="shard prefix: OUT_{train,val}_NNNNNN.bin")
    e.add_argument("--shard-size", type=int, default=100_000_000, help="tokens per shard")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (all cores) or more, got {args.threads}")
    if args.threads:
        import llmscratch_core
        llmscratch_core.set_num_threads(args.threads)
    return train(args) if args.tokenize_cmd == "train" else encode(args)


def train(args) -> int:
    from ..tokenizer import Tokenizer
    docs = split_documents(args.source, "train", args.val_fraction)
    items = [Path(d.path) if d.path is not None else d.text for d in docs]
    specials = args.special if args.special is not None else [EOT]
    t0 = time.time()
    if not args.quiet:
        print(f"training a {args.vocab_size}-token {args.pattern} tokenizer on {len(docs)} documents",
              file=sys.stderr)
    tok = Tokenizer.train(items, args.vocab_size, pattern=args.pattern, special_tokens=specials)
    ranks, meta = tok.save(args.out)
    if not args.quiet:
        print(f"wrote {ranks} and {meta} ({tok.n_vocab} ids) in {time.time() - t0:.1f} s")
    return 0


def _encode_split(args, tok, split: str, prefix: str, token_bytes: int) -> list:
    """The split's documents, each after an end-of-text token, into shards PREFIX_NNNNNN.bin of
    args.shard_size tokens; returns their paths."""
    eot = tok.eot_token
    docs = split_documents(args.source, split, args.val_fraction)
    bar = Progress(len(docs), f"encode {split:5s}", not args.quiet)
    buf, fill, total = np.empty(args.shard_size, dtype=np.uint32), 0, 0
    written = []

    def flush():
        nonlocal fill
        path = f"{prefix}_{len(written):06d}.bin"
        write_shard(path, buf[:fill], token_bytes)
        written.append(path)
        fill = 0

    for start in range(0, len(docs), 64):
        group = docs[start:start + 64]
        texts = [d.read() for d in group]
        for ids in tok.encode_batch(texts, disallowed_special=()):
            ids = np.asarray(([eot] if eot is not None else []) + ids, dtype=np.uint32)
            total += len(ids)
            while len(ids):
                take = min(len(ids), args.shard_size - fill)
                buf[fill:fill + take] = ids[:take]
                fill += take
                ids = ids[take:]
                if fill == args.shard_size:
                    flush()
        bar.update(len(group), sum(len(t.encode("utf-8", "replace")) for t in texts))
    if fill or not written:
        flush()
    bar.close()
    if not args.quiet:
        print(f"{split}: {len(docs)} documents, {total} tokens in {len(written)} shard(s) "
              f"{os.path.basename(args.out)}_{split}_000000.bin..")
    return written


def encode(args) -> int:
    from ..tokenizer import Tokenizer
    tok = Tokenizer.load(args.tokenizer)
    if args.shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {args.shard_size}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    token_bytes = 2 if tok.n_vocab <= 65536 else 4
    # Both splits are written under a temporary prefix and take their names only once both are
    # complete, replacing every shard of an earlier encode to the same prefix (which may have had
    # more): a reader's glob never mixes two encodes, and an interrupted encode leaves the earlier
    # shards as they were (its staged shards are removed).
    staging = f"{args.out}.tmp-{os.getpid()}"
    written = {}
    try:
        for split in ("val", "train"):
            written[split] = _encode_split(args, tok, split, f"{staging}_{split}", token_bytes)
        for split, paths in written.items():
            for i, path in enumerate(paths):
                os.replace(path, f"{args.out}_{split}_{i:06d}.bin")
            for old in glob.glob(f"{glob.escape(args.out)}_{split}_[0-9][0-9][0-9][0-9][0-9][0-9].bin"):
                if int(old[-10:-4]) >= len(paths):
                    os.remove(old)
    finally:
        for path in glob.glob(f"{glob.escape(staging)}_*.bin"):
            os.remove(path)
    return 0
