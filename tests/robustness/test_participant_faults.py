"""Issue 11, findings 5, 6, 7, 8, 14 and added input faults at the participant level.

Each run is ``python -m ketabids ... participant --fast`` in a subprocess on 3 mm phantoms (about
half a minute per good subject on 2 cores), with ``TMPDIR`` pointed at a folder of the test.
"""
from __future__ import annotations

import signal
import stat

import pytest

from .conftest import (
    assert_one_line_error,
    complete_subjects,
    files_under,
    kill_group,
    run_process,
    start_process,
    stray_files,
    subject_folders,
    tmpfs,
    wait_for,
)
from .data import phantom_bids, t1w_path

pytestmark = pytest.mark.slow

FAST = ["--fast", "--skip-bids-validation", "--omp-nthreads", "1"]
#: bad inputs: subject label -> kind (see tests.robustness.data.add_t1w)
BAD = {"02": "4d", "03": "nan", "04": "truncated", "05": "text"}


def _participant(bids, root, *extra, timeout=900):
    tmp = root / "TMPDIR"
    tmp.mkdir(exist_ok=True)
    out, work = root / "out", root / "work"
    res = run_process(bids, out, "participant", "-w", work, *FAST, *extra, tmpdir=tmp,
                      timeout=timeout)
    return {"res": res, "out": out, "work": work, "tmp": tmp, "bids": bids}


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """sub-01 good; sub-02 4D, sub-03 half NaN, sub-04 gzip cut in half, sub-05 not a NIfTI."""
    root = tmp_path_factory.mktemp("mixed")
    bids = phantom_bids(root / "bids", {"01": "good", **BAD})
    return _participant(bids, root)


@pytest.fixture(scope="module")
def dangling_run(tmp_path_factory):
    """sub-01 good; sub-02's T1w a dangling symlink (an annexed file not fetched)."""
    root = tmp_path_factory.mktemp("dangling")
    bids = phantom_bids(root / "bids", {"01": "good", "02": "dangling"})
    return _participant(bids, root)


@pytest.fixture(scope="module")
def only_bad_run(tmp_path_factory):
    """A single subject whose T1w is 4D: nothing can succeed."""
    root = tmp_path_factory.mktemp("onlybad")
    bids = phantom_bids(root / "bids", {"01": "4d"})
    return _participant(bids, root)


# --------------------------------------------------------------------------- bad inputs
def test_good_subject_survives_bad_ones(mixed_run):
    assert mixed_run["res"].code == 1, mixed_run["res"].err[-3000:]
    assert complete_subjects(mixed_run["out"]) == ["sub-01"]


@pytest.mark.parametrize("subject,kind", sorted(BAD.items()))
def test_bad_t1w_one_line_naming_the_file(mixed_run, subject, kind):
    err = mixed_run["res"].err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if f"sub-{subject} " in ln and "failed" in ln]
    assert len(lines) == 1, err[-3000:]
    assert t1w_path(mixed_run["bids"], subject).name in lines[0], lines[0]
    assert "ketabids.errors." not in lines[0] and "Exception raised" not in err, lines[0]
    assert len(lines[0]) < 600


def test_failed_subjects_leave_no_folder(mixed_run):
    assert subject_folders(mixed_run["out"]) == ["sub-01"]
    assert stray_files(mixed_run["out"]) == []


def test_nothing_left_in_tmpdir(mixed_run):
    assert files_under(mixed_run["tmp"]) == []


def test_participant_outputs_group_readable(mixed_run):
    for path in [mixed_run["out"] / "sub-01", *(mixed_run["out"] / "sub-01").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, (str(path), oct(mode))


def test_dangling_symlink_fails_only_its_subject(dangling_run):
    res = dangling_run["res"]
    assert res.code == 1, res.err[-3000:]
    assert complete_subjects(dangling_run["out"]) == ["sub-01"]
    lines = [ln for ln in res.err.splitlines() if "sub-02" in ln and "failed" in ln]
    assert len(lines) == 1 and "sub-02_T1w.nii.gz" in lines[0], res.err[-3000:]
    assert "sub-01" not in lines[0]
    assert "Traceback" not in res.err


# --------------------------------------------------------------------------- finding 14
def test_unusable_input_alone_exits_65(only_bad_run):
    res = only_bad_run["res"]
    assert res.code == 65, res.err[-3000:]
    assert "sub-01_T1w.nii.gz" in res.err and "4D" in res.err


def test_closing_line_without_reports_when_none_succeeded(only_bad_run):
    res = only_bad_run["res"]
    assert "0 of 1" in res.err
    assert ".html" not in res.err.splitlines()[-1]
    assert subject_folders(only_bad_run["out"]) == []


# --------------------------------------------------------------------------- findings 6, 8
def _derivative_written(out) -> bool:
    """A derivative of sub-01 exists: staged (the run is mid-way) or published."""
    return (any(out.glob(".*stage*/sub-01/**/*.nii.gz*"))
            or any((out / "sub-01").rglob("*.nii.gz*")))


def _start_until_a_derivative(tmp_path):
    """One good subject started in the background; returns once a derivative is written (or
    the run ended): ``(bids, out, work, tmp, proc, seen)``."""
    bids = phantom_bids(tmp_path / "bids", {"01": "good"})
    out, work, tmp = tmp_path / "out", tmp_path / "work", tmp_path / "TMPDIR"
    tmp.mkdir()
    proc = start_process(bids, out, "participant", "-w", work, *FAST, tmpdir=tmp,
                         log=tmp_path / "log")
    seen = wait_for(lambda: _derivative_written(out), timeout=300, interval=0.05)
    return bids, out, work, tmp, proc, seen


def test_kill9_leaves_nothing_partial_and_rerun_completes(tmp_path):
    bids, out, work, tmp, proc, seen = _start_until_a_derivative(tmp_path)
    kill_group(proc, signal.SIGKILL)
    assert seen, "no derivative appeared before the run ended"
    partial = [p for p in subject_folders(out) if p not in complete_subjects(out)]
    assert partial == [], files_under(out)
    again = run_process(bids, out, "participant", "-w", work, *FAST, tmpdir=tmp)
    assert again.code == 0, again.err[-3000:]
    assert complete_subjects(out) == ["sub-01"]
    assert stray_files(out) == []


def test_sigterm_cleans_up(tmp_path):
    bids, out, work, tmp, proc, seen = _start_until_a_derivative(tmp_path)
    kill_group(proc, signal.SIGTERM)
    log = (tmp_path / "log").read_text()
    assert seen, log[-3000:]
    assert proc.returncode != 0
    assert "Traceback" not in log, log[-3000:]
    assert [p for p in subject_folders(out) if p not in complete_subjects(out)] == []
    assert stray_files(out) == [] and files_under(tmp) == []
    # a stop the user asked for is not a crash: no traceback file
    assert list(out.glob("logs/**/crash-*")) == []


def test_disk_full_participant(tmp_path):
    bids = phantom_bids(tmp_path / "bids", {"01": "good"})
    out = tmp_path / "mnt"
    with tmpfs(out, "6m") as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs is not permitted here")
        tmp = tmp_path / "TMPDIR"
        tmp.mkdir()
        res = run_process(bids, out, "participant", "-w", tmp_path / "work", *FAST, tmpdir=tmp)
        assert_one_line_error(res, "space", code=73)
        assert subject_folders(out) == [] and stray_files(out) == []


# --------------------------------------------------------------------------- finding 7, MultiProc
def test_nothing_left_in_tmpdir_with_multiproc(tmp_path):
    """Nipype's MultiProc workers (forked after the run's temp folder is set) leave nothing in
    $TMPDIR either, and the run's temp folder under the work folder is gone at the end."""
    bids = phantom_bids(tmp_path / "bids", {"01": "good"})
    run = _participant(bids, tmp_path, "--nprocs", "2")
    assert run["res"].code == 0, run["res"].err[-3000:]
    assert complete_subjects(run["out"]) == ["sub-01"]
    assert files_under(run["tmp"]) == []
    assert [p for p in run["work"].iterdir() if p.name.startswith("ketabids-tmp")] == []
    assert stray_files(run["out"]) == []
