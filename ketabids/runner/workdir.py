"""The work folder of a participant run: where it is, what is removed and when.

Without ``-w`` the work folder is ``$TMPDIR/ketabids_work`` (:func:`default_work_dir`). Nipype
writes each subject's intermediate files under ``<work>/ketabids_participant_wf/`` in the
folders of the subject's top-level graph elements (``single_subject_<key>_wf``,
``merge_<sub>``, ``report_<sub>``, ``ds_report_<sub>_wf``, ``done_<sub>``). Once a subject's
derivatives are published and all its steps have ended, :class:`WorkCleaner` removes those
folders (a real 1 mm subject holds ~0.9 GB there), so a cohort run holds the work of the
subjects in progress only. A failed subject keeps its folders: rerunning the same command
resumes from its finished steps. ``--keep-work`` keeps every subject's folders (a rerun then
reuses all finished steps). At the end of the run the empty workflow folder goes, and the
default work folder too when nothing else is left in it (other runs may share it).

A stop the user asked for (SIGTERM, SIGINT) is not a crash: :func:`remove_stop_crash_files`
removes the crash files Nipype wrote for the steps the signal interrupted.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

LOGGER = logging.getLogger("ketabids")

#: name of the default work folder, in the temporary folder ($TMPDIR)
DEFAULT_WORK_NAME = "ketabids_work"


def default_work_dir() -> Path:
    """``$TMPDIR/ketabids_work`` (the temporary folder :mod:`tempfile` uses), resolved."""
    return (Path(tempfile.gettempdir()) / DEFAULT_WORK_NAME).resolve()


class WorkCleaner:
    """Nipype status callback (chained after the publisher and the progress lines): removes a
    subject's work folders once it is published and none of its steps is left.

    ``root``: the workflow's folder (``<work>/<workflow name>``); ``folders``: subject ->
    names of its top-level graph elements (their folders under ``root``); ``publisher``
    (:class:`ketabids.runner.publish.SubjectPublisher`) and ``progress``
    (:class:`ketabids.runner.progress.Progress`) say who is published and finished. With
    ``keep`` nothing is removed. :attr:`removed` lists the cleaned subjects.
    """

    def __init__(self, root, folders: dict[str, list[str]], publisher, progress, *,
                 keep: bool = False):
        self.root = Path(root)
        self.folders = {s: list(names) for s, names in folders.items()}
        self.publisher, self.progress, self.keep = publisher, progress, keep
        self.removed: list[str] = []

    def __call__(self, node, status) -> None:
        if status in ("end", "exception"):
            self.clean()

    def ready(self) -> list[str]:
        """Subjects published, finished and not failed, whose folders are still there."""
        published = set(self.publisher.published)
        done = set(getattr(self.progress, "done", ())) if self.progress is not None \
            else published
        failed = set(getattr(self.progress, "failed", {}) or {})
        return [s for s in self.folders if s in published and s in done and s not in failed
                and s not in self.removed]

    def clean(self, subjects=None) -> None:
        """Remove the folders of ``subjects`` (default: :meth:`ready`)."""
        if self.keep:
            return
        for subject in (self.ready() if subjects is None else subjects):
            for name in self.folders.get(subject, ()):
                try:
                    shutil.rmtree(self.root / name)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # a cleanup problem never fails a subject
                    LOGGER.warning("work folder %s not removed: %s", self.root / name, exc)
            self.removed.append(subject)
            LOGGER.debug("sub-%s: work folder removed", subject)


def remove_empty_work(work_dir, workflow_name: str, *, default: bool) -> None:
    """Remove ``<work_dir>/<workflow_name>`` when empty, and ``work_dir`` itself when it is the
    default work folder and nothing is left in it (a folder given with ``-w`` stays)."""
    work_dir = Path(work_dir)
    candidates = [work_dir / workflow_name] + ([work_dir] if default else [])
    for folder in candidates:
        try:
            folder.rmdir()  # only when empty: never another run's files
        except OSError:
            return


def remove_stop_crash_files(logs, subjects, since: float) -> list[Path]:
    """Remove the crash files written since ``since`` (a time stamp) in the log folders of
    ``subjects`` (``logs/sub-<label>/``): after a SIGTERM/SIGINT they are the tracebacks of
    the steps the signal interrupted, not failures. Returns the removed paths."""
    removed = []
    for subject in subjects:
        folder = Path(logs) / f"sub-{subject}"
        if not folder.is_dir():
            continue
        for crash in folder.glob("crash-*"):
            try:
                if crash.stat().st_mtime >= since - 1:
                    crash.unlink()
                    removed.append(crash)
            except OSError:
                continue
        try:
            folder.rmdir()  # nothing else (e.g. a QC record of an earlier failure) in it
        except OSError:
            pass
    return removed
