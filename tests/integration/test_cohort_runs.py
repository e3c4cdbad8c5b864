"""Cohort runs as labs run them (issue 25): OUTPUT_DIR in BIDS_DIR/derivatives/, sessions
isolated like subjects, and work folders that do not pile up in $TMPDIR.

Each run is ``python -m ketabids ... participant --fast`` in a subprocess on 3 mm phantoms, with
``TMPDIR`` pointed at a folder of the test (see tests/robustness/conftest.py).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

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
