"""Staged publishing of a group-level output folder: all of a run's results or none.

A run writes into a staging folder next to its final place (``.<name>.stage-<host>-<pid>-*``,
:func:`ketabids.io.staged_dir`); on success the folder is swapped in (the previous results are
removed only once the new ones are in place), on any error (a full disk and SIGTERM included)
it is deleted, with the ``group/`` folder it created. Folders and files honour the umask.
:func:`run_lock` keeps two runs from writing the same analysis at once.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from ketabids import io
from ketabids.errors import OutputExistsError

__all__ = ["staged", "listing", "run_lock", "refuse_existing"]


@contextlib.contextmanager
def staged(final: Path, *, overwrite: bool = True, option: str = "--overwrite"):
    """Yield a staging folder next to ``final``; swap it in on success, delete it on failure.
    An existing ``final`` is replaced only with ``overwrite`` (else exit 73 naming ``option``)."""
    with io.staged_dir(final, overwrite=overwrite, option=option) as stage:
        yield stage


def refuse_existing(final: Path, *, overwrite: bool, what: str) -> None:
    """Before any work: an existing ``final`` (e.g. a model that may be in use) is not replaced
    without ``--overwrite`` (:class:`~ketabids.errors.OutputExistsError`, exit 73)."""
    if Path(final).exists() and not overwrite:
        raise OutputExistsError(
            f"{final}: {what} already exists and its model may be in use; pass --overwrite to "
            "replace it, or train into another OUTPUT_DIR")


@contextlib.contextmanager
def run_lock(output_dir: Path, name: str):
    """Exclusive lock of the analysis ``group/<name>`` of ``output_dir`` for the block: a
    second run gets exit 73 naming the run that holds it. The lock file
    (``OUTPUT_DIR/.group-<name>.lock``) sits in OUTPUT_DIR, so a refused or failed run leaves no
    ``group/`` folder behind."""
    with io.exclusive_lock(Path(output_dir) / f"group-{name}", what=f"group/{name}"):
        yield


def listing(folder: Path) -> dict:
    """``{file name: path}`` of a published folder, sorted by name."""
    folder = Path(folder)
    return {name: str(folder / name) for name in sorted(p.name for p in folder.iterdir())}
