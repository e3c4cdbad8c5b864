"""Stopping a run cleanly: SIGTERM/SIGHUP become :class:`~ketabids.errors.Terminated` inside
:func:`run_temp_dir`, the per-run temporary folder removed at exit.

A scheduler (SLURM, a container runtime) or a user ending the job sends SIGTERM: the handler
raises :class:`~ketabids.errors.Terminated` in the process that installed it, so every
``finally`` (staging folders, locks, this temporary folder) runs; :func:`terminating` tells
code after a library that caught the exception (Nipype records it as a node failure) that the
run is being stopped. The command line maps ``Terminated`` to exit 143.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from ketabids.errors import Terminated
from ketabids.io import _mkdirs, _owner_tag

__all__ = ["run_temp_dir", "terminating"]

_TEMP_VARS = ("TMPDIR", "TEMP", "TMP")


#: signals received by this process's handler (see :func:`terminating`)
_RECEIVED: list[int] = []


def terminating() -> int | None:
    """The signal (SIGTERM/SIGHUP) that asked this run to stop, or None. Libraries may catch
    the :class:`~ketabids.errors.Terminated` raised by the handler (Nipype records any exception
    of an interface as a node failure); code after them asks this instead."""
    return _RECEIVED[-1] if _RECEIVED else None


def _terminated_handler(owner_pid: int):
    """SIGTERM/SIGHUP handler: :class:`~ketabids.errors.Terminated` in the process that
    installed it; forked workers (Nipype's MultiProc pool inherits the handler) simply die with
    the signal, quietly, so the main process alone cleans up and prints one line."""

    def handler(signum, frame):  # noqa: ARG001 - signal handler API
        if os.getpid() != owner_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _RECEIVED.append(int(signum))
        raise Terminated(signum)

    return handler


@contextlib.contextmanager
def run_temp_dir(base: str | os.PathLike | None = None, *, prefix: str = "ketabids-tmp-",
                 signals: bool = True):
    """A temporary folder for everything this run (or this block) writes through
    :mod:`tempfile`: ``tempfile.tempdir`` and ``$TMPDIR``/``$TEMP``/``$TMP`` (inherited by
    worker processes, so ANTs' ``mktemp`` files (antspyx names them with ``tempfile.mktemp``) land
    there) point at a new folder under ``base`` (default: the current temp folder) until the
    block ends; then the folder is deleted and the previous settings come back.

    With ``signals`` (main thread only) SIGTERM and SIGHUP raise
    :class:`~ketabids.errors.Terminated` in the block, so cleanup (this one, and every
    ``finally``/:func:`staged_dir` inside) runs when a scheduler or a user ends the job.

    >>> import os, tempfile
    >>> with run_temp_dir() as tmp:
    ...     inside = tempfile.mkstemp()[1]
    ...     print(inside.startswith(str(tmp)), os.environ["TMPDIR"] == str(tmp))
    True True
    >>> os.path.exists(inside)
    False
    """
    parent = Path(base) if base is not None else Path(tempfile.gettempdir())
    _mkdirs(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{_owner_tag()}-", dir=parent))
    saved_env = {k: os.environ.get(k) for k in _TEMP_VARS}
    saved_tempdir = tempfile.tempdir
    handlers = {}
    if signals and threading.current_thread() is threading.main_thread():
        _RECEIVED.clear()
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                handlers[sig] = signal.signal(sig, _terminated_handler(os.getpid()))
    try:
        for key in _TEMP_VARS:
            os.environ[key] = str(folder)
        tempfile.tempdir = str(folder)
        yield folder
    finally:
        tempfile.tempdir = saved_tempdir
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
