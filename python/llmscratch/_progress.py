"""A one-line progress bar with an ETA on stderr, redrawn a few times a second."""
import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    def __init__(self, total: int, what: str, enabled: bool = True, start: int = 0):
        self.total, self.what, self.n, self.start, self.nbytes = max(total, 1), what, start, start, 0
        self.t0 = self.last = time.time()
        self.enabled = enabled and total > 0

    def update(self, n: int = 1, nbytes: int = 0, note: str = ""):
        """Advance by n items (and nbytes, shown as MB/s when given); note is appended."""
        self.n += n
        self.nbytes += nbytes
        now = time.time()
        if not self.enabled or (now - self.last < 0.2 and self.n < self.total):
            return
        self.last = now
        frac = min(self.n / self.total, 1.0)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        elapsed = max(now - self.t0, 1e-9)
        text = f"\r{self.what} [{bar}] {100 * frac:5.1f}% {self.n}/{self.total}"
        if self.nbytes:
            text += f" {self.nbytes / 1e6 / elapsed:6.2f} MB/s"
        done = self.n - self.start
        if 0 < done and self.n < self.total:
            text += f" eta {_duration((self.total - self.n) * elapsed / done)}"
        sys.stderr.write(text + (f"  {note}" if note else "") + "\033[K")
        sys.stderr.flush()

    def clear(self):
        """Erase the bar so that a log line can be printed; the next update redraws it."""
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.last = 0.0

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
