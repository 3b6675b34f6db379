"""Text sources and the deterministic train/validation split.

A source is named by a string:

- ``stdlib``: the Python standard library's own ``.py`` files, found at run time under
  ``sysconfig.get_paths()["stdlib"]`` (about 12 MB, ~730 files on CPython 3.11). Tests are left
  out: any folder named ``test``, ``tests`` or ``idle_test``, files named ``test_*.py``, and
  ``site-packages``. It exists on every machine with Python, so nothing is downloaded.
- a ``.jsonl`` file, optionally ``path.jsonl:field`` (default field ``text``): one document per line.
- a directory (every file under it with a text suffix: .txt .md .py .rst .c .h .cpp .json ...)
- a glob (``data/*.txt``) or a single text file.

Documents are identified by their path relative to the source root (``path#line`` for JSONL
lines). The split is a pure function of that id: a document is in validation when the first 8
hex digits of sha1(id), read as a number, modulo 10000, fall below ``val_fraction * 10000``. A
document (a whole file for file sources) is therefore in exactly one split, on every machine,
whatever the order in which files are found. Where that leaves one split empty (a source of few
documents), validation is the ``round(n * val_fraction)`` documents (at least one, at most n - 1)
of lowest hash instead; and a source of a single document (one text file) is split within it:
its last ``val_fraction`` of characters, from the start of a line where one begins inside it, is
validation and the rest training.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".c", ".h", ".cc", ".cpp", ".hpp", ".json", ".js",
                 ".ts", ".rs", ".go", ".java", ".html", ".css", ".tex", ".csv", ".toml", ".yaml",
                 ".yml", ".sh"}
_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


@dataclass(frozen=True)
class Document:
    id: str                    # stable id, relative to the source root (the split hashes it)
    path: str | None = None    # file to read, for file documents
    text: str | None = None    # the text, for JSONL documents

    def read(self) -> str:
        if self.text is not None:
            return self.text
        with open(self.path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")


def _hash(doc_id: str) -> int:
    return int(hashlib.sha1(doc_id.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16)


def in_validation(doc_id: str, val_fraction: float) -> bool:
    return (_hash(doc_id) % 10000) < round(val_fraction * 10000)


def stdlib_files() -> list[tuple[str, str]]:
    """(relative id, absolute path) of the standard library's .py files, tests excluded, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _STDLIB_SKIP_DIRS)
        for f in sorted(files):
            if f.endswith(".py") and not f.startswith("test_"):
                p = os.path.join(d, f)
                out.append((os.path.relpath(p, root).replace(os.sep, "/"), p))
    return sorted(out)


def _files_under(root: str) -> list[tuple[str, str]]:
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for f in files:
            p = os.path.join(d, f)
            # regular files only: a FIFO named *.txt would block the read forever
            if Path(f).suffix.lower() in TEXT_SUFFIXES and os.path.isfile(p):
                out.append((os.path.relpath(p, root).replace(os.sep, "/"), p))
    return sorted(out)


def _jsonl(path: str, field: str) -> Iterator[Document]:
    name = os.path.basename(path)
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or field not in obj:
                raise ValueError(f"{path}:{lineno}: no field {field!r}")
            text = obj[field]
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: field {field!r} is {type(text).__name__}, not a string")
            yield Document(id=f"{name}#{lineno}", text=text)


def documents(source: str) -> Iterator[Document]:
    """Every document of a source, in a fixed order."""
    source = os.fspath(source)
    if source == "stdlib":
        for rel, p in stdlib_files():
            yield Document(id=rel, path=p)
        return
    path, field = source, "text"
    if ".jsonl:" in source:
        path, field = source.rsplit(":", 1)
    if path.endswith(".jsonl"):
        if not os.path.isfile(path):
            raise ValueError(f"source {source!r}: no such file")
        yield from _jsonl(path, field)
        return
    if os.path.isdir(path):
        files = _files_under(path)
    elif any(c in path for c in "*?["):
        base = os.path.dirname(path.split("*")[0].split("?")[0].split("[")[0]) or "."
        files = sorted((os.path.relpath(p, base).replace(os.sep, "/"), p)
                       for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    elif os.path.isfile(path):
        files = [(os.path.basename(path), path)]
    else:
        raise ValueError(f"source {source!r}: not 'stdlib', a file, a directory, a glob or a .jsonl")
    if not files:
        raise ValueError(f"source {source!r}: no text files found")
    for rel, p in files:
        yield Document(id=rel, path=p)


def split_documents(source: str, split: str = "all", val_fraction: float = 0.01) -> list[Document]:
    """The documents of one split: 'train', 'val' or 'all'."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    docs = list(documents(source))
    if split == "all":
        return docs
    want_val = split == "val"
    val_ids = {d.id for d in docs if in_validation(d.id, val_fraction)}
    if val_fraction > 0 and len(val_ids) in (0, len(docs)):  # one split would be empty
        if len(docs) == 1:
            return _held_out_tail(docs[0], val_fraction, want_val)
        k = min(max(1, round(len(docs) * val_fraction)), len(docs) - 1)
        val_ids = {d.id for d in sorted(docs, key=lambda d: (_hash(d.id) % 10000, d.id))[:k]}
    return [d for d in docs if (d.id in val_ids) == want_val]


def _held_out_tail(doc: Document, val_fraction: float, want_val: bool) -> list[Document]:
    """The validation part of doc (its last val_fraction of characters, from the start of a line
    where one begins inside it) or the training part (the rest), as a document of its own."""
    text = doc.read()
    cut = len(text) - max(1, round(len(text) * val_fraction))
    newline = text.find("\n", cut, len(text) - 1)
    if newline >= 0:
        cut = newline + 1
    part = text[cut:] if want_val else text[:cut]
    return [Document(id=f"{doc.id}#{'val' if want_val else 'train'}", text=part)] if part else []
