"""DataLoader: (B, T+1) windows of tokens from memory-mapped llm.c shards.

The shards are cut into windows of T+1 tokens starting every T tokens (consecutive windows share
one token, as llm.c's loader reads them; inputs are ``batch[:, :-1]``, targets ``batch[:, 1:]``).
Window g of the global stream (g = 0, 1, 2, ...) is window ``order_e[g % N]`` of epoch
``e = g // N``, where N is the number of windows and ``order_e`` is the identity (sequential)
or a permutation drawn from numpy's PCG64 seeded with (seed, e).

Step s of a run with ``world_size`` ranks takes global windows ``[s*W*B, (s+1)*W*B)`` and rank r
gets the r-th block of B of them. So a batch is a pure function of (seed, step, rank,
world_size): a run resumed at step s sees exactly the batches it would have seen, and the W
ranks of a data-parallel run together see the batches of a one-rank run with batch W*B.

A background thread prefetches the next batches in order. For a CUDA device each batch is
staged in pinned (page-locked) host memory and copied with ``non_blocking=True`` on the current
stream, so the copy overlaps the host's work; the pinned-memory cache hands a staging block out
again only after the copies reading it have finished (an event recorded with each copy), so a
later batch never overwrites one still in flight. On the CPU the batch is the tensor itself.
"""
from __future__ import annotations

import glob
import operator
import os
import queue
import re
import threading
import traceback
import weakref

import numpy as np

from .._settings import setting_conflicts
from .shards import read_shard


def _expand(shards) -> list[str]:
    if isinstance(shards, (str, os.PathLike)):
        s = os.fspath(shards)
        if os.path.isdir(s):
            found = sorted(glob.glob(os.path.join(s, "*.bin")))
            splits = {m[1] for m in (re.search(r"_(train|val)(?:_\d+)?\.bin$", os.path.basename(p))
                                     for p in found) if m}
            if splits == {"train", "val"}:
                raise ValueError(f"DataLoader: {s} holds the shards of both splits (*_train_*.bin and "
                                 f"*_val_*.bin); pass a glob of one, e.g. {os.path.join(s, '*_train_*.bin')}")
        elif any(c in s for c in "*?["):
            found = sorted(glob.glob(s))
        else:
            found = [s]
    else:
        found = [os.fspath(p) for p in shards]
    if not found:
        raise ValueError(f"DataLoader: no shards found for {shards!r}")
    return found


def _count(name: str, v, lo: int) -> int:
    """v as an int >= lo (numpy integers too; bools and floats refused)."""
    try:
        n = operator.index(v)
    except TypeError:
        n = None
    if isinstance(v, bool) or n is None or n < lo:
        raise ValueError(f"DataLoader: {name} must be an int >= {lo}, got {v!r}")
    return n


def _physical_memory() -> int | None:
    """This machine's memory in bytes, None where the OS does not say."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None  # -1: indeterminate


class DataLoader:
    def __init__(self, shards, batch_size: int, seq_len: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, device="cpu", start_step: int = 0,
                 prefetch: int = 2, as_numpy: bool = False):
        batch_size, seq_len, world_size, start_step, seed, prefetch = (
            _count(name, v, lo) for name, v, lo in (
                ("batch_size", batch_size, 1), ("seq_len", seq_len, 1), ("world_size", world_size, 1),
                ("start_step", start_step, 0), ("seed", seed, 0), ("prefetch", prefetch, 0)))
        rank = _count("rank", rank, 0)
        # A batch (and the window indices of windows()) larger than the machine's memory: refused
        # here, since where the OS hands such an allocation out anyway (overcommit), filling it
        # gets the process killed instead of raising.
        need, have = batch_size * (seq_len + 5) * 8, _physical_memory()
        if have is not None and need > have:
            raise MemoryError(f"DataLoader: a batch of {batch_size} x {seq_len + 1} tokens needs "
                              f"{need / 2**30:.1f} GiB, more than this machine's {have / 2**30:.1f} GiB")
        if rank >= world_size:
            raise ValueError(f"DataLoader: rank must be in [0, {world_size}), got {rank!r}")
        self.paths = _expand(shards)
        self.B, self.T = batch_size, seq_len
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.device, self.as_numpy = device, as_numpy
        self.step = start_step
        self.prefetch = prefetch
        self._data = [read_shard(p) for p in self.paths]
        counts = np.array([max(0, (len(d) - 1) // seq_len) for d in self._data], dtype=np.int64)
        self.num_windows = int(counts.sum())
        if self.num_windows == 0:
            raise ValueError(f"DataLoader: the shards hold fewer than seq_len+1 = {seq_len + 1} tokens "
                             f"each ({[len(d) for d in self._data]})")
        self._cum = np.concatenate([[0], np.cumsum(counts)])
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._thread = None
        self._queue = None
        self._stop = threading.Event()

    # ---------------------------------------------------------------- pure batch function
    def _order(self, epoch: int) -> np.ndarray | None:
        if not self.shuffle:
            return None
        # One read of the cache slot: the prefetch thread and the caller may both be here.
        cached = self._order_cache
        if cached is None or cached[0] != epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            cached = (epoch, rng.permutation(self.num_windows))
            self._order_cache = cached
        return cached[1]

    def windows(self, step: int) -> np.ndarray:
        """Global window indices (into the unshuffled window list) of this rank's batch at step."""
        step = _count("step", step, 0)
        first = (step * self.world_size + self.rank) * self.B
        g = np.arange(first, first + self.B, dtype=np.int64)
        epoch, pos = g // self.num_windows, g % self.num_windows
        out = pos.copy()
        for e in np.unique(epoch):
            order = self._order(int(e))
            if order is not None:
                sel = epoch == e
                out[sel] = order[pos[sel]]
        return out

    def batch_numpy(self, step: int) -> np.ndarray:
        """This rank's batch at ``step`` as an int64 array of shape (B, T+1)."""
        out = np.empty((self.B, self.T + 1), dtype=np.int64)
        for i, w in enumerate(self.windows(step)):
            k = int(np.searchsorted(self._cum, w, side="right") - 1)
            start = int(w - self._cum[k]) * self.T
            out[i] = self._data[k][start:start + self.T + 1]
        return out

    def batch(self, step: int):
        arr = self.batch_numpy(step)
        if self.as_numpy:
            return arr
        return self._to_device(arr)

    def _to_device(self, arr: np.ndarray):
        import llmscratch
        t = llmscratch.from_numpy(arr)
        if str(self.device) == "cpu":
            return t
        if str(self.device).startswith("cuda"):
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # ---------------------------------------------------------------- iteration + prefetch
    # What decides the batches besides (seed, step): a state loads only into a loader that agrees.
    # (The rank is not: a rank's batches follow from the state with its own rank, so one rank's
    # saved state serves every rank.)
    _STATE_LAYOUT = ("batch_size", "seq_len", "num_windows", "shuffle", "world_size")

    def state_dict(self) -> dict:
        return {"seed": self.seed, "step": self.step, "batch_size": self.B, "seq_len": self.T,
                "num_windows": self.num_windows, "shuffle": self.shuffle, "rank": self.rank,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict: the seed and step are taken; the layout must match (a
        state of another batch size, window count, shuffling or rank would resume on other
        batches); a key an older state lacks is not compared."""
        differ = setting_conflicts(state, self.state_dict(), self._STATE_LAYOUT)
        if differ:
            raise ValueError(f"DataLoader.load_state_dict: the state is of another loader ({'; '.join(differ)})")
        seed, step = _count("seed", state["seed"], 0), _count("step", state["step"], 0)
        self._stop_thread()
        self.seed, self.step = seed, step
        self._order_cache = None

    @staticmethod
    def _worker(loader_ref, start: int, q: queue.Queue, stop: threading.Event):
        # The thread holds the loader weakly, so a loader that is dropped without close() is
        # collected (its __del__ stops the thread) instead of living as long as its thread.
        step = start
        while not stop.is_set():
            loader = loader_ref()
            if loader is None:
                return
            try:
                item = (step, loader.batch_numpy(step), None)
            except BaseException as e:  # handed to the consumer
                traceback.clear_frames(e.__traceback__)  # its frames would hold the loader
                item = (step, None, e)
            del loader
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    if loader_ref() is None:
                        return
            if item[2] is not None:
                return
            step += 1

    def _stop_thread(self):
        if self._thread is not None:
            self._stop.set()
            if self._thread is not threading.current_thread():  # __del__ may run on the worker
                self._thread.join()
            self._thread, self._queue = None, None
            self._stop = threading.Event()

    def next_batch(self):
        """The batch at the current step; advances the step."""
        if self.prefetch == 0:
            arr = self.batch_numpy(self.step)
        else:
            if self._thread is None:
                self._queue = queue.Queue(maxsize=self.prefetch)
                self._thread = threading.Thread(target=DataLoader._worker, daemon=True,
                                                args=(weakref.ref(self), self.step, self._queue, self._stop))
                self._thread.start()
            step, arr, err = self._queue.get()
            assert step == self.step
            if err is not None:
                self._thread = None
                raise err
        try:
            out = arr if self.as_numpy else self._to_device(arr)
        except BaseException:
            self._stop_thread()  # its queue runs ahead of the step that failed: start again there
            raise
        self.step += 1  # after the transfer: a failed one leaves the step to be tried again
        return out

    def __iter__(self):
        while True:
            yield self.next_batch()

    def close(self):
        self._stop_thread()

    def __del__(self):
        try:
            self._stop_thread()
        except Exception:
            pass
