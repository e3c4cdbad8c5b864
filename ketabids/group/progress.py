"""Compact progress of long group-level loops (nested CV, permutations) on stderr."""
from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """One updating line on a terminal, else a line per ~10 %; a callable ``(done, total)``."""

    def __init__(self, what: str, enabled: bool = True, stream=None):
        self.what, self.enabled = what, enabled
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        tty = getattr(self.stream, "isatty", lambda: False)()
        decile = int(10 * done / total)
        if not tty and decile == self._last and done != total:
            return
        self._last = decile
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (total - done) if done else 0.0
        line = f"ketabids: {self.what} {done}/{total} ({elapsed:.0f} s, ~{eta:.0f} s left)"
        self.stream.write(("\r" + line + ("\n" if done == total else "")) if tty else line + "\n")
        self.stream.flush()
