"""Run records in the derivative dataset: ``OUTPUT_DIR/logs/<level>-<UTC time>-<id>/``.

Every participant run and every group analysis leaves one folder (fMRIPrep keeps the same kind
of record in its ``logs/``)::

    logs/participant-20261130T071500Z-3f2a9c1d/
        command.txt      the command line, shell-quoted, one line
        config.json      every resolved option (defaults included), as the run used them
        versions.json    software versions (ketabids.versions.software_versions)
        CITATION.md      methods paragraph with numbered references  } from
        CITATION.bib     the references as BibTeX                     } ketabids.reports.citation
        CITATION.html    both as a small HTML page                    } (when methods are given)
        timings.json     wall times of the run's steps, in seconds (when given)

The folder is written under a hidden staging name inside ``logs/`` and renamed at the end, so
it is complete or absent, never partial; parallel jobs never collide (the id is random). The
official BIDS validator skips ``logs/`` (measured with bids-validator-deno 3.0.2), and
``.bidsignore`` lists it too.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ketabids.errors import OutputError
from ketabids.io import atomic_write_text, write_json

__all__ = ["write_run_logs", "write_run_record", "run_folder_name", "LOGS_DIR"]

LOGS_DIR = "logs"
_LEVEL_RE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def run_folder_name(level: str, *, now: datetime | None = None, run_id: str | None = None) -> str:
    """``<level>-<YYYYMMDDTHHMMSSZ>-<8 hex>``; ``now`` must be timezone-aware (default: now, UTC).

    >>> run_folder_name("group", now=datetime(2026, 11, 30, 7, 15, tzinfo=timezone.utc),
    ...                 run_id="3f2a9c1d")
    'group-20261130T071500Z-3f2a9c1d'
    """
    if not _LEVEL_RE.fullmatch(level or ""):
        raise ValueError(f"level {level!r}: use lower-case words joined by '-', e.g. 'group'")
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    run_id = run_id or uuid.uuid4().hex[:8]
    if not re.fullmatch(r"[0-9a-f]{8}", run_id):
        raise ValueError(f"run_id {run_id!r}: 8 lower-case hexadecimal characters")
    return f"{level}-{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{run_id}"


def write_run_logs(output_dir: str | os.PathLike, *, level: str, argv, config: dict,
                   versions: dict, methods: str | None = None, timings: dict | None = None,
                   now: datetime | None = None, run_id: str | None = None) -> Path:
    """Write one run's record under ``OUTPUT_DIR/logs/`` and return its folder.

    ``argv``: the whole command line as a list (e.g. ``["ketabids", "/data", "/out",
    "participant", "--fast"]``). ``config``: the resolved options (made JSON-able: paths become
    strings). ``methods``: the methods text with author-year citations (the participant
    workflow's ``visit_desc()`` or :func:`ketabids.reports.citation.group_methods`); without it
    no CITATION files are written. ``timings``: wall times of the run's steps (``timings.json``:
    they differ between two identical runs, so they live here, not among the outputs).
    ``now``/``run_id`` fix the folder name (tests).

    Raises :class:`~ketabids.errors.OutputError` (exit 73) when the folder cannot be written;
    nothing is left behind then.
    """
    from ketabids.reports.citation import boilerplate

    logs = Path(output_dir) / LOGS_DIR
    name = run_folder_name(level, now=now, run_id=run_id)
    final = logs / name
    stage = logs / f".{name}.tmp"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        if final.exists():
            raise FileExistsError(f"{final} exists")
        os.mkdir(stage)  # honours the umask (group-readable records for a lab)
    except OSError as exc:
        raise OutputError(f"{logs}: cannot write the run record ({exc.strerror or exc}); make "
                          "OUTPUT_DIR writable or free some space") from exc
    try:
        atomic_write_text(stage / "command.txt", shlex.join(str(a) for a in argv) + "\n")
        write_json(stage / "config.json", config)
        write_json(stage / "versions.json", versions)
        if timings:
            write_json(stage / "timings.json", timings)
        if methods:
            cited = boilerplate(methods)
            atomic_write_text(stage / "CITATION.md", cited.markdown)
            atomic_write_text(stage / "CITATION.bib", cited.bibtex)
            atomic_write_text(stage / "CITATION.html", cited.html)
        os.rename(stage, final)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{logs}: cannot write the run record ({exc.strerror or exc}); "
                              "make OUTPUT_DIR writable or free some space") from exc
        raise
    return final


def write_run_record(output_dir: str | os.PathLike, *, level: str, record: dict,
                     versions: dict, methods: str | None = None,
                     timings: dict | None = None) -> Path:
    """The run record of any level (participant, group-train, group-predict): ``record`` is
    a run configuration's :meth:`~ketabids.config.ParticipantConfig.record` (``{"argv",
    "config"}``; without ``argv``, this process's command line); see :func:`write_run_logs`."""
    import sys

    from ketabids.io import jsonable

    return write_run_logs(output_dir, level=level, argv=record.get("argv") or sys.argv,
                          config=jsonable(record.get("config") or {}), versions=versions,
                          methods=methods, timings=timings)
