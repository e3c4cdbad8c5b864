"""Segmentation fidelity on a real scan against fMRIPrep's (FSL FAST) segmentation of it.

The participant level runs as users run it (the CLI, default mode, one subject) on
AOMIC-PIOP2 sub-0001 from ``../shared/data`` (skipped when absent). The margins sit between
the figures of the partial-volume method and those of an Atropos segmentation with a one-span
N4 and a mask without its CSF ring (GM/WM/brain Dice 0.802/0.857/0.950; docs/benchmarks.md,
"Segmentation against a reference"), so they fail on a return to any part of that method. The
comparison itself is checked on synthetic labels.
"""
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ketabids.anat.antsutil import make_image

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
REAL = DATA / "real-t1w" / "aomic-piop2_sub-0001_T1w.nii.gz"
REF = DATA / "reference-fmriprep"


def _bench():
    spec = importlib.util.spec_from_file_location("real_fidelity",
                                                  ROOT / "benchmarks" / "real_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_to_reference_on_planted_labels():
    """Known answers: the reference on a shifted, differently ordered grid (both in the
    sMRIPrep/FAST label order 1 GM 2 WM 3 CSF); one slab of reference WM called GM."""
    bench = _bench()
    ours = np.zeros((20, 20, 20), np.uint8)
    ours[4:16, 4:16, 4:16] = 3  # CSF
    ours[5:15, 5:15, 5:15] = 1  # GM
    ours[7:13, 7:13, 7:13] = 2  # WM
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -20
    ref = ours.copy()
    ref[7:13, 7:13, 7] = 1  # one slab of our WM is GM in the reference
    # reference stored flipped along x and padded by 3 voxels: same world positions
    flip = np.diag([-2.0, 2.0, 2.0, 1.0])
    flip[:3, 3] = aff[:3, 3] + [2.0 * 19 + 6, -6, -6]
    ref_store = np.zeros((26, 26, 26), np.uint8)
    ref_store[3:23, 3:23, 3:23] = ref[::-1]
    out = bench.compare_to_reference(
        make_image(ours, aff), make_image((ours > 0).astype(np.uint8), aff),
        make_image(ref_store, flip), make_image((ref_store > 0).astype(np.uint8), flip))
    assert out["dice_brain"] == pytest.approx(1.0)
    assert out["dice_csf"] == pytest.approx(1.0)
    n_wm, n_gm = 6 ** 3, 10 ** 3 - 6 ** 3
    assert out["dice_wm"] == pytest.approx(2 * (n_wm - 36) / (2 * n_wm - 36))
    assert out["dice_gm"] == pytest.approx(2 * n_gm / (2 * n_gm + 36))
    assert out["confusion_ml"]["refGM_as_WM"] == pytest.approx(36 * 8 / 1000)
    assert out["reference"]["wm_ml"] == pytest.approx((n_wm - 36) * 8 / 1000)
    assert out["rel"]["mask"] == pytest.approx(0.0)
    # hard-label volumes, counted as the reference counts its own
    assert out["ours_hard"]["wm_ml"] == pytest.approx(n_wm * 8 / 1000)
    assert out["rel"]["wm_hard"] == pytest.approx(n_wm / (n_wm - 36) - 1)
    assert out["rel"]["csf_hard"] == pytest.approx(0.0)


needs_reference = pytest.mark.skipif(not (REAL.exists() and REF.is_dir()),
                                     reason=f"real scan/reference not found under {DATA}")


@pytest.fixture(scope="module")
def aomic_default(tmp_path_factory):
    return _bench().run_cli(nib.load(REAL), "aomic", tmp_path_factory.mktemp("aomic"), fast=False)


@needs_reference
@pytest.mark.slow
def test_default_mode_matches_the_fmriprep_reference(aomic_default):
    bench = _bench()
    res = aomic_default
    cmp = bench.compare_to_reference(
        res["dseg"], res["mask"], nib.load(REF / "aomic-piop2_sub-0001_dseg.nii.gz"),
        nib.load(REF / "aomic-piop2_sub-0001_desc-brain_mask.nii.gz"), volumes=res["volumes"])
    summary = {k: round(v, 3) for k, v in cmp.items() if k.startswith("dice")} | cmp["rel"]
    assert cmp["dice_gm"] >= 0.83, summary  # Atropos: 0.79-0.80
    assert cmp["dice_wm"] >= 0.89, summary  # Atropos: 0.86
    assert cmp["dice_brain"] >= 0.96, summary  # mask without its CSF ring: 0.950
    assert abs(cmp["rel"]["wm"]) <= 0.07, summary  # Atropos: -18 %
    assert -0.10 <= cmp["rel"]["gm"] <= 0.05, summary
    # TIV = GM + WM + CSF inside the mask with its 2 mm CSF ring (SPM/CAT12's intracranial
    # volume); measured -0.3 % of fMRIPrep's mask (before: -8.0 %)
    assert abs(cmp["rel"]["tiv_vs_mask"]) <= 0.04, summary
    assert res["peak_gb"] <= 4.0


@needs_reference
@pytest.mark.slow
def test_rotated_rebiased_copy_gives_the_same_gm_and_tiv(aomic_default, tmp_path):
    """10 degrees of rotation, resampling and a +-15 % linear bias: GM and TIV within 2 %
    (measured -0.4 % / +0.4 %)."""
    from ketabids.testing import rotated_rebiased

    moved = _bench().run_cli(rotated_rebiased(nib.load(REAL)), "aomicrot", tmp_path, fast=False)
    for key in ("gm_ml", "tiv_ml"):
        assert moved["volumes"][key] == pytest.approx(aomic_default["volumes"][key], rel=0.02), key


SEG3D = DATA / "real-t1w" / "seg3d_T1w.nii.gz"


@pytest.mark.slow
@pytest.mark.skipif(not SEG3D.is_file(), reason=f"real scan not found: {SEG3D}")
def test_brain_extraction_of_a_rotated_copy_does_not_depend_on_the_seed(tmp_path):
    """The rotated/re-biased copy of the seg3d scan (field of view cut below the cerebellum,
    zero-filled corners inside its grid), default mode: with random seeds 2 and 3 the brain
    mask used to leave the brain for the scalp (1824 and 2902 mL against ~1325 mL on the
    original): the brain-only template's edge fitted the head's scalp-to-air edge in the
    affine stage. With the affine stage also run on the head's interior and the smaller of the
    two kept (:func:`ketabids.anat.brain.extract_brain`): 1364 / 1371 mL against 1329 mL, +3 %
    that came from the zero fill past the field of view's cut (the original's grid stops at
    the cut). With the subject padded with background before registration
    (:data:`ketabids.anat.registration.PAD_MM`): 1368 / 1367 mL against 1373 mL (-0.3 / -0.4 %)."""
    from ketabids.anat.brain import extract_brain, n4_bias_correct
    from ketabids.anat.conform import conform_t1w
    from ketabids.templates import get_template
    from ketabids.testing import rotated_rebiased

    tpl = get_template(resolution=1)

    def corrected(img):
        return n4_bias_correct(conform_t1w(img)[0], omp_nthreads=2)[0]

    def brain_ml(img, seed, name):  # transforms in tmp_path (by default: a new temp folder)
        return extract_brain(img, tpl, seed=seed, omp_nthreads=2,
                             out_dir=tmp_path / name)[1]["brain_ml"]

    original = brain_ml(corrected(nib.load(SEG3D)), 1, "original")
    rotated = corrected(rotated_rebiased(nib.load(SEG3D)))
    for seed in (2, 3):
        assert brain_ml(rotated, seed, f"rotated{seed}") == pytest.approx(original, rel=0.02), seed


@pytest.mark.slow
@pytest.mark.skipif(not SEG3D.is_file(), reason=f"real scan not found: {SEG3D}")
def test_fast_mode_gm_and_tiv_within_3_percent_of_the_default_mode(tmp_path):
    """Issue 13's target for ``--fast``, on the real scan where it fell furthest short (seg3d,
    field of view cut below the cerebellum), through the CLI: fast vs default mode GM / TIV
    -2.2 % / -3.5 % with the fast mode's SyN regularised in voxels of its grid and its N4 on a
    12 mm grid; -0.8 % / -1.5 % with both as the default mode's
    (:mod:`ketabids.anat.settings`)."""
    bench = _bench()
    img = nib.load(SEG3D)
    default = bench.run_cli(img, "seg3d", tmp_path, fast=False)
    fast = bench.run_cli(img, "seg3d", tmp_path, fast=True)
    for key in ("gm_ml", "tiv_ml"):
        assert fast["volumes"][key] == pytest.approx(default["volumes"][key], rel=0.03), key
