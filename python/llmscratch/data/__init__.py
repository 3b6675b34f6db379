"""Data pipeline: text sources with a deterministic split, llm.c token shards, and a
memory-mapped, seeded, resumable DataLoader. Nothing here imports torch."""
from .loader import DataLoader
from .shards import read_shard, shard_info, write_shard
from .sources import Document, documents, in_validation, split_documents, stdlib_files

__all__ = ["DataLoader", "Document", "documents", "in_validation", "read_shard", "shard_info",
           "split_documents", "stdlib_files", "write_shard"]
