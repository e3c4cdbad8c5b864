"""Nipype's schedulers, subject-major: a cohort's subjects finish one after another.

**Subject-major order.** Nipype's MultiProc submits the ready jobs in graph order, and its
Linear plugin runs a topological order built generation by generation: both run every
subject's first step before any subject's second, so a cohort's subjects all finish in its
last minutes (measured: the demo's 40 subjects printed their "done" lines within 2 s, after
945 s), and a run stopped before then leaves no subject finished. Here, among the jobs that are
ready, those of the subject that started first go first (:class:`MultiProcPlugin`), and the
serial plugin runs one subject after another (:class:`LinearPlugin`): with ``n`` processes
about ``n`` subjects are in progress at a time, their derivatives are published and their "done"
lines printed one by one, and a killed run leaves its finished subjects complete. Which
subject a job belongs to is ``plugin_args["job_group"]`` (a callable node -> label or None,
e.g. :class:`SubjectOf`); jobs of no subject go first. Memory: Nipype's MultiProc accounting
applies unchanged (each node's ``mem_gb`` against ``memory_gb``, from ``--mem-gb`` or 90 % of
the machine's memory): a job that does not fit waits, whatever its subject.

**Garbage collection.** Before every submission round, Nipype's
``MultiProcPlugin._send_procs_to_workers`` runs a full ``gc.collect()``, which walks every
object of the main process, the whole execution graph included. A participant run is ~30 short
nodes per subject, and each node that finishes triggers a round, so the scheduler's own
collections cost O(subjects^2). Measured, with 2 processes on 2 cores, on 10 fast-mode demo
subjects: 282 collections, 74 ms each, so 21 s of a 78 s run, during which no job was
submitted. :class:`MultiProcPlugin` freezes the objects alive at the start of a round
(:func:`gc.freeze`) so that collection walks only the young ones, then unfreezes them: nothing
is leaked, and cycles among the older objects are left to Python's automatic collections.

**Polling.** Nipype's scheduling loop wakes every ``poll_sleep_duration`` (short here, so that
a cohort's many short nodes follow each other without idle gaps: :data:`~ketabids.runner.config.
POLL_SLEEP_S`) and each time sums the columns of its job-dependency matrix (a sparse
jobs x jobs matrix) twice to find the ready jobs. With a cohort's thousand-odd jobs those sums
kept the main process busy about a third of a core while the workers computed. Here the
matrix (:class:`_DependencyMatrix`) keeps its column sums until a job finishes or a MapNode
adds jobs: the loop's answers are the same, computed once per change instead of per wake-up
(docs/benchmarks.md, "Scheduling").
"""
from __future__ import annotations

import gc
from pathlib import Path

import scipy.sparse as ssp
from nipype.pipeline.plugins.linear import LinearPlugin as _NipypeLinear
from nipype.pipeline.plugins.multiproc import MultiProcPlugin as _NipypeMultiProc


class SubjectOf:
    """``node -> subject label`` (None for nodes of no subject) for the participant graph
    ``top`` (its name): ``elements`` maps each top-level element of a subject (e.g.
    ``single_subject_<label>[_ses<session>]_wf``, ``done_<label>``: the graph's
    :meth:`~ketabids.workflows.base.ParticipantManifest.element_subjects`) to its label. A
    MapNode's sub-jobs are found by their folder. Picklable (Nipype pickles plugin arguments
    with MapNodes).

    >>> from types import SimpleNamespace as Node
    >>> of = SubjectOf({"single_subject_10_wf": "10", "done_1": "1"}, "wf")
    >>> of(Node(fullname="wf.single_subject_10_wf.anat_wf.n4")), of(Node(fullname="wf.done_1"))
    ('10', '1')
    """

    def __init__(self, elements: dict[str, str], top: str):
        self.elements = dict(elements)
        self.top = top

    def element(self, node) -> str | None:
        parts = str(getattr(node, "fullname", None) or getattr(node, "name", "")).split(".")
        if len(parts) > 1 and parts[0] == self.top:
            return parts[1]
        folder = Path(str(getattr(node, "base_dir", None) or "")).parts  # a MapNode's sub-job
        if self.top in folder and folder.index(self.top) + 1 < len(folder):
            return folder[folder.index(self.top) + 1]
        return None

    def __call__(self, node) -> str | None:
        return self.elements.get(self.element(node))


class _DependencyMatrix(ssp.lil_matrix):
    """Nipype's job-dependency matrix (row = a job, column = the jobs waiting on it), whose
    column sums (``sum(0)``: the unfinished dependencies of each job) are kept until it
    changes: through ``__setitem__``, or :meth:`changed` for writes through a row view (Nipype's
    ``_task_finished_cb``). Shares the rows of the matrix it wraps."""

    _column_sums = None

    def sum(self, axis=None, dtype=None, out=None):
        if axis != 0 or dtype is not None or out is not None:
            return super().sum(axis=axis, dtype=dtype, out=out)
        if self._column_sums is None:
            self._column_sums = super().sum(axis=0)
        return self._column_sums

    def __setitem__(self, index, value):
        self._column_sums = None
        super().__setitem__(index, value)

    def changed(self) -> None:
        """Forget the column sums (after a write that bypassed ``__setitem__``)."""
        self._column_sums = None


class MultiProcPlugin(_NipypeMultiProc):
    """Nipype's ``MultiProc`` plugin, subject-major, whose per-round ``gc.collect()`` skips old
    objects (see the module docstring).

    Among the ready jobs, a job's priority is: no subject first, then subjects in the order
    they started, then subjects not started yet in label order. Without
    ``plugin_args["job_group"]`` the order is Nipype's.

    >>> plugin = MultiProcPlugin(plugin_args={"n_procs": 2, "raise_insufficient": False})
    >>> plugin.processors
    2
    """

    def __init__(self, plugin_args=None):
        super().__init__(plugin_args=plugin_args)
        self._group_of = (plugin_args or {}).get("job_group")
        self.started: dict[str, int] = {}  # subject -> order in which it started

    @property
    def depidx(self):
        """Nipype's job-dependency matrix, as a :class:`_DependencyMatrix`."""
        return self._depidx

    @depidx.setter
    def depidx(self, value):
        if value is not None and not isinstance(value, _DependencyMatrix):
            value = _DependencyMatrix(value)
        self._depidx = value

    def _task_finished_cb(self, jobid, cached=False):
        super()._task_finished_cb(jobid, cached=cached)
        self._depidx.changed()  # Nipype zeroes the job's row through a row view

    def priority(self, node) -> tuple:
        """Sort key of a ready job (smaller first)."""
        group = self._group_of(node) if self._group_of is not None else None
        if group is None:
            return (0, 0, "")
        if group in self.started:
            return (1, self.started[group], "")
        return (2, 0, group)

    def _sort_jobs(self, jobids, scheduler="tsort"):
        jobids = super()._sort_jobs(jobids, scheduler=scheduler)
        if self._group_of is None:
            return jobids
        return sorted(jobids, key=lambda jobid: self.priority(self.procs[jobid]))  # stable

    def _submit_job(self, node, updatehash=False):
        self._mark_started(node)
        return super()._submit_job(node, updatehash=updatehash)

    def _mark_started(self, node) -> None:
        if self._group_of is not None:
            group = self._group_of(node)
            if group is not None and group not in self.started:
                self.started[group] = len(self.started)

    def _send_procs_to_workers(self, updatehash=False, graph=None):
        gc.freeze()
        try:
            return super()._send_procs_to_workers(updatehash=updatehash, graph=graph)
        finally:
            gc.unfreeze()


def subject_major_order(graph, group_of) -> list:
    """The nodes of ``graph`` in a topological order that finishes one subject (``group_of``)
    before starting the next: at each step, the ready node of the first subject in label order
    (nodes of no subject first; ties in Nipype's graph order)."""
    import networkx as nx

    position = {node: i for i, node in enumerate(graph.nodes())}
    groups = {node: group_of(node) for node in graph.nodes()}

    def key(node):
        group = groups[node]
        return (group is not None, group or "", position[node])

    return list(nx.lexicographical_topological_sort(graph, key=key))


class LinearPlugin(_NipypeLinear):
    """Nipype's serial plugin running the graph in :func:`subject_major_order` (with
    ``plugin_args["job_group"]``; else Nipype's order)."""

    def __init__(self, plugin_args=None):
        super().__init__(plugin_args=plugin_args)
        self._group_of = (plugin_args or {}).get("job_group")

    def run(self, graph, config, updatehash=False):
        if self._group_of is None:
            return super().run(graph, config, updatehash=updatehash)
        from nipype.pipeline.plugins import linear

        order = subject_major_order(graph, self._group_of)
        saved = linear.topological_sort
        # Nipype's serial loop (crash files, skipped dependents, status callbacks) unchanged,
        # over this order
        linear.topological_sort = lambda _graph, depth_first=False: (order, None)
        try:
            return super().run(graph, config, updatehash=updatehash)
        finally:
            linear.topological_sort = saved
