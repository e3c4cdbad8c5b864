"""The QC gate at the participant level: broken scans are flagged, good ones pass (slow).

One module-scoped participant run (fast mode, 2 mm demo phantoms, MultiProc with 2 processes)
on a good phantom and the faults of :mod:`ketabids.demo.faults` made from it: a 40 mm slab,
both orientation codes 0, a contrast-inverted head, a 90-degree-rotated header, a nearly blank
image, and 6 mm slices. Each fault must be "fail" in qc.tsv and its progress line must say
"QC fail" (processed or crashed, never "done" silently); thick slices at least "warn"; the
good phantom "pass"; its report shows the verdict, 3 strips of 7 slices and the flicker.
"""
from __future__ import annotations

import html
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tests.logcapture import ketabids_log_lines

pytestmark = pytest.mark.slow

FAULTS = {"slab": "slab40mm", "nocodes": "orientation_codes0", "inverted": "contrast_inverted",
          "rotated": "rotated90_header", "blank": "nearly_blank"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ketabids.demo.faults import FAULTS as GENERATORS
    from ketabids.demo.faults import thick_slices
    from ketabids.demo.head import Acquisition, simulate_subject
    from ketabids.runner import run_participant

    base = tmp_path_factory.mktemp("qcfaults")
    bids = base / "bids"
    good = simulate_subject(seed=3, acquisition=Acquisition(resolution=2.0)).t1w
    good = nib.Nifti1Image(np.asarray(good.dataobj, np.float32), good.affine)
    images = {"good": good, "thick": thick_slices(good)}
    images.update({label: GENERATORS[name](good) for label, name in FAULTS.items()})
    for label, img in images.items():
        folder = bids / f"sub-{label}" / "anat"
        folder.mkdir(parents=True)
        nib.save(img, folder / f"sub-{label}_T1w.nii.gz")
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "qc faults", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    with ketabids_log_lines() as lines, pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIPYPE_NO_ET", "1")
        summary = run_participant(bids_dir=bids, output_dir=base / "out",
                                  work_dir=base / "work", subjects=sorted(images),
                                  sessions=None, bids_filters=None, processing="fast", seed=1,
                                  nprocs=2, omp_nthreads=1)
    shutil.rmtree(base / "work", ignore_errors=True)  # ~0.6 GB that no test here reads
    table = pd.read_csv(base / "out" / "qc.tsv", sep="\t").set_index("participant_id")
    return {"out": base / "out", "summary": summary, "table": table, "lines": lines}


@pytest.mark.parametrize("label", sorted(FAULTS))
def test_fault_fails_in_qc_table_and_progress(run, label):
    assert run["table"].loc[f"sub-{label}", "verdict"] == "fail", \
        run["table"].loc[f"sub-{label}", "reasons"]
    lines = [ln for ln in run["lines"] if ln.startswith(f"sub-{label} ")]
    assert len(lines) == 1 and "QC fail" in lines[0], lines


def test_rotated_header_fails_for_its_orientation(run):
    """The reason names the orientation, whatever the template correlation of that run (it
    varied 0.26-0.45 between runs: a registration that cannot turn the head back fails
    differently each time)."""
    reasons = run["table"].loc["sub-rotated", "reasons"]
    assert "header orientation wrong?" in reasons, reasons


def test_thick_slices_at_least_warn(run):
    row = run["table"].loc["sub-thick"]
    assert row["verdict"] in ("warn", "fail") and "slice thickness 6 mm" in row["reasons"]


def test_good_phantom_passes_with_a_complete_report(run):
    assert run["table"].loc["sub-good", "verdict"] == "pass", \
        run["table"].loc["sub-good", "reasons"]
    lines = [ln for ln in run["lines"] if ln.startswith("sub-good ")]
    assert lines and lines[0].startswith("sub-good done, QC pass (")
    page = (run["out"] / "sub-good.html").read_text()
    assert 'class="verdict pass"' in page.split("<section")[0]
    assert page.count('alt="segmentation') == 3 and page.count(", 7 slices: ") >= 6
    assert "image left = L, right = R" in page and page.count('class="flicker"') == 3


def test_closing_line_and_cohort_page(run):
    counts = run["table"]["verdict"].value_counts().to_dict()
    closing = [ln for ln in run["lines"] if ln.startswith("QC of OUTPUT_DIR")]
    assert len(closing) == 1
    assert closing[0].startswith(f"QC of OUTPUT_DIR: {counts.get('pass', 0)} pass, "
                                 f"{counts.get('warn', 0)} warn, {counts.get('fail', 0)} fail")
    assert closing[0].endswith(f"; review {run['out'] / 'qc.html'}")
    page = (run["out"] / "qc.html").read_text()
    assert all(f"sub-{label}" in page for label in FAULTS)
    # every subject has a report: processed ones the full report, crashed ones the failure page
    assert all((run["out"] / f"sub-{label}.html").is_file() for label in [*FAULTS, "good"])
    for subject in run["summary"]["failed"]:
        page = (run["out"] / f"sub-{subject}.html").read_text()
        error = html.escape(run["summary"]["errors"][subject])[:40]
        assert 'id="errors"' in page and error in page
