"""ketabids' schedulers: Nipype's MultiProc and Linear plugins, subject-major, and MultiProc's
per-round gc.collect() made cheap."""
import gc
import time

import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from nipype.pipeline.plugins import LinearPlugin as NipypeLinear
from nipype.pipeline.plugins import MultiProcPlugin as NipypeMultiProc

from ketabids.runner.multiproc import LinearPlugin, MultiProcPlugin, SubjectOf


def _add_one(x):
    return x + 1


def _total(x):
    return sum(x)


def _step(x):
    import time

    time.sleep(0.05)
    return x + 1


def test_multiproc_runs_the_graph_with_old_objects_frozen(tmp_path, monkeypatch):
    wf = pe.Workflow(name="chain_wf", base_dir=str(tmp_path))
    nodes = [pe.Node(niu.Function(function=_add_one, input_names=["x"], output_names=["x"]),
                     name=f"add_{i}") for i in range(4)]
    nodes[0].inputs.x = 0
    for a, b in zip(nodes, nodes[1:]):
        wf.connect(a, "x", b, "x")
    wf.config["execution"].update({"poll_sleep_duration": 0.01, "crashdump_dir": str(tmp_path)})

    frozen_at_collect = []
    real_collect = gc.collect

    def spy(*args, **kwargs):
        frozen_at_collect.append(gc.get_freeze_count())
        return real_collect(*args, **kwargs)

    monkeypatch.setattr(gc, "collect", spy)
    graph = wf.run(plugin=MultiProcPlugin(plugin_args={"n_procs": 2,
                                                       "raise_insufficient": False}))
    results = {node.name: node.result.outputs.x for node in graph.nodes()}
    assert results == {"add_0": 1, "add_1": 2, "add_2": 3, "add_3": 4}
    # Nipype's collections ran, each with the pre-existing objects out of the collector's sight
    assert frozen_at_collect and min(frozen_at_collect) > 1000
    assert gc.get_freeze_count() == 0  # and they were handed back afterwards


SUBJECTS = ["01", "02", "03", "04", "05", "06"]


def _cohort(base_dir, steps=4):
    """The participant graph's shape: per subject a chain of ``steps`` nodes in
    ``single_subject_<s>_wf``, then a top-level ``done_<s>``."""
    wf = pe.Workflow(name="cohort_wf", base_dir=str(base_dir))
    for s in SUBJECTS:
        sub = pe.Workflow(name=f"single_subject_{s}_wf")
        chain = [pe.Node(niu.Function(function=_step, input_names=["x"], output_names=["x"]),
                         name=f"step_{i}") for i in range(steps)]
        chain[0].inputs.x = 0
        for a, b in zip(chain, chain[1:]):
            sub.connect(a, "x", b, "x")
        done = pe.Node(niu.Function(function=_add_one, input_names=["x"], output_names=["x"]),
                       name=f"done_{s}", run_without_submitting=True)
        wf.connect(sub, f"step_{steps - 1}.x", done, "x")
    wf.config["execution"].update({"poll_sleep_duration": 0.01, "crashdump_dir": str(base_dir),
                                   "create_report": False})
    return wf


def _elements():
    """The toy cohort's top-level elements -> their subject (what the manifest gives)."""
    return {name: s for s in SUBJECTS
            for name in (f"single_subject_{s}_wf", f"done_{s}", f"report_{s}")}


class _Events:
    """Status callback recording (subject, node name, status) in order."""

    def __init__(self):
        self.events = []
        self.of = SubjectOf(_elements(), "cohort_wf")

    def __call__(self, node, status):
        self.events.append((self.of(node), node.name, status, time.monotonic()))

    def done_order(self):
        return [s for s, name, status, _ in self.events
                if name.startswith("done_") and status == "end"]

    def first_start(self, subject):
        return next(i for i, (s, _, status, _) in enumerate(self.events)
                    if s == subject and status == "start")

    def done_at(self, subject):
        return next(i for i, (s, name, status, _) in enumerate(self.events)
                    if s == subject and name.startswith("done_") and status == "end")


def _run(plugin_cls, tmp_path, **args):
    events = _Events()
    plugin_args = {"status_callback": events, **args}
    if plugin_cls in (MultiProcPlugin, LinearPlugin):
        plugin_args["job_group"] = SubjectOf(_elements(), "cohort_wf")
    _cohort(tmp_path).run(plugin=plugin_cls(plugin_args=plugin_args))
    return events


def _subject_major(events, in_flight):
    """At most ``in_flight`` subjects in progress: the k-th subject (label order) starts only
    once k - in_flight + 1 subjects are done."""
    done = sorted(events.done_at(s) for s in SUBJECTS)
    return all(events.first_start(SUBJECTS[k]) > done[k - in_flight]
               for k in range(in_flight, len(SUBJECTS)))


@pytest.mark.parametrize("plugin", ["ketabids", "nipype"])
def test_multiproc_finishes_subjects_one_after_another(tmp_path, plugin):
    """With 2 processes about 2 subjects are in progress at a time, so the "done" nodes end in
    label order, spread over the run; Nipype's own MultiProc (the control) runs every subject's
    first step first, so no subject is done before the last ones start."""
    cls = MultiProcPlugin if plugin == "ketabids" else NipypeMultiProc
    events = _run(cls, tmp_path, n_procs=2, raise_insufficient=False)
    assert sorted(events.done_order()) == SUBJECTS
    if plugin == "ketabids":
        # two subjects run side by side, so either of a pair may end first (the machine's load
        # decides); none ends more than one place away from its label order
        order = events.done_order()
        assert all(abs(order.index(s) - k) <= 1 for k, s in enumerate(SUBJECTS)), order
        assert _subject_major(events, in_flight=2)
    else:
        assert not _subject_major(events, in_flight=2)
        assert events.done_at(SUBJECTS[0]) > events.first_start(SUBJECTS[-1])


@pytest.mark.parametrize("plugin", ["ketabids", "nipype"])
def test_linear_finishes_each_subject_before_the_next(tmp_path, plugin):
    cls = LinearPlugin if plugin == "ketabids" else NipypeLinear
    events = _run(cls, tmp_path)
    assert sorted(events.done_order()) == SUBJECTS
    if plugin == "ketabids":
        assert events.done_order() == SUBJECTS and _subject_major(events, in_flight=1)
    else:  # Nipype's generation-by-generation order: every subject's step 0 first
        assert not _subject_major(events, in_flight=1)


def test_multiproc_priority_prefers_the_earliest_started_subject():
    """The job choice itself: no-subject jobs, then started subjects in start order, then new
    subjects in label order."""
    from types import SimpleNamespace as Node

    plugin = MultiProcPlugin(plugin_args={"n_procs": 2, "raise_insufficient": False,
                                          "job_group": SubjectOf(_elements(), "wf")})
    plugin._mark_started(Node(fullname="wf.single_subject_03_wf.anat_wf.n4"))
    plugin._mark_started(Node(fullname="wf.single_subject_01_wf.anat_wf.n4"))
    plugin.procs = [Node(fullname=f"wf.{name}") for name in
                    ("single_subject_02_wf.a", "done_01", "single_subject_03_wf.b",
                     "single_subject_04_wf.c", "other_node", "report_01")]
    order = plugin._sort_jobs(list(range(len(plugin.procs))))
    assert [plugin.procs[j].fullname.split(".")[1] for j in order] == [
        "other_node", "single_subject_03_wf", "done_01", "report_01", "single_subject_02_wf",
        "single_subject_04_wf"]


def test_multiproc_dependency_sums_match_the_matrix_at_every_wake_up(tmp_path, monkeypatch):
    """The kept column sums are those of the matrix as it stands, at every loop wake-up, on a
    graph whose MapNode adds jobs while it runs; the graph's results are Nipype's."""
    import numpy as np
    import scipy.sparse as ssp

    from ketabids.runner import multiproc

    checked = []
    kept_sum = multiproc._DependencyMatrix.sum

    def checking_sum(self, axis=None, dtype=None, out=None):
        value = kept_sum(self, axis=axis, dtype=dtype, out=out)
        if axis != 0:
            return value
        fresh = ssp.lil_matrix.sum(self, axis=0)
        checked.append(np.array_equal(value, fresh))
        return fresh  # stale kept sums fail the assertion below instead of stalling the run

    monkeypatch.setattr(multiproc._DependencyMatrix, "sum", checking_sum)
    wf = pe.Workflow(name="mapped_wf", base_dir=str(tmp_path))
    first = pe.Node(niu.Function(function=_add_one, input_names=["x"], output_names=["x"]),
                    name="first")
    first.inputs.x = 0
    mapped = pe.MapNode(niu.Function(function=_step, input_names=["x"], output_names=["x"]),
                        iterfield=["x"], name="mapped")
    mapped.inputs.x = [10, 20, 30]
    last = pe.Node(niu.Function(function=_total, input_names=["x"], output_names=["total"]),
                   name="last")
    wf.connect(mapped, "x", last, "x")
    wf.add_nodes([first])
    wf.config["execution"].update({"poll_sleep_duration": 0.01, "crashdump_dir": str(tmp_path),
                                   "create_report": False})
    graph = wf.run(plugin=MultiProcPlugin(plugin_args={"n_procs": 2,
                                                       "raise_insufficient": False}))
    results = {node.name: node.result.outputs for node in graph.nodes()}
    assert results["last"].total == 63 and results["first"].x == 1
    assert len(checked) > 10 and all(checked)
