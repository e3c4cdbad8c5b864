"""QC of whole pipeline runs (ANTs): a good phantom passes, a registration forced wrong fails."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ketabids.qc.rules import assess
from ketabids.qc.subject import compute_subject_qc, sample_on_grid
from tests.test_qc_metrics import synthetic_head


def test_compute_subject_qc_without_registration(tmp_path):
    img, maps, mask = synthetic_head(shape=(84, 100, 80), zoom=2.0)
    raw = tmp_path / "raw.nii.gz"
    nib.save(img, raw)
    out = compute_subject_qc(raw_t1w=raw, t1w=img, brain_mask=mask, tpms=maps)
    assert assess(out)[0] == "pass"
    assert "fov_coverage" not in out and out["qc_seconds"] > 0
    assert out["t1_contrast_order"] and out["tiv_ml"] > 1000


def test_sample_on_grid_same_origin_subsampling():
    fine = nib.Nifti1Image(np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8), np.eye(4))
    coarse = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([2.0, 2, 2, 1]))
    assert np.array_equal(sample_on_grid(fine, coarse), fine.get_fdata()[::2, ::2, ::2])


def _pipeline_qc(img, tmp_path):
    from ketabids.anat.vbm import run_t1w
    from ketabids.templates import get_template

    template = get_template(resolution=2)
    raw = tmp_path / "raw.nii.gz"
    nib.save(img, raw)
    res = run_t1w(str(raw), template, mode="fast", seed=1, out_dir=tmp_path)
    return compute_subject_qc(raw_t1w=raw, t1w=res["preproc"], brain_mask=res["mask"],
                              tpms=res["probs"], bias=res["bias"],
                              anat2std_xfm=res["registration"].forward_transforms,
                              template=template, jacobian=res["jacobian"])


@pytest.fixture(scope="module")
def phantom():
    from ketabids.demo.head import simulate_subject

    t1w = simulate_subject(seed=3, resolution=2.0).t1w
    return nib.Nifti1Image(np.asarray(t1w.dataobj, np.float32), t1w.affine)


@pytest.mark.slow
def test_good_phantom_passes(phantom, tmp_path):
    verdict, reasons = assess(_pipeline_qc(phantom, tmp_path))
    assert verdict == "pass", reasons


@pytest.mark.slow
def test_rotated_header_fails(phantom, tmp_path):
    from ketabids.demo.faults import rotate_header

    metrics = _pipeline_qc(rotate_header(phantom), tmp_path)
    verdict, reasons = assess(metrics)
    assert verdict == "fail", (reasons, {k: metrics.get(k) for k in (
        "brain_dice", "template_correlation", "fov_coverage")})
