"""Token shards in llm.c's ``.bin`` layout.

A header of 256 int32 (magic, version, token count; the rest zero) followed by the tokens:
uint16 with magic 20240520 / version 1 (llm.c's GPT-2 shards), uint32 with magic 20240801 /
version 7 (llm.c's layout for vocabularies above 65535). Writing is atomic (temp file + rename)
and reading validates the header against the file size (the C++ core does both).
"""
from __future__ import annotations

import os

import numpy as np

import llmscratch_core as _core

HEADER_BYTES = 1024


def write_shard(path, tokens, token_bytes: int = 0) -> int:
    """Write ``tokens`` (any integer array-like) to ``path``; token_bytes 2, 4 or 0 (= 2 when every
    token fits uint16). Returns the token count."""
    arr = np.asarray(tokens)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"write_shard: tokens must be a 1-D integer array, got shape {arr.shape} "
                         f"dtype {arr.dtype}")
    if arr.size and arr.dtype == np.uint64 and int(arr.max()) >= 1 << 63:  # int64 would wrap it negative
        at = int(np.argmax(arr >= np.uint64(1 << 63)))
        raise ValueError(f"write_shard: token {int(arr[at])} at position {at} is out of range")
    n, _, _ = _core.write_shard(os.fspath(path), arr.astype(np.int64, copy=False), token_bytes)
    return n


def shard_info(path) -> tuple[int, int]:
    """(num_tokens, token_bytes) of a validated shard; ValueError on a corrupted one."""
    n, width, _ = _core.read_shard_info(os.fspath(path))
    return n, width


def read_shard(path) -> np.ndarray:
    """The tokens of a shard as a read-only memory map (uint16 or uint32), validated first."""
    n, width, offset = _core.read_shard_info(os.fspath(path))
    dtype = np.uint16 if width == 2 else np.uint32
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(os.fspath(path), dtype=dtype, mode="r", offset=offset, shape=(n,))
