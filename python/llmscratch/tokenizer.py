"""Byte-level BPE tokenizer (C++ core, tiktoken-compatible).

``Tokenizer.train(...)`` learns a vocabulary; ``encode``/``decode`` apply it exactly as tiktoken
applies the same ranks with the same pattern. ``save(prefix)`` writes ``prefix.tiktoken`` (one
``base64(token bytes) rank`` line per token, tiktoken's format) and ``prefix.json`` (pattern and
special tokens); ``to_tiktoken()`` builds the equivalent ``tiktoken.Encoding``.

Patterns: ``"gpt2"``, ``"cl100k"`` (GPT-4's cl100k_base as tiktoken ships it) and
``"cl100k_original"`` (its first published regex; it differs only on a white-space run with a
newline at the very end of a text), pre-tokenizers written by hand in C++ with full Unicode
letter/number classes. Training is deterministic: the most frequent adjacent pair is
merged first, ties go to the smallest (left id, right id); bytes 0..255 are ranks 0..255.
"""
from __future__ import annotations

import base64
import json
import operator
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

import llmscratch_core as _core

from ._files import atomic_write

PATTERNS = ("gpt2", "cl100k", "cl100k_original")


def _token_names(tokens) -> list:
    """Special tokens given as one string (one token, not its characters) or as an iterable."""
    return [tokens] if isinstance(tokens, str) else list(tokens)


def _id_array(ids) -> np.ndarray:
    """ids as a flat int64 array. Floats and bools are refused, not cast: the cast would read
    97.7 as id 97 and True as id 1."""
    arr = np.asarray(ids)
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"decode: ids must be integers, got an array of {arr.dtype}")
    # numpy reads a list mixing ints and bools as ints, so a list's bools are looked for
    if isinstance(ids, (list, tuple)) and any(isinstance(v, (bool, np.bool_))
                                              for v in np.asarray(ids, dtype=object).reshape(-1)):
        raise TypeError("decode: ids must be integers, got a bool")
    return arr.astype(np.int64, copy=False).reshape(-1)


def _clean(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded; like tiktoken, replace them by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def check_prefix(prefix, op: str) -> None:
    """A save prefix names files (PREFIX.tiktoken, PREFIX.json): "" had written ./..json, and
    "out/" out.json beside the folder."""
    name = os.fspath(prefix)
    if not name or name.endswith(("/", os.sep)) or Path(name).is_dir():
        raise ValueError(f"{op}: the prefix must name files (e.g. out/tok), got {name!r}")


class Tokenizer:
    def __init__(self, ranks: Sequence[bytes], pattern: str = "cl100k",
                 special_tokens: dict[str, int] | None = None):
        if pattern not in PATTERNS:
            raise ValueError(f"Tokenizer: pattern must be one of {PATTERNS}, got {pattern!r}")
        self.special_tokens = dict(special_tokens or {})
        self._bpe = _core.BPE(list(ranks), sorted(self.special_tokens.items(), key=lambda kv: kv[1]),
                              pattern)
        self.pattern = pattern

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, texts_or_paths: Iterable, vocab_size: int, pattern: str = "cl100k",
              special_tokens: Sequence[str] = ()) -> "Tokenizer":
        """Learn a vocabulary of ``vocab_size`` ids (256 bytes + merges + special tokens).
        ``str`` items are texts; ``pathlib.Path`` items (or a single Path) are files read as
        bytes; pieces are counted on all threads. Texts too small for that many merges (no
        adjacent pair left to merge) give a smaller vocabulary, with a warning."""
        if isinstance(texts_or_paths, (str, os.PathLike)):
            texts_or_paths = [texts_or_paths]
        texts, paths = [], []
        for item in texts_or_paths:
            if isinstance(item, os.PathLike):
                paths.append(os.fspath(item))
            elif isinstance(item, str):
                texts.append(_clean(item))
            elif isinstance(item, bytes):
                texts.append(item.decode("utf-8", "replace"))
            else:
                raise TypeError(f"Tokenizer.train: expected str texts or Path files, got {type(item).__name__}")
        specials = list(dict.fromkeys(_token_names(special_tokens)))
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
            raise ValueError(f"Tokenizer.train: vocab_size must be an int >= 256 + number of special "
                             f"tokens ({256 + len(specials)}), got {vocab_size!r}")
        n_ordinary = vocab_size - len(specials)
        ranks = _core.train_bpe(texts, paths, n_ordinary, pattern)
        base = len(ranks)
        if base < n_ordinary:
            warnings.warn(f"Tokenizer.train: the texts have adjacent pairs for only {base - 256} of "
                          f"the {n_ordinary - 256} merges asked for, so the vocabulary has "
                          f"{base + len(specials)} ids instead of {vocab_size}", stacklevel=2)
        return cls(ranks, pattern, {s: base + i for i, s in enumerate(specials)})

    # ------------------------------------------------------------------ encoding
    @property
    def n_vocab(self) -> int:
        return self._bpe.vocab_size

    vocab_size = n_vocab

    @property
    def eot_token(self) -> int | None:
        return self.special_tokens.get("<|endoftext|>")

    def _allowed(self, text: str, allowed_special, disallowed_special) -> list[str]:
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        else:
            allowed = set(_token_names(allowed_special))
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise ValueError(f"encode: {sorted(unknown)} are not special tokens of this tokenizer")
        if disallowed_special == "all":
            disallowed = set(self.special_tokens) - allowed
        else:
            disallowed = set(_token_names(disallowed_special))
        for s in disallowed:
            if s in text:
                raise ValueError(f"encode: the text contains the special token {s!r}; pass "
                                 f"allowed_special={{{s!r}}} to encode it as a special token, or "
                                 f"disallowed_special=() to encode it as ordinary text")
        return sorted(allowed)

    def encode_to_numpy(self, text: str, allowed_special=(), disallowed_special="all") -> np.ndarray:
        """Token ids as a numpy uint32 array (no Python list; long texts use all threads)."""
        text = _clean(text)
        return self._bpe.encode(text, self._allowed(text, allowed_special, disallowed_special))

    def encode(self, text: str, allowed_special=(), disallowed_special="all") -> list[int]:
        return self.encode_to_numpy(text, allowed_special, disallowed_special).tolist()

    def encode_ordinary(self, text: str) -> list[int]:
        return self._bpe.encode(_clean(text)).tolist()

    def encode_batch(self, texts: Sequence[str], allowed_special=(), disallowed_special="all") -> list[list[int]]:
        texts = [_clean(t) for t in texts]
        allowed = set()
        for t in texts:
            allowed.update(self._allowed(t, allowed_special, disallowed_special))
        return self._bpe.encode_batch(texts, sorted(allowed))

    def decode_bytes(self, ids) -> bytes:
        return self._bpe.decode_bytes(_id_array(ids))

    def decode(self, ids, errors: str = "replace") -> str:
        """Text of the ids; invalid UTF-8 (a multi-byte character cut between tokens) becomes
        U+FFFD with the default errors="replace"."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, id: int) -> bytes:
        try:  # as decode: an integer (a 0-d integer array or tensor too), never a cast
            if isinstance(id, bool):
                raise TypeError
            id = operator.index(id)
        except TypeError:
            raise TypeError(f"token_bytes: id must be an integer, got {id!r}") from None
        return self._bpe.token_bytes(id)

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        return {t: i for i, t in enumerate(self._bpe.tokens())}

    # ------------------------------------------------------------------ files
    def save(self, prefix) -> tuple[Path, Path]:
        """Write ``prefix.tiktoken`` (tiktoken's ranks format) and ``prefix.json``."""
        check_prefix(prefix, "Tokenizer.save")
        prefix = Path(prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        ranks_path, meta_path = Path(f"{prefix}.tiktoken"), Path(f"{prefix}.json")
        lines = [base64.b64encode(t) + b" " + str(i).encode() for i, t in enumerate(self._bpe.tokens())]
        atomic_write(ranks_path, b"\n".join(lines) + b"\n")
        meta = {"format": "llmscratch-bpe", "version": 1, "pattern": self.pattern,
                "pat_str": _core.pattern_regex(self.pattern), "special_tokens": self.special_tokens,
                "ranks": ranks_path.name}
        atomic_write(meta_path, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode())
        return ranks_path, meta_path

    @classmethod
    def load(cls, prefix, pattern: str | None = None,
             special_tokens: dict[str, int] | None = None) -> "Tokenizer":
        """Load what ``save(prefix)`` wrote (``prefix`` may also name either file). A ranks file
        without its JSON (e.g. a ranks file of tiktoken's) needs ``pattern`` (and the special
        tokens, if any); given arguments override the JSON."""
        p = str(prefix)
        for suffix in (".tiktoken", ".json"):
            if p.endswith(suffix):
                p = p[: -len(suffix)]
        meta_path, ranks_path = Path(p + ".json"), Path(p + ".tiktoken")
        if not ranks_path.exists() and Path(str(prefix)).is_file():
            ranks_path = Path(str(prefix))  # a ranks file under another name
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a damaged file, named
            raise ValueError(f"Tokenizer.load: {meta_path} is not valid JSON: {e}") from None
        specials = meta.get("special_tokens", {}) if isinstance(meta, dict) else None
        if not isinstance(specials, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in specials.values()):
            raise ValueError(f"Tokenizer.load: {meta_path} is damaged: it must be an object whose "
                             f"special_tokens map names to integer ids")
        if pattern is None and "pattern" not in meta:
            raise ValueError(f"Tokenizer.load: {meta_path} is missing; pass pattern= "
                             f"(one of {PATTERNS}) for a bare ranks file")
        pattern = pattern or meta["pattern"]
        if special_tokens is None:
            special_tokens = dict(specials)
        return cls(load_tiktoken_ranks(ranks_path), pattern, special_tokens)

    def to_tiktoken(self, name: str = "llmscratch"):
        """The equivalent ``tiktoken.Encoding`` (needs the tiktoken package)."""
        import tiktoken
        return tiktoken.Encoding(name, pat_str=_core.pattern_regex(self.pattern),
                                 mergeable_ranks=self.mergeable_ranks,
                                 special_tokens=dict(self.special_tokens))

    def __repr__(self):
        return (f"Tokenizer(pattern={self.pattern!r}, n_vocab={self.n_vocab}, "
                f"special_tokens={len(self.special_tokens)})")


def load_tiktoken_ranks(path) -> list[bytes]:
    """Token bytes by rank from a tiktoken ranks file; ranks must be 0..n-1 (any line order),
    each on one line."""
    by_rank, line_of = {}, {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                tok, rank = line.split()
                rank, tok = int(rank), base64.b64decode(tok, validate=True)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not a 'base64 rank' line ({e})") from None
            if rank in by_rank:  # a dict would keep the last one silently
                raise ValueError(f"{path}:{lineno}: rank {rank} repeats (first on line "
                                 f"{line_of[rank]})")
            by_rank[rank], line_of[rank] = tok, lineno
    n = len(by_rank)
    if sorted(by_rank) != list(range(n)):
        raise ValueError(f"{path}: ranks must be 0..{n - 1} without gaps")
    return [by_rank[i] for i in range(n)]


