"""Files written whole or not at all, and read with errors that name them: shared by the
checkpoints, the run's config and log, and the tokenizer."""
import json
import os


def fsync(path: str):
    """Flush a file's data, or a folder's entries (a rename is durable once its folder is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data: bytes):
    """Replace the file at path with data in one step, flushed to disk."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync(os.path.dirname(path) or ".")


def atomic_write_text(path, text: str):
    atomic_write(path, text.encode())


def read_json(path, damaged: str):
    """The JSON at path; ValueError "<damaged> (<the parser's reason>)" when it does not parse."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{damaged} ({e})") from None
