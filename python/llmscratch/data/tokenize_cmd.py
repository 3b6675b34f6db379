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
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from .._files import atomic_write_text, fsync, stale_temporaries
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
    from ..tokenizer import Tokenizer, check_prefix
    check_prefix(args.out, "Tokenizer.save")  # before the training it would throw away
    docs = split_documents(args.source, "train", args.val_fraction)
    items = [_training_item(d) for d in docs]
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


def _training_item(doc):
    """doc for Tokenizer.train, read as encode reads it (Document.read: invalid UTF-8 replaced by
    U+FFFD), so that the merges are learned on the text the shards hold. A file whose text has no
    U+FFFD is valid UTF-8, the same as its bytes: it goes as its Path, read by the trainer, so
    that the corpus is held once (by the trainer) rather than also as Python strings."""
    text = doc.read()
    if doc.path is None or "\ufffd" in text:
        return text
    try:  # a name that is not UTF-8 (surrogates) cannot cross to the trainer as a path
        doc.path.encode("utf-8")
    except UnicodeEncodeError:
        return text
    return Path(doc.path)


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
    # complete, in one transaction (_publish) replacing every shard of an earlier encode to the
    # same prefix (which may have had more): an encode that fails or is interrupted, at any point,
    # leaves the earlier shards as they were (its staged shards are removed), and one killed while
    # publishing is rolled back by the next encode to the prefix (_recover). Flat names cannot
    # change in one rename, so a reader globbing during the publication's renames (milliseconds)
    # may still see shards of both encodes.
    _recover(args.out)
    staging = _temporary(args.out, "tmp", os.getpid())
    written = {}
    try:
        for split in ("val", "train"):
            written[split] = _encode_split(args, tok, split, f"{staging}_{split}", token_bytes)
        _publish(args.out, written)
    finally:
        for path in glob.glob(f"{glob.escape(staging)}_*.bin"):
            os.remove(path)
    return 0


# ---- publishing shards ---------------------------------------------------------------------
# An encode to DIR/NAME stages its shards as DIR/.NAME.tmp-PID_{split}_NNNNNN.bin; publishing
# writes the journal DIR/.NAME.publish-PID, renames the earlier shards aside
# (DIR/.NAME.old-PID_...), the staged ones into place, and commits by removing the journal. These
# names are hidden: no glob of shards (DIR/*_train_*.bin, DIR/*.bin) picks them up.

def _temporary(prefix: str, kind: str, pid: int) -> str:
    folder, name = os.path.split(prefix)
    return os.path.join(folder, f".{name}.{kind}-{pid}")


def _published(prefix: str) -> list:
    """The shards of both splits under prefix."""
    return sorted(p for split in ("val", "train")
                  for p in glob.glob(f"{glob.escape(prefix)}_{split}_[0-9][0-9][0-9][0-9][0-9][0-9].bin"))


def _aside(prefix: str, name: str, pid: int) -> str:
    """Where publication pid sets the shard named name (a basename, or a path: only its last
    component counts) of prefix aside. Built from the prefix as spelled now, so that a journal
    written under another working directory or spelling still finds its shards."""
    return _temporary(prefix, "old", pid) + os.path.basename(name)[len(os.path.basename(prefix)):]


def _in_folder(prefix: str, name: str) -> str:
    """The shard named name (a journal's basename; an older journal's whole path) in prefix's folder."""
    return os.path.join(os.path.dirname(prefix), os.path.basename(name))


def _publish(prefix: str, written: dict):
    """Give the staged shards {split: [paths]} their names, replacing every earlier shard of
    prefix, all or nothing: an error or Ctrl-C before the commit rolls back at once."""
    pid = os.getpid()
    folder = os.path.dirname(prefix) or "."
    new = {path: f"{prefix}_{split}_{i:06d}.bin"
           for split, paths in written.items() for i, path in enumerate(paths)}
    old = _published(prefix)
    journal = _temporary(prefix, "publish", pid)
    try:
        # basenames: a later encode may spell the prefix otherwise (another working directory)
        atomic_write_text(journal, json.dumps({"old": [os.path.basename(p) for p in old],
                                               "new": [os.path.basename(p) for p in new.values()]}))
        for path in old:  # all aside before any new one arrives: a roll back can tell them apart
            os.rename(path, _aside(prefix, path, pid))
        for staged, final in new.items():
            os.rename(staged, final)
        fsync(folder)
    except BaseException:
        _roll_back(prefix, pid)
        raise
    os.remove(journal)  # the commit
    fsync(folder)  # durable before the asides go: a journal must not come back without them
    for path in old:
        os.remove(_aside(prefix, path, pid))


def _roll_back(prefix: str, pid: int):
    """Undo the publication that process pid's journal describes: the new shards it gave names to
    removed, the earlier ones set aside renamed back. Where an earlier shard is neither set aside
    nor in place, or one set aside is missing once new shards arrived, the publication cannot be
    undone whole: it is taken as committed (only the journal goes) rather than half rolled back."""
    journal = _temporary(prefix, "publish", pid)
    folder = os.path.dirname(prefix) or "."
    if not os.path.exists(journal):  # stopped while writing it: nothing was renamed yet
        if os.path.exists(f"{journal}.tmp-{pid}"):  # atomic_write's temporary
            os.remove(f"{journal}.tmp-{pid}")
        return
    with open(journal) as f:
        shards = json.load(f)
    old = [os.path.basename(p) for p in shards["old"]]
    new = [os.path.basename(p) for p in shards["new"] if os.path.basename(p) not in old]
    aside = {name: os.path.exists(_aside(prefix, name, pid)) for name in old}
    lost = any(not aside[n] and not os.path.exists(_in_folder(prefix, n)) for n in old)
    arrived = any(os.path.exists(_in_folder(prefix, n)) for n in new)
    if lost or (arrived and not all(aside.values())):
        os.remove(journal)
        fsync(folder)
        return
    for name in new:
        if os.path.exists(_in_folder(prefix, name)):
            os.remove(_in_folder(prefix, name))
    for name in old:
        if aside[name]:
            os.replace(_aside(prefix, name, pid), _in_folder(prefix, name))
    fsync(folder)
    os.remove(journal)
    fsync(folder)


def _recover(prefix: str):
    """Before an encode to prefix: tidy what earlier encodes to it that were killed left (one that
    fails or is interrupted tidies itself). A journal, of a publication that did not commit, is
    rolled back; then staged and set-aside shards are removed. Files of a process that still runs
    are left alone (another encode to the prefix, under way). A staged shard's own temporary
    (write_shard's SHARD.tmp.PID, PID the same encode process) goes with it."""
    folder, name = os.path.split(prefix)
    left = re.compile(rf"\.{re.escape(name)}\.(tmp|old|publish)-(?P<pid>\d+)"
                      rf"(_(?:train|val)_\d{{6}}\.bin(?:\.tmp\.\d+)?|\.tmp-\d+)?")
    found = stale_temporaries(folder or ".", left)
    for entry, m in found:
        if m[1] == "publish" and m[3] is None:
            _roll_back(prefix, int(m[2]))
    for entry, m in found:
        path = os.path.join(folder, entry)
        if os.path.exists(path):
            os.remove(path)
