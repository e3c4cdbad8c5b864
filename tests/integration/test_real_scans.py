"""End-to-end runs of the anatomical workflow (ketabids.testing.run_anat_wf), fast mode.

1. A 2 mm phantom with skull, neck, rotation, bias and noise (ketabids.demo.head) against its
   ground truth, with thresholds appropriate to fast mode.
2. The real scans in ../shared/data/real-t1w (skipped when absent), downsampled to 2 mm to keep
   CI short: plausible volumes, skull-stripped input detected, and consistency of the volumes
   when the scan is rotated 10 degrees, resampled and re-biased.
The full-resolution default-mode figures are in benchmarks/participant.py.
"""
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketabids.anat.antsutil import make_image
from ketabids.templates import get_template
from ketabids.testing import rotated_rebiased, run_anat_wf

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-t1w"
SCANS = {
    "aomic-piop2_sub-0001_T1w.nii.gz": False,
    "seg3d_T1w.nii.gz": False,
    "cstar-stroke_desc-brain_T1w.nii.gz": True,  # already skull-stripped
}


def _run(t1w, seed, base_dir) -> dict:
    """The workflow's outputs: images loaded, volumes as a dict."""
    out = run_anat_wf(t1w, fast=True, seed=seed, base_dir=base_dir)
    loaded = {key: nib.load(out[key]) for key in ("t1w_preproc", "t1w_mask", "t1w_dseg")}
    loaded["gm_mod"] = nib.load(out["std_mod"][0])
    loaded["volumes"] = pd.read_csv(out["volumes"], sep="\t").iloc[0].to_dict()
    loaded["skull_stripped"] = out["skull_stripped"]
    return loaded


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def template2():
    return get_template(resolution=2)


@pytest.mark.slow
def test_fast_mode_on_a_2mm_phantom(template2, tmp_path):
    from ketabids.anat.conform import conform_t1w
    from ketabids.demo import head as phantom

    subject = phantom.simulate_subject(
        template2, seed=3, acquisition=phantom.Acquisition(resolution=2.0, orientation="LPS"),
        pose=phantom.PoseAndWarp(max_rotation=8.0))
    out = _run(subject.t1w, 3, tmp_path)

    def conf(img):
        return np.asarray(conform_t1w(img)[0].dataobj)

    gm, wm, csf = conf(subject.gm), conf(subject.wm), conf(subject.csf)
    stack = np.stack([gm, wm, csf])  # sMRIPrep dseg order: 1=GM 2=WM 3=CSF
    truth = np.where(stack.sum(0) >= 0.5, np.argmax(stack, 0) + 1, 0)
    dseg = np.asarray(out["t1w_dseg"].dataobj)
    assert not out["skull_stripped"]
    assert _dice(np.asarray(out["t1w_mask"].dataobj), conf(subject.brain_mask)) > 0.95
    assert _dice(dseg == 1, truth == 1) > 0.80
    assert _dice(dseg == 2, truth == 2) > 0.80
    true_gm = subject.volumes["gm_ml"]
    assert out["volumes"]["gm_ml"] == pytest.approx(true_gm, rel=0.12)
    vox = abs(np.linalg.det(out["gm_mod"].affine[:3, :3])) / 1000
    mod_total = float(np.asarray(out["gm_mod"].dataobj, np.float64).sum() * vox)
    # modulation conserves the estimated native GM volume (registration-independent identity)
    assert mod_total == pytest.approx(out["volumes"]["gm_ml"], rel=0.02)
    assert out["gm_mod"].shape == nib.load(template2.gm).shape


def _downsample(path, zoom=2.0):
    """The scan resampled to ``zoom`` mm (linear), as a float32 image with its own header."""
    from nilearn.image import resample_img

    from ketabids.anat.conform import conform_t1w

    img, _ = conform_t1w(path)
    aff = img.affine.copy()
    scale = zoom / np.sqrt((aff[:3, :3] ** 2).sum(0))
    aff[:3, :3] = aff[:3, :3] * scale
    shape = np.ceil(np.array(img.shape) / scale).astype(int)
    out = resample_img(img, target_affine=aff, target_shape=shape, interpolation="linear",
                       force_resample=True, copy_header=True)
    return make_image(np.asarray(out.dataobj, np.float32), aff)


needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real scans not found in {REAL}")


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    results = {}
    for name in SCANS:
        img = _downsample(REAL / name)
        results[name] = _run(img, 1, tmp_path_factory.mktemp(name[:5]))
    return results


@needs_real
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCANS))
def test_real_scan_volumes_are_plausible(real_runs, name):
    out = real_runs[name]
    vols = out["volumes"]
    assert out["skull_stripped"] is SCANS[name]
    # GM share of the intracranial volume; GM/(GM+WM) of these young-adult scans measures
    # ~0.61-0.63 here (ICBM priors, Atropos), so only a wide plausibility band for it
    assert 0.35 <= vols["gm_ml"] / vols["tiv_ml"] <= 0.55, vols
    assert 0.45 <= vols["gm_ml"] / (vols["gm_ml"] + vols["wm_ml"]) <= 0.70, vols
    if name.startswith("cstar"):  # cropped FOV brain: TIV is only what the crop holds
        assert 700 <= vols["tiv_ml"] <= 2000, vols
    else:
        assert 1100 <= vols["tiv_ml"] <= 2000, vols
    # the brain mask lies inside the head foreground
    from ketabids.anat.brain import head_foreground

    mask = np.asarray(out["t1w_mask"].dataobj) > 0
    assert (mask & ~head_foreground(out["t1w_preproc"])).sum() < 0.02 * mask.sum()


@needs_real
@pytest.mark.slow
def test_real_scan_rotated_resampled_rebiased_gives_same_volumes(real_runs, tmp_path):
    name = "aomic-piop2_sub-0001_T1w.nii.gz"
    moved = rotated_rebiased(_downsample(REAL / name))
    out = _run(moved, 1, tmp_path)
    ref = real_runs[name]["volumes"]
    # fast mode on a 2 mm copy (the 1 mm default-mode check, within 2 %, is in
    # test_real_fidelity.py); measured on the final issue-13 code: TIV -0.9 %, GM -3.2 %
    assert out["volumes"]["tiv_ml"] == pytest.approx(ref["tiv_ml"], rel=0.03), \
        (out["volumes"], ref)
    assert out["volumes"]["gm_ml"] == pytest.approx(ref["gm_ml"], rel=0.04), (out["volumes"], ref)


REFERENCE = REAL.parent / "reference-fmriprep" / "aomic-piop2_sub-0001_dseg.nii.gz"


@needs_real
@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"fMRIPrep reference not found: {REFERENCE}")
def test_dseg_labels_match_fmriprep_reference(real_runs):
    """Same label value = same tissue as fMRIPrep's dseg of the same scan (1 GM, 2 WM, 3 CSF):
    each label overlaps the reference's same label far better than any other label (measured,
    2 mm fast mode: Dice GM 0.74, WM 0.82, CSF 0.49; best other label <= 0.19; with 0.1.0's
    1=CSF 2=GM 3=WM every same-value Dice was below 0.2)."""
    from nilearn.image import resample_to_img

    ours = real_runs["aomic-piop2_sub-0001_T1w.nii.gz"]["t1w_dseg"]
    ref = nib.load(REFERENCE)
    ours_on_ref = np.asarray(resample_to_img(ours, ref, interpolation="nearest",
                                             force_resample=True, copy_header=True).dataobj)
    ref_labels = np.asarray(ref.dataobj)
    for label in (1, 2, 3):
        same = _dice(ours_on_ref == label, ref_labels == label)
        others = [_dice(ours_on_ref == label, ref_labels == k) for k in (1, 2, 3) if k != label]
        assert same > 0.4 and same > max(others) + 0.2, (label, same, others)
