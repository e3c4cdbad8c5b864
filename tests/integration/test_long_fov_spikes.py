"""Ordinary scanner inputs through THE anatomical workflow (fast mode): a long inferior field of
view (110 mm of neck and shoulders added below the head) and intensity spikes (20 voxels at
1e6) give the volumes of the scan they were made from, and QC passes.

On a 2 mm demo phantom (always) and on the real AOMIC scan downsampled to 2 mm (skipped when
../shared/data/real-t1w is absent). Measured 2026-12-07 (docs/benchmarks.md): neck TIV -0.2 %
(phantom and AOMIC), spikes TIV / GM -0.1 / -0.3 %, all QC pass; with the crop disabled the
AOMIC copy with a neck gave TIV +56 %, with the truncation disabled the spikes +41 %.
"""
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketabids.demo.faults import add_spikes, extend_neck
from ketabids.qc.rules import assess
from ketabids.templates import get_template
from ketabids.testing import run_anat_wf


def _run_with_qc(img, base_dir) -> dict:
    """Volumes, QC record (metrics, verdict, reasons) and the outputs of one fast-mode run."""
    from ketabids.anat.conform import conform_t1w
    from ketabids.qc.subject import compute_subject_qc, prepare_metrics

    out = run_anat_wf(img, fast=True, seed=1, base_dir=base_dir)
    template = get_template(resolution=2)
    metrics = compute_subject_qc(
        raw_t1w=Path(base_dir) / "sub-input_T1w.nii.gz", t1w=out["t1w_preproc"],
        brain_mask=out["t1w_mask"], tpms=dict(zip(("GM", "WM", "CSF"), out["t1w_tpms"])),
        bias=out["t1w_bias"], anat2std_xfm=out["anat2std_xfm"], template=template,
        jacobian=out["std_jacobian"], std_t1w=out["std_t1w"])
    metrics.update(prepare_metrics(out["prepare_info"]))
    verdict, reasons = assess(metrics)
    conformed, _ = conform_t1w(img)
    return {"volumes": pd.read_csv(out["volumes"], sep="\t").iloc[0].to_dict(),
            "metrics": metrics, "verdict": verdict, "reasons": reasons, "out": out,
            "grid": conformed}


def _check(runs):
    clean, neck, spikes = runs["clean"], runs["neck"], runs["spikes"]
    # the neck and shoulders are cropped, the maps come from the head
    assert neck["metrics"]["fov_cropped_mm"] > 100
    assert clean["metrics"]["fov_cropped_mm"] == 0
    assert neck["volumes"]["tiv_ml"] == pytest.approx(clean["volumes"]["tiv_ml"], rel=0.03)
    assert neck["verdict"] == "pass", neck["reasons"]
    # native outputs on the input's (conformed) grid, zero below the crop
    mask = nib.load(neck["out"]["t1w_mask"])
    assert mask.shape == neck["grid"].shape and np.allclose(mask.affine, neck["grid"].affine)
    assert not np.asarray(mask.dataobj)[:, :, :40].any()
    # spikes: truncated before anything else; volumes unchanged to within 1 %
    for key in ("tiv_ml", "gm_ml"):
        assert spikes["volumes"][key] == pytest.approx(clean["volumes"][key], rel=0.01), key
    assert spikes["metrics"]["intensity_max_ratio"] > 100  # 790 on the phantom, 4000 on AOMIC
    assert spikes["verdict"] == "pass", spikes["reasons"]
    preproc = np.asarray(nib.load(spikes["out"]["t1w_preproc"]).dataobj)
    assert preproc.max() < 1e4


def _runs(img, base):
    return {"clean": _run_with_qc(img, base / "clean"),
            "neck": _run_with_qc(extend_neck(img, 110.0), base / "neck"),
            "spikes": _run_with_qc(add_spikes(img, n=20, value=1e6), base / "spikes")}


@pytest.mark.slow
def test_phantom_with_neck_or_spikes_gives_the_same_volumes(tmp_path):
    from ketabids.demo import head as phantom

    subject = phantom.simulate_subject(
        get_template(resolution=2), seed=3,
        acquisition=phantom.Acquisition(resolution=2.0, orientation="LPS"),
        pose=phantom.PoseAndWarp(max_rotation=8.0))
    _check(_runs(subject.t1w, tmp_path))


@pytest.mark.slow
def test_real_scan_with_neck_or_spikes_gives_the_same_volumes(real_t1w_dir, tmp_path):
    from tests.integration.test_real_scans import _downsample

    _check(_runs(_downsample(real_t1w_dir / "aomic-piop2_sub-0001_T1w.nii.gz"), tmp_path))
