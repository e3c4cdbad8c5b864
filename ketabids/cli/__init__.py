"""Command line: ``ketabids BIDS_DIR OUTPUT_DIR {participant,group}`` and ``ketabids demo``.

:func:`main` is the console script; :func:`ketabids.cli.app.run` and
:func:`ketabids.cli.demo.run` return a :class:`~ketabids.cli.app.RunResult` (exit code and
summary) for callers in Python.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ketabids``, ``run.py`` and ``python -m ketabids``.

    Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from ketabids.cli import demo

        return demo.run(argv[1:]).exit_code
    from ketabids.cli import app

    return app.run(argv).exit_code


__all__ = ["main"]
