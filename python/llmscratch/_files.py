"""Files written whole or not at all, and read with errors that name them: shared by the
checkpoints, the run's config and log, and the tokenizer; and the scan for the temporaries
that a killed writer left (checkpoints, prepared data, encoded shards)."""
import json
import os


def pid_alive(pid: int) -> bool:
    """Whether process pid still runs (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(root, pattern) -> list:
    """(entry, match) for root's entries that pattern (a compiled regex with a group "pid") matches
    whole, in name order, left by a process that no longer runs, or by this one's PID (an earlier
    process of the same number: callers tidy before they make temporaries of their own). Those of
    another process still running are left out: its write is under way."""
    if not os.path.isdir(root):
        return []
    found = []
    for entry in sorted(os.listdir(root)):
        m = pattern.fullmatch(entry)
        if m and (int(m["pid"]) == os.getpid() or not pid_alive(int(m["pid"]))):
            found.append((entry, m))
    return found


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
