"""QC rules, fault generators (no ANTs), the per-subject JSON and the cohort table."""
from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketabids.demo import faults
from ketabids.qc import header, iqms, segmentation
from ketabids.qc.rules import RULES, assess
from ketabids.qc.table import (
    QC_BIDSIGNORE,
    qc_json_path,
    read_qc_table,
    rebuild_qc_table,
    write_subject_qc,
)
from tests.qc.test_metrics import synthetic_head


def _metrics(img, maps, mask):
    out = dict(header.header_metrics(img))
    if img.shape == mask.shape:
        out.update(iqms.anatomical_iqms(img, brain_mask=mask, tpms=maps))
        out.update(segmentation.tissue_metrics(maps))
        out.update(segmentation.contrast_metrics(img, maps, mask))
    return out


# ---- rules ---------------------------------------------------------------------------------
def test_every_rule_has_a_source_and_a_threshold():
    for rule in RULES:
        assert rule.source and rule.description, rule.metric
        assert rule.warn is not None or rule.fail is not None, rule.metric


def test_assess_levels_and_reasons():
    assert assess({"slice_thickness_mm": 1.0, "fov_coverage": 1.0}) == ("pass", [])
    assert assess({"slice_thickness_mm": 3.0}) == ("warn", ["slice thickness 3 mm"])
    verdict, reasons = assess({"slice_thickness_mm": 3.0, "fov_coverage": 0.34})
    assert (verdict, reasons) == ("fail", ["template brain covered 34%",
                                           "slice thickness 3 mm"])  # fails first
    assert assess({"error": "Atropos crashed\ntrace"}) == (
        "fail", ["processing failed: Atropos crashed"])
    # missing or non-finite values are skipped
    assert assess({"cnr": float("nan"), "tiv_ml": None}) == ("pass", [])


# ---- faults on a synthetic head (header and intensity faults: no registration needed) -----
@pytest.fixture(scope="module")
def head():
    return synthetic_head(shape=(84, 100, 80), zoom=2.0)  # TIV ~1.2 L


def test_synthetic_head_passes(head):
    img, maps, mask = head
    verdict, reasons = assess(_metrics(img, maps, mask))
    assert verdict == "pass", reasons


@pytest.mark.parametrize("name,expected", [
    ("slab40mm", "field of view 40 mm"),
    ("orientation_codes0", "orientation missing"),
    ("contrast_inverted", "not T1-like contrast"),
    ("nearly_blank", "CNR"),
    ("thick_slices_6mm", "slice thickness"),
])
def test_fault_fails(head, name, expected):
    img, maps, mask = head
    broken = faults.FAULTS[name](img)
    verdict, reasons = assess(_metrics(broken, maps, mask))
    assert verdict == "fail", reasons
    assert any(r.startswith(expected) for r in reasons), reasons


def test_brain_mask_leaked_into_the_scalp_fails(head):
    """A mask grown through the skull over a scalp brighter than WM (fat on a T1w) fails on its
    rim; the correct mask of the same image passes (on the rotated seg3d scan whose mask leaked,
    1744 mL, every other rule passed)."""
    from scipy import ndimage

    img, maps, mask = head
    data = np.asarray(img.dataobj, np.float32).copy()
    brain = np.asarray(mask.dataobj) > 0
    scalp = (data > 350) & ~ndimage.binary_dilation(brain, iterations=2)
    data[scalp] += 450.0  # scalp ~950, WM ~850
    bright = nib.Nifti1Image(data, img.affine, img.header)
    leaked = ndimage.binary_fill_holes(brain | scalp)
    for m, expected in ((brain, "pass"), (leaked, "fail")):
        metrics = _metrics(bright, maps, mask)
        metrics["mask_rim_bright"] = segmentation.mask_rim_bright(
            bright, m, metrics["summary_wm_median"])
        verdict, reasons = assess(metrics)
        assert verdict == expected, (metrics["mask_rim_bright"], reasons)
    assert len(reasons) == 1 and reasons[0].startswith("bright voxels at the brain-mask edge")


def test_fault_geometry(head):
    img = head[0]
    assert faults.slab(img).shape[2] == 20  # 40 mm / 2 mm
    thick = faults.thick_slices(img)
    assert thick.header.get_zooms()[2] == pytest.approx(6.0)  # 3 slices of 2 mm
    # the block average keeps the mean intensity and the world position of the volume
    assert thick.get_fdata().mean() == pytest.approx(img.get_fdata()[:, :, :78].mean(), rel=1e-5)
    centre = lambda im: im.affine @ [*(np.array(im.shape) - 1) / 2, 1]  # noqa: E731
    assert np.allclose(centre(thick)[:3], centre(img.slicer[:, :, :78])[:3], atol=1e-4)
    dropped = faults.drop_orientation(img)
    assert dropped.get_qform(coded=True)[1] == 0 and dropped.get_sform(coded=True)[1] == 0
    assert "".join(nib.aff2axcodes(dropped.affine)) != "LIA"  # a reader now assumes RAS
    rotated = faults.rotate_header(img)
    assert header.affine_disagreement(img.affine, rotated.affine, img.shape)[1] == \
        pytest.approx(90.0)
    flipped = faults.flip_lr_header(img)
    assert np.linalg.det(flipped.affine[:3, :3]) < 0 < np.linalg.det(img.affine[:3, :3])
    blank = faults.nearly_blank(img)
    assert np.percentile(blank.get_fdata(), 99) < 0.1 * np.percentile(img.get_fdata(), 99)


# ---- per-subject JSON and cohort table ---------------------------------------------------------
def test_subject_json_and_table(tmp_path):
    write_subject_qc(tmp_path, "01", None, {"slice_thickness_mm": 6.0, "cnr": float("nan"),
                                            "orientation_missing": False})
    write_subject_qc(tmp_path, "sub-02", "ses-a", {"slice_thickness_mm": 1.0, "cnr": 2.0,
                                                   "orientation_missing": False})
    path = qc_json_path(tmp_path, "01")
    assert path.relative_to(tmp_path).as_posix() == "sub-01/anat/sub-01_desc-qc_metrics.json"
    record = json.loads(path.read_text())
    assert record["verdict"] == "fail" and record["cnr"] is None
    tsv, frame = rebuild_qc_table(tmp_path)
    table = read_qc_table(tmp_path)
    assert list(table.columns[:4]) == ["participant_id", "session", "verdict", "reasons"]
    assert table["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert table["session"].isna().tolist() == [True, False]
    assert table.loc[0, "reasons"] == "slice thickness 6 mm"
    dictionary = json.loads((tmp_path / "qc.json").read_text())
    assert set(dictionary) == set(frame.columns)
    assert dictionary["slice_thickness_mm"]["QCRule"]["fail"] == 4.0
    assert set(QC_BIDSIGNORE) <= set((tmp_path / ".bidsignore").read_text().splitlines())


def _job(args):
    out, i = args
    write_subject_qc(out, f"{i:02d}", None, {"slice_thickness_mm": 1.0 + i / 10})
    rebuild_qc_table(out)


def test_parallel_jobs_lose_no_row(tmp_path):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_job, [(tmp_path, i) for i in range(12)])
    table = pd.read_csv(tmp_path / "qc.tsv", sep="\t")
    assert len(table) == 12 and table["participant_id"].is_unique


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None, reason="no bids-validator-deno")
def test_qc_outputs_validator_clean(tmp_path):
    (tmp_path / "dataset_description.json").write_text(json.dumps(
        {"Name": "qc", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "ketabids"}]}))
    (tmp_path / "README").write_text("QC test dataset\n" * 20)
    write_subject_qc(tmp_path, "01", None, {"cnr": 2.0})
    write_subject_qc(tmp_path, "02", "a", {"cnr": 2.0})
    rebuild_qc_table(tmp_path)
    run = subprocess.run(["bids-validator-deno", str(tmp_path), "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    issues = json.loads(run.stdout)["issues"]["issues"]
    errors = [i for i in issues if i.get("severity") == "error"]
    assert not errors, errors


def test_nan_safe_record():
    from ketabids.qc.table import subject_record

    rec = subject_record("01", None, {"efc": float("inf")})
    assert rec["efc"] is None and rec["verdict"] == "pass"
