"""Staged publishing of a group-level output folder: all of a run's results or none.

A run writes into a temporary folder next to its final place (``.<name>.tmp-*``); on success the
folder is swapped in (the previous results are removed only once the new ones are in place), on
any error it is deleted. So a rerun replaces the previous results as a whole and an interrupted
run leaves the previous results untouched.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path


__all__ = ["staged", "listing"]


@contextlib.contextmanager
def staged(final: Path):
    """Yield a temporary folder next to ``final``; swap it in on success, delete it on failure."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield stage
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{time.time_ns()}")
            final.rename(old)
        try:
            stage.rename(final)
        except OSError:
            if old is not None:
                old.rename(final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def listing(folder: Path) -> dict:
    """``{file name: path}`` of a published folder, sorted by name."""
    folder = Path(folder)
    return {name: str(folder / name) for name in sorted(p.name for p in folder.iterdir())}
