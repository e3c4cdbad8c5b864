"""Progress of a participant run: one line per finished subject, with its QC verdict.

:class:`Progress` is a Nipype status callback (``plugin_args["status_callback"]``, honoured by
the Linear and MultiProc plugins): it knows which nodes belong to which subject and which are
QC nodes from the graph's manifest (:class:`ketabids.workflows.base.ParticipantManifest`),
reads the verdict of each QC node when it ends, and logs one line when a subject's last node
has ended (or one of its nodes failed)::

    sub-07 done, QC warn: slice thickness 6 mm (12/99, ~40 min left)
    sub-08 failed in anat_wf.segmentation, QC fail (13/99, ~38 min left)

The time left is the elapsed time per subject's worth of work done (finished subjects, plus the
share of steps ended of the subjects in progress) times the subjects' worth left
(:meth:`Progress.eta`); subjects finish one after another (:mod:`ketabids.runner.multiproc`).

It only reports: the cohort QC outputs and the failure reports are
:mod:`ketabids.runner.cohort_qc`'s.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

LOGGER = logging.getLogger("ketabids")

def _identity(node) -> bool:
    from nipype.interfaces.utility import IdentityInterface

    return isinstance(getattr(node, "interface", None), IdentityInterface) and \
        not hasattr(node, "joinsource") and getattr(node, "iterables", None) is None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Nipype status callback: one log line per finished subject, with its QC verdict.

    ``workflow``: the participant graph (before it runs); ``manifest``: its
    :class:`~ketabids.workflows.base.ParticipantManifest` (default ``workflow.manifest``).
    After the run, :attr:`verdicts` (subject -> (verdict, reasons)), :attr:`failed`
    (subject -> failed node), :attr:`finished_steps` (subject -> nodes that ended) hold what
    was seen.
    """

    def __init__(self, workflow, manifest=None, *, logger=LOGGER, clock=time.monotonic):
        self.manifest = manifest or workflow.manifest
        self._subject_of = self.manifest.element_subjects()
        self._sessions = self.manifest.session_elements()
        self.subjects = sorted((graph.subject for graph in self.manifest.subjects),
                               key=lambda s: (-len(s), s))
        self.top = workflow.name
        self.expected: dict[str, set[str]] = {s: set() for s in self.subjects}
        for name in workflow.list_node_names():
            if _identity(workflow.get_node(name)):
                continue  # Nipype removes IdentityInterface nodes from the graph it runs
            subject = self._subject_of.get(name.split(".")[0])
            if subject is not None:
                self.expected[subject].add(name)
        self.pending = {s: set(names) for s, names in self.expected.items()}
        self.total = sum(1 for names in self.expected.values() if names)
        self.verdicts: dict[str, tuple[str, list[str]]] = {}
        self.failed: dict[str, str] = {}
        #: subject -> {session workflow: failed node} (subjects with several sessions)
        self.failed_sessions: dict[str, dict[str, str]] = {}
        self.finished_steps: dict[str, list[str]] = {s: [] for s in self.subjects}
        self.done: list[str] = []
        self.logger = logger
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()

    def __getstate__(self):
        # Nipype keeps plugin_args on MapNodes and pickles them with the node: the copy gets a
        # new lock (it is never called back; only the scheduler's own object is)
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _relname(self, node) -> str:
        full = getattr(node, "fullname", None) or node.name
        prefix = self.top + "."
        if full.startswith(prefix):
            return full[len(prefix):]
        # a MapNode's sub-job has no hierarchy; its folder lies inside the MapNode's
        parts = Path(str(getattr(node, "base_dir", None) or "")).parts
        if self.top in parts:
            inside = parts[parts.index(self.top) + 1:]
            if inside and inside[-1] == "mapflow":
                inside = inside[:-1]
            if inside:
                return ".".join(inside) + ".<mapflow>"
        return full

    def __call__(self, node, status: str) -> None:
        try:
            self._update(node, status)
        except Exception as exc:  # noqa: BLE001 - progress must never break a run
            LOGGER.debug("progress callback failed: %s: %s", type(exc).__name__, exc)

    def _update(self, node, status):
        if status not in ("end", "exception"):
            return
        name = self._relname(node)
        subject = self._subject_of.get(name.split(".")[0])
        if subject is None:
            return  # nodes of no subject
        with self._lock:
            if subject in self.done:
                return
            if status == "exception":  # also a MapNode sub-job: its MapNode never ends then
                top = name.split(".")[0]
                if top in self._sessions and sum(
                        1 for element in {n.split(".")[0] for n in self.expected[subject]}
                        if element in self._sessions) > 1:
                    # one session of several: the runner completes the others without it
                    # (retry); no line yet
                    self.failed_sessions.setdefault(subject, {})[top] = \
                        name.removesuffix(".<mapflow>")
                    return
                self.failed[subject] = name.removesuffix(".<mapflow>")
                self._finish(subject)
                return
            if name not in self.expected[subject]:
                return  # MapNode sub-jobs that ended
            self.finished_steps[subject].append(name)
            self.pending[subject].discard(name)
            qc = self.manifest.qc_session(name)
            if qc is not None:
                try:
                    self._read_verdict(subject, qc[1], node)
                except Exception as exc:  # noqa: BLE001 - the line then says "no QC"
                    LOGGER.debug("QC verdict of %s not read: %s", name, exc)
            if not self.pending[subject]:
                self._finish(subject)

    def flush(self, failed=()) -> None:
        """A line for each subject the callbacks did not finish (e.g. a scheduler that
        dropped its remaining nodes): failed if listed in ``failed``, else done."""
        with self._lock:
            for subject in self.subjects:
                if subject in self.done or not self.expected[subject]:
                    continue
                if subject in failed:
                    sessions = list(self.failed_sessions.get(subject, {}).values())
                    self.failed.setdefault(subject, sessions[0] if sessions else
                                           "an unknown step")
                self._finish(subject)

    def retry(self, workflow, subjects) -> None:
        """Expect the nodes of ``subjects`` in ``workflow`` (the same graph rebuilt without
        the sessions that crashed, with its manifest: finished nodes end again, as cached):
        their line comes when it ends."""
        subjects = set(subjects)
        subject_of = workflow.manifest.element_subjects()
        with self._lock:
            for subject in subjects:
                self.expected[subject] = set()
                self.verdicts.pop(subject, None)
                self.finished_steps[subject] = []
            for name in workflow.list_node_names():
                subject = subject_of.get(name.split(".")[0])
                if subject in subjects and not _identity(workflow.get_node(name)):
                    self.expected[subject].add(name)
            for subject in subjects:
                self.pending[subject] = set(self.expected[subject])

    def _read_verdict(self, subject, session, node):
        from nipype.interfaces.base import isdefined

        outputs = node.result.outputs
        if isdefined(getattr(outputs, "verdict", None)) and \
                isdefined(getattr(outputs, "reasons", None)):
            verdict, reasons = str(outputs.verdict), [str(r) for r in outputs.reasons]
        else:  # Nipype dropped unconnected outputs: the record has them
            import json

            record = json.loads(Path(outputs.out_file).read_text())
            verdict, reasons = str(record["verdict"]), [str(r) for r in record["reasons"]]
        if session:
            reasons = [f"ses-{session}: {r}" for r in reasons]
        old_verdict, old_reasons = self.verdicts.get(subject, ("pass", []))
        order = ("pass", "warn", "fail")
        worst = max(old_verdict, verdict, key=order.index)
        self.verdicts[subject] = (worst, old_reasons + reasons)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left: the elapsed time per subject's worth of work done, times the subjects'
        worth left. Work done = the finished subjects (a failed one counts: its steps that
        never run are not waited for) plus, for each subject in progress, the share of its
        steps that ended. The schedulers finish subjects one after another
        (:mod:`ketabids.runner.multiproc`), so this is mostly finished subjects, whose steps
        of every kind have run (a share of steps alone over-weights short steps). ``now``: the
        clock's time (default: read it). None when nothing is left or nothing has ended."""
        if self.total - len(self.done) <= 0:
            return None
        done = len(self.done) + sum(
            (len(self.expected[s]) - len(self.pending[s])) / len(self.expected[s])
            for s in self.subjects if s not in self.done and self.expected[s])
        if done <= 0:
            return None
        now = self._clock() if now is None else now
        return (now - self._start) * (self.total - done) / done

    def _finish(self, subject):
        self.done.append(subject)
        n = len(self.done)
        seconds = self.eta(self._clock())
        eta = f", ~{_duration(seconds)} left" if seconds is not None else ""
        count = f"({n}/{self.total}{eta})"
        if subject in self.failed:
            self.verdicts[subject] = ("fail", [f"processing failed in {self.failed[subject]}"])
            self.logger.error("sub-%s failed in %s, QC fail %s", subject,
                              self.failed[subject], count)
            return
        verdict, reasons = self.verdicts.get(subject, (None, []))
        if verdict is None:
            self.logger.info("sub-%s done, no QC %s", subject, count)
        else:
            text = f": {'; '.join(reasons)}" if reasons else ""
            log = self.logger.warning if verdict == "fail" else self.logger.info
            log("sub-%s done, QC %s%s %s", subject, verdict, text, count)


__all__ = ["Progress"]
