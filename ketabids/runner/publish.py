"""All-or-nothing publishing of a subject's derivatives.

The participant graph's sinks write into a staging folder inside OUTPUT_DIR
(``OUTPUT_DIR/.participant.stage-<host>-<pid>-<n>/``, same file system, hidden). When every
output of a subject is written (its ``done_<subject>`` node ended), :func:`publish_subject`
moves ``sub-<label>/`` into place with one rename and then ``sub-<label>.html``: a subject's
folder appears complete or not at all, also when the run is killed. A failed subject leaves
nothing; :func:`ketabids.io.clean_stale` removes the staging of a killed run on the next run.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from ketabids import io
from ketabids.errors import Terminated
from ketabids.runner.cohort_qc import refresh_after_subject
from ketabids.runner.signals import terminating

LOGGER = logging.getLogger("ketabids")


def new_stage_root(output_dir: Path) -> Path:
    """A fresh hidden staging folder in ``output_dir`` (named so clean_stale knows its owner)."""
    root = Path(output_dir) / f".participant.stage-{io.owner_tag()}-{time.time_ns()}"
    root.mkdir()
    return root


def _subject_entries(stage_root: Path, subject: str) -> list[Path]:
    prefix = f"sub-{subject}"
    return sorted(p for p in stage_root.iterdir()
                  if p.name == prefix or p.name.startswith((prefix + ".", prefix + "_")))


def publish_subject(stage_root: str | Path, output_dir: str | Path, subject: str) -> list[Path]:
    """Move everything staged for ``subject`` into ``output_dir``: its folder first (one
    rename; see :func:`ketabids.io.publish_folder`), then its files at the root, the HTML
    report last (its presence says "this subject is complete"). Returns the published paths."""
    stage_root, output_dir = Path(stage_root), Path(output_dir)
    entries = _subject_entries(stage_root, subject)
    folders = [p for p in entries if p.is_dir()]
    files = sorted((p for p in entries if not p.is_dir()), key=lambda p: p.suffix == ".html")
    published = []
    with io.disk_full(output_dir):
        for staged in folders + files:
            final = output_dir / staged.name
            if staged.is_dir():
                io.publish_folder(staged, final)
            else:
                io.publish_file(staged, final)
            published.append(final)
    return published


def discard_subject(stage_root: str | Path, subject: str) -> None:
    """Remove what was staged for a failed ``subject``."""
    for path in _subject_entries(Path(stage_root), subject):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def clear_stale_logs(output_dir: Path, subject: str) -> list[Path]:
    """A published subject's earlier failures are over: remove its crash files
    (``logs/sub-<label>/crash-*``, which the group level would read as "its participant run
    failed") and the failure QC records of the sessions now published (same file name under
    ``logs/``); the folder goes when empty. Returns the removed paths."""
    logs = Path(output_dir) / "logs" / f"sub-{subject}"
    if not logs.is_dir():
        return []
    stale = list(logs.glob("crash-*"))
    # a session that failed alone keeps its crash files in logs/sub-<label>/ses-<label>/
    # until it is published
    stale += [p for p in logs.glob("ses-*/crash-*")
              if (Path(output_dir) / f"sub-{subject}" / p.parent.name).is_dir()]
    for record in (Path(output_dir) / f"sub-{subject}").glob("**/anat/*_desc-qc_metrics.json"):
        if (logs / record.name).is_file():
            stale.append(logs / record.name)
    removed = []
    for path in stale:
        try:
            path.unlink()
            removed.append(path)
        except OSError as exc:
            LOGGER.warning("stale log %s not removed: %s", path, exc)
    for folder in [*logs.glob("ses-*"), logs]:
        try:
            folder.rmdir()
        except OSError:
            pass
    return removed


def after_publish(output_dir: Path, subject: str) -> None:
    """What runs after each published subject (in the main process, as subjects finish)."""
    clear_stale_logs(output_dir, subject)
    refresh_after_subject(output_dir, subject)


class SubjectPublisher:
    """Nipype ``status_callback``: publishes a subject when its ``done_<subject>`` node ends.

    ``done`` maps node name -> subject label. Runs in the main process (MultiProc and Linear
    call it there); plugins without callbacks (SLURM...) are published after the run by
    :meth:`publish_remaining`.
    """

    def __init__(self, stage_root: Path, output_dir: Path, done: dict[str, str]):
        self.stage_root, self.output_dir, self.done = stage_root, output_dir, done
        self.started = time.time()
        self.published: list[str] = []
        self.errors: dict[str, BaseException] = {}

    def __call__(self, node, status):
        signum = terminating()
        if signum is not None:  # Nipype turned the SIGTERM into a node failure: stop here
            raise Terminated(signum)
        subject = self.done.get(getattr(node, "name", None))
        if subject is None or status != "end" or subject in self.published:
            return
        if not self._ran(node):  # Nipype's Linear plugin reports skipped nodes as "end" too
            return
        self.publish(subject)

    def _ran(self, node) -> bool:
        """The done node really ran in this run: its result file is new (its inputs, paths in
        this run's staging folder, change every run, so it is never a cached result)."""
        try:
            result = Path(node.output_dir()) / f"result_{node.name}.pklz"
            return result.stat().st_mtime >= self.started - 1
        except (OSError, AttributeError):
            return False

    def publish(self, subject: str) -> None:
        try:
            paths = publish_subject(self.stage_root, self.output_dir, subject)
        except Exception as exc:  # noqa: BLE001 - recorded; the runner decides (disk full: 73)
            self.errors[subject] = exc
            discard_subject(self.stage_root, subject)
            return
        self.published.append(subject)
        LOGGER.debug("sub-%s published: %s", subject, ", ".join(p.name for p in paths))
        after_publish(self.output_dir, subject)

    def publish_remaining(self, subjects, failed) -> None:
        for subject in subjects:
            if subject not in self.published and subject not in failed \
                    and subject not in self.errors and _subject_entries(self.stage_root, subject):
                self.publish(subject)
