"""Cohort runs as labs run them: OUTPUT_DIR in BIDS_DIR/derivatives/, sessions
isolated like subjects, and work folders that do not pile up in $TMPDIR.

Each run is ``python -m ketabids ... participant --fast`` in a subprocess on 3 mm phantoms, with
``TMPDIR`` pointed at a folder of the test (see tests/robustness/conftest.py).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ketabids.anat.prepare import prepare_t1w as _PREPARE
from tests.logcapture import ketabids_log_lines
from tests.robustness.conftest import complete_subjects, files_under, run_process
from tests.robustness.data import SIDECAR, add_t1w, phantom_bids

pytestmark = pytest.mark.slow

FAST = ["--fast", "--omp-nthreads", "1", "--seed", "3"]


#: fields that time a run (QC records and qc.tsv), not its results
TIMINGS = ("qc_seconds", "qc_cpu_seconds")


def _digest(path: Path) -> str:
    """What must be identical between two runs: NIfTI headers and voxels, tables and sidecars
    without their timings; HDF5 transforms by size (HDF5 stores each object's write time: one
    transform written twice differs in 80 bytes); HTML pages (timings) by presence."""
    name = path.name
    if name.endswith(".nii.gz"):
        import nibabel as nib
        import numpy as np

        img = nib.load(path)
        data = np.ascontiguousarray(np.asanyarray(img.dataobj))
        content = img.header.binaryblock + data.tobytes()
    elif name.endswith(".json"):
        record = json.loads(path.read_text())
        if isinstance(record, dict):
            record = {k: v for k, v in record.items() if k not in TIMINGS}
        content = json.dumps(record, sort_keys=True).encode()
    elif name.endswith(".tsv"):
        import pandas as pd

        table = pd.read_csv(path, sep="\t")
        content = table.drop(columns=[c for c in TIMINGS if c in table]).to_csv().encode()
    elif name.endswith(".h5"):
        content = str(path.stat().st_size).encode()
    elif name.endswith(".html"):
        content = b"present"
    else:
        content = path.read_bytes()
    return hashlib.sha256(content).hexdigest()


def _outputs(root: Path) -> dict[str, str]:
    """Every output file (the run records in logs/ aside) -> content hash."""
    return {p.relative_to(root).as_posix(): _digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "logs"}


@pytest.fixture(scope="module")
def derivatives_runs(tmp_path_factory):
    """sub-01 processed twice into BIDS_DIR/derivatives/ketabids, without -w."""
    root = tmp_path_factory.mktemp("inside")
    bids = phantom_bids(root / "bids", {"01": "good"})
    out = bids / "derivatives" / "ketabids"
    runs = []
    for index in range(2):
        tmp = root / f"TMPDIR{index}"
        tmp.mkdir()
        res = run_process(bids, out, "participant", *FAST, tmpdir=tmp, timeout=900)
        runs.append({"res": res, "tmp": files_under(tmp), "outputs": _outputs(out),
                     "raw": sorted(p.relative_to(bids).as_posix() for p in bids.rglob("*")
                                   if "derivatives" not in p.relative_to(bids).parts)})
    return {"bids": bids, "out": out, "runs": runs}


def test_output_dir_in_derivatives_works_twice_and_leaves_nothing_in_tmpdir(derivatives_runs):
    """One test for the fixture's two runs (pytest-xdist would run the fixture once per worker
    for two tests)."""
    first, second = derivatives_runs["runs"]
    for run in (first, second):
        assert run["res"].code == 0, run["res"].err[-3000:]
        assert "Traceback" not in run["res"].err
    assert complete_subjects(derivatives_runs["out"]) == ["sub-01"]
    # the second run's input query did not pick up the first run's derivatives
    assert "1 participant(s) selected: 01" in second["res"].err
    assert "1 T1w image(s) of 1 subject(s)" in second["res"].err
    differ = sorted(k for k in set(first["outputs"]) | set(second["outputs"])
                    if first["outputs"].get(k) != second["outputs"].get(k))
    assert differ == [] and len(first["outputs"]) > 30
    assert first["raw"] == second["raw"]  # the raw dataset untouched
    # without -w the work folder is $TMPDIR/ketabids_work: gone after a successful run
    for run in (first, second):
        assert run["tmp"] == [], run["tmp"]


@pytest.fixture(scope="module")
def session_run(tmp_path_factory):
    """sub-01 with a good ses-1 and a truncated ses-2 (gzip cut in half)."""
    root = tmp_path_factory.mktemp("sessions")
    bids = phantom_bids(root / "bids", {"02": "good"})
    for session, kind in (("1", "good"), ("2", "truncated")):
        path = add_t1w(bids, "01", kind=kind, seed=int(session))
        folder = bids / "sub-01" / f"ses-{session}" / "anat"
        folder.mkdir(parents=True)
        path.rename(folder / f"sub-01_ses-{session}_T1w.nii.gz")
        (folder / f"sub-01_ses-{session}_T1w.json").write_text(json.dumps(SIDECAR))
    for leftover in (bids / "sub-01" / "anat").iterdir():
        leftover.unlink()
    (bids / "sub-01" / "anat").rmdir()
    tmp = root / "TMPDIR"
    tmp.mkdir()
    out, work = root / "out", root / "work"
    res = run_process(bids, out, "participant", "-w", work, "--participant-label", "01",
                      "--skip-bids-validation", *FAST, tmpdir=tmp, timeout=900)
    return {"res": res, "out": out, "work": work, "bids": bids}


def test_a_truncated_session_fails_alone(session_run):
    res, out = session_run["res"], session_run["out"]
    assert res.code == 1, res.err[-3000:]  # "some failed"
    assert "Traceback" not in res.err
    anat = out / "sub-01" / "ses-1" / "anat"
    assert list(anat.glob("sub-01_ses-1_space-*_label-GM_desc-modulated_probseg.nii.gz"))
    assert not (out / "sub-01" / "ses-2").exists()
    lines = [ln for ln in res.err.splitlines() if "failed" in ln and "sub-01" in ln]
    assert len(lines) == 1 and "ses-2" in lines[0], res.err[-3000:]
    assert "sub-01_ses-2_T1w.nii.gz" in lines[0]
    assert "1 of 1 subject(s) done (1 session(s) failed)" in res.err
    # the cohort QC table has the failed session as a fail row; the report says what happened
    import pandas as pd

    qc = pd.read_csv(out / "qc.tsv", sep="\t")
    rows = {(r.participant_id, r.session): r.verdict for r in qc.itertuples()}
    assert rows[("sub-01", "ses-2")] == "fail" and rows[("sub-01", "ses-1")] != "fail"
    assert "ses-2 was not processed" in (out / "sub-01.html").read_text()
    # the published subject's work folder is gone; nothing of a failed subject to keep
    assert not (session_run["work"] / "ketabids_participant_wf").exists()


#: the shape of the image that makes a node of the graph raise (it passes the input checks)
_CRASHING_SHAPE = (7, 8, 9)


def _prepare_or_raise(img):
    """The prepare step, raising for an image of :data:`_CRASHING_SHAPE` (a crash inside the
    graph; every real input the pipeline was given so far went through it)."""
    if img.shape[:3] == _CRASHING_SHAPE:
        raise ValueError("injected failure for the test image")
    return _PREPARE(img)



@pytest.fixture(scope="module")
def crash_run(tmp_path_factory):
    """sub-01 with a good ses-1 and a ses-2 that passes the input checks but makes the prepare
    node raise, and a good sub-02; in this process (serial plugin), with the prepare step
    replaced by one that raises on that image."""
    import nibabel as nib
    import numpy as np

    from ketabids.cli.app import _exit_code_of
    from ketabids.runner import run_participant

    root = tmp_path_factory.mktemp("session_crash")
    bids = phantom_bids(root / "bids", {"02": "good"})
    for session in ("1", "2"):
        folder = bids / "sub-01" / f"ses-{session}" / "anat"
        folder.mkdir(parents=True)
        target = folder / f"sub-01_ses-{session}_T1w.nii.gz"
        if session == "1":
            add_t1w(bids, "01", kind="good", seed=1).rename(target)
        else:
            noise = np.random.default_rng(2).uniform(0, 100, _CRASHING_SHAPE)
            nib.save(nib.Nifti1Image(noise.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])),
                     target)
        (folder / f"sub-01_ses-{session}_T1w.json").write_text(json.dumps(SIDECAR))
    for leftover in (bids / "sub-01" / "anat").iterdir():
        leftover.unlink()
    (bids / "sub-01" / "anat").rmdir()
    out, work = root / "out", root / "work"
    with ketabids_log_lines() as lines, pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIPYPE_NO_ET", "1")
        mp.setattr("ketabids.anat.prepare.prepare_t1w", _prepare_or_raise)
        summary = run_participant(bids_dir=bids, output_dir=out, work_dir=work,
                                  subjects=["01", "02"], sessions=None, bids_filters=None,
                                  processing="fast", seed=3, nprocs=1, omp_nthreads=1)
    return {"summary": summary, "code": _exit_code_of(summary), "out": out, "work": work,
            "lines": lines}


def test_a_session_that_crashes_in_the_graph_fails_alone(crash_run):
    out, summary, lines = crash_run["out"], crash_run["summary"], crash_run["lines"]
    assert crash_run["code"] == 1, summary  # "some failed"
    assert summary["ok"] == ["01", "02"] and not summary["failed"], summary
    # both subjects published, sub-01 with its good session only
    for anat in (out / "sub-01" / "ses-1" / "anat", out / "sub-02" / "anat"):
        assert list(anat.glob("*_space-*_label-GM_desc-modulated_probseg.nii.gz")), lines
    assert not (out / "sub-01" / "ses-2").exists()
    # one error line for the session, naming the step; the subject's progress line says done
    failed = [ln for ln in lines if "sub-01" in ln and "failed" in ln]
    assert len(failed) == 1 and "ses-2 failed: processing failed in anat_wf.prepare: " \
        "ValueError: injected failure" in failed[0], lines
    assert any(ln.startswith("sub-01 done, QC") for ln in lines), lines
    assert any("2 of 2 subject(s) done (1 session(s) failed)" in ln for ln in lines), lines
    # its traceback is kept apart from the subject's (which is published: not a failure)
    crashes = list((out / "logs" / "sub-01" / "ses-2").glob("crash-*"))
    assert crashes and not list((out / "logs" / "sub-01").glob("crash-*"))
    assert str(crashes[0]) in summary["failed_sessions"]["01"]["ses-2"]
    import pandas as pd

    qc = pd.read_csv(out / "qc.tsv", sep="\t")
    rows = {(r.participant_id, r.session): r.verdict for r in qc.itertuples()}
    assert rows[("sub-01", "ses-2")] == "fail" and rows[("sub-01", "ses-1")] != "fail"
    assert "ses-2 was not processed: processing failed in" in (out / "sub-01.html").read_text()
    # the published subjects' work folders are gone
    assert not list((crash_run["work"] / "ketabids_participant_wf").glob("*_wf"))


def test_crashed_sessions_attributes_crash_files_by_their_node(tmp_path):
    """No graph: crash files as Nipype writes them (first line ``Node: <full name>``)."""
    import time

    from ketabids.bids.layout import T1wInput
    from ketabids.runner.participant import crashed_sessions

    items = [T1wInput("01", s, f"sub-01_ses-{s}_T1w.nii.gz") for s in ("1", "2")] + \
        [T1wInput("02", s, f"sub-02_ses-{s}_T1w.nii.gz") for s in ("1", "2")] + \
        [T1wInput("03", None, "sub-03_T1w.nii.gz")]
    logs = tmp_path / "logs"

    def crash(subject, node, name):
        folder = logs / f"sub-{subject}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"crash-{name}.txt").write_text(
            f"Node: ketabids_participant_wf.{node}\nWorking directory: x\n\n"
            "Traceback (most recent call last):\nValueError: image too small\n")

    started = time.time()
    crash("01", "single_subject_01_ses2_wf.anat_wf.n4", "a")  # one session of two: isolated
    crash("02", "single_subject_02_ses1_wf.anat_wf.n4", "b")  # both sessions: the subject fails
    crash("02", "single_subject_02_ses2_wf.anat_wf.n4", "c")
    crash("03", "single_subject_03_wf.anat_wf.n4", "d")  # no sessions: the subject fails
    manifest = _manifest({
        "01": {"single_subject_01_ses1_wf": "1", "single_subject_01_ses2_wf": "2"},
        "02": {"single_subject_02_ses1_wf": "1", "single_subject_02_ses2_wf": "2"},
        "03": {"single_subject_03_wf": ""}})
    found = crashed_sessions(items, manifest, logs, started)
    assert list(found) == [items[1]]
    line, files = found[items[1]]
    assert line == "processing failed in anat_wf.n4: ValueError: image too small"
    assert [f.parent for f in files] == [logs / "sub-01" / "ses-2"]
    assert not list((logs / "sub-01").glob("crash-*"))
    assert len(list((logs / "sub-02").glob("crash-*"))) == 2


def _manifest(sessions):
    """A participant graph's manifest: subject -> {session element: session label}; each
    subject also has ``report_<sub>`` and ``done_<sub>`` elements."""
    from ketabids.workflows.base import ParticipantManifest, SubjectGraph

    return ParticipantManifest(subjects=tuple(
        SubjectGraph(subject=subject, elements=(*elements, f"report_{subject}",
                                                f"done_{subject}"),
                     done=f"done_{subject}", qc={}, sessions=elements)
        for subject, elements in sessions.items()), methods="")


class _Graph:
    """What :class:`ketabids.runner.progress.Progress` reads of a workflow."""

    def __init__(self, names, manifest):
        from types import SimpleNamespace

        self.name = "wf"
        self.manifest = manifest
        self.nodes = {n: SimpleNamespace(interface=None, fullname=f"wf.{n}", name=n)
                      for n in names}

    def list_node_names(self):
        return list(self.nodes)

    def get_node(self, name):
        return self.nodes[name]


def test_progress_waits_for_a_subject_whose_session_failed_and_retries_it():
    from ketabids.runner.progress import Progress

    class _Log:
        def __init__(self):
            self.lines = []

        def info(self, fmt, *args):
            self.lines.append(fmt % args)

        error = warning = info

    ses1, ses2 = "single_subject_01_ses1_wf.anat_wf.n4", "single_subject_01_ses2_wf.anat_wf.n4"
    sessions = {"01": {"single_subject_01_ses1_wf": "1", "single_subject_01_ses2_wf": "2"},
                "02": {"single_subject_02_wf": ""}}
    first = _Graph([ses1, ses2, "report_01", "done_01", "single_subject_02_wf.anat_wf.n4"],
                   _manifest(sessions))
    log = _Log()
    progress = Progress(first, logger=log)
    progress(first.nodes[ses2], "exception")  # one session of two: no line, the subject waits
    progress(first.nodes[ses1], "end")
    assert log.lines == [] and progress.failed_sessions == {"01": {
        "single_subject_01_ses2_wf": "single_subject_01_ses2_wf.anat_wf.n4"}}
    progress(first.nodes["single_subject_02_wf.anat_wf.n4"], "exception")  # no sessions
    assert log.lines[-1].startswith("sub-02 failed in single_subject_02_wf.anat_wf.n4")
    again = _Graph([ses1, "report_01", "done_01"],
                   _manifest({"01": {"single_subject_01_ses1_wf": "1"}}))
    progress.retry(again, ["01"])
    for name in again.nodes:  # cached nodes end again
        progress(again.nodes[name], "end")
    assert log.lines[-1] == "sub-01 done, no QC (2/2)" and len(log.lines) == 2
