"""Capture the ``ketabids`` logger's messages during a whole-pipeline run (tests that read the
run's log lines from a module-scoped fixture, where pytest's ``caplog`` is not available)."""
from __future__ import annotations

import contextlib
import logging


class _Lines(logging.Handler):
    def __init__(self, lines: list[str], level: int):
        super().__init__(level)
        self.lines = lines

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def ketabids_log_lines(level: int = logging.INFO):
    """Yield a list that receives every message of the ``ketabids`` logger at ``level`` or
    above while the block runs; the logger's handlers and level are restored after."""
    lines: list[str] = []
    handler = _Lines(lines, level)
    logger = logging.getLogger("ketabids")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
