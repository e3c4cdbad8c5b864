"""QC metrics (ketabids.qc.iqms, header, coverage, segmentation): known answers on synthetic
arrays and a synthetic head with known tissues."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from ketabids.qc import coverage, header, iqms, segmentation


def synthetic_head(shape=(48, 56, 44), zoom=3.0, seed=0, noise=15.0):
    """A head with known tissues: ellipsoidal brain (WM core, GM shell, CSF rim and a central
    ventricle), a scalp shell, Rician background noise. Returns (image, {GM, WM, CSF}, mask)."""
    rng = np.random.default_rng(seed)
    centre = (np.array(shape) - 1) / 2
    grid = (np.indices(shape).T - centre).T / (np.array(shape)[:, None, None, None] / 2)
    r = np.sqrt((grid ** 2).sum(0))
    brain = r < 0.75
    wm = r < 0.45
    gm = brain & ~wm & (r < 0.68)
    csf = brain & ~wm & ~gm
    vent = r < 0.1
    wm &= ~vent
    csf |= vent
    scalp = (r >= 0.8) & (r < 0.95)
    clean = 850.0 * wm + 600.0 * gm + 200.0 * csf + 500.0 * scalp
    re = clean + rng.normal(0, noise, shape)
    im = rng.normal(0, noise, shape)
    data = np.sqrt(re ** 2 + im ** 2).astype(np.float32)
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = -centre * zoom
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    maps = {k: nib.Nifti1Image(v.astype(np.float32), affine)
            for k, v in (("GM", gm), ("WM", wm), ("CSF", csf))}
    return img, maps, nib.Nifti1Image(brain.astype(np.uint8), affine)


# ---- MRIQC formulas --------------------------------------------------------------------------
def test_snr_cnr_cjv_known_answers():
    assert iqms.snr(10.0, 2.0, 2) == pytest.approx(10 / (2 * math.sqrt(2)))
    assert iqms.cnr(8.0, 5.0, 0.0, 1.0, 2.0) == pytest.approx(3 / math.sqrt(5))
    assert iqms.cjv(8.0, 5.0, 1.0, 2.0) == pytest.approx(1.0)
    assert math.isinf(iqms.cjv(5.0, 5.0, 1.0, 1.0))


def test_efc_extremes():
    assert iqms.efc(np.full((4, 5, 6), 3.0)) == pytest.approx(1.0, abs=1e-6)
    one = np.zeros((4, 5, 6))
    one[1, 2, 3] = 10
    assert iqms.efc(one) == pytest.approx(0.0, abs=1e-6)


def test_fber_and_skull_stripped_convention():
    data = np.ones((10, 10, 10), np.float32)
    head = np.zeros_like(data, bool)
    head[2:8, 2:8, 2:8] = True
    data[head] = 10
    assert iqms.fber(data, head) == pytest.approx(100.0)
    data[~head] = 0
    assert iqms.fber(data, head) == -1.0


def test_wm2max_inu_and_mad():
    data = np.full((10, 10, 10), 5.0)
    assert iqms.wm2max(data, 4.0) == pytest.approx(0.8)
    bias = np.linspace(0.8, 1.2, 1000).reshape(10, 10, 10)
    out = iqms.inu_stats(bias, np.ones_like(bias, bool))
    assert out["inu_med"] == pytest.approx(1.0, abs=1e-3)
    assert out["inu_range"] == pytest.approx(0.36, abs=2e-3)
    rng = np.random.default_rng(0)
    assert iqms.mad(rng.normal(0, 2.0, 200_000)) == pytest.approx(2.0, rel=0.02)


def test_frame_mask_border_zeros_only():
    data = np.ones((8, 8, 8), np.float32)
    data[0] = 0  # frame
    data[4, 4, 4] = 0  # an interior zero is not frame
    frame = iqms.frame_mask(data)
    assert frame[0].all() and not frame[4, 4, 4] and frame.sum() == 64


def test_anatomical_iqms_on_synthetic_head():
    img, maps, mask = synthetic_head()
    out = iqms.anatomical_iqms(img, brain_mask=mask, tpms=maps)
    # medians of the tissues are the planted values (noise 15, Rician bias negligible)
    assert out["summary_wm_median"] == pytest.approx(850, rel=0.01)
    assert out["summary_gm_median"] == pytest.approx(600, rel=0.01)
    # SNR_WM ~ 850 / 15; CNR ~ 250 / sqrt(sigma_air^2 + 15^2 + 15^2), sigma_air ~ 0.65 x 15
    assert out["snr_wm"] == pytest.approx(850 / 15, rel=0.1)
    assert out["cnr"] == pytest.approx(250 / math.sqrt((0.655 * 15) ** 2 + 2 * 15 ** 2), rel=0.1)
    assert out["cjv"] == pytest.approx(2 * 15 / 250, rel=0.15)
    assert out["fber"] > 100
    assert math.isnan(out["inu_range"])
    noisier = iqms.anatomical_iqms(synthetic_head(noise=60)[0], brain_mask=mask, tpms=maps)
    assert noisier["cnr"] < out["cnr"] / 2 and noisier["cjv"] > 2 * out["cjv"]


# ---- header ------------------------------------------------------------------------------------
def test_header_metrics_good_and_missing_orientation():
    img, _, _ = synthetic_head()
    good = header.header_metrics(img)
    assert not good["orientation_missing"]
    assert good["slice_thickness_mm"] == 3.0 and good["voxel_anisotropy"] == 1.0
    assert good["fov_min_mm"] == pytest.approx(44 * 3.0)
    img.set_qform(img.affine, code=0)
    img.set_sform(img.affine, code=0)
    missing = header.header_metrics(nib.Nifti1Image.from_bytes(img.to_bytes()))
    assert missing["orientation_missing"]


def test_affine_disagreement_shift_rotation_mirror():
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    b = a.copy()
    b[0, 3] = 5.0
    assert header.affine_disagreement(a, b, (10, 10, 10)) == pytest.approx((5.0, 0.0))
    t = np.radians(10)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    shift, angle = header.affine_disagreement(a, rot @ a, (10, 10, 10))
    assert angle == pytest.approx(10.0, abs=1e-6) and shift > 0
    assert header.affine_disagreement(a, np.diag([-2.0, 2, 2, 1]), (4, 4, 4))[1] == 180.0


def test_header_reports_qform_sform_disagreement():
    img, _, _ = synthetic_head()
    moved = img.affine.copy()
    moved[2, 3] += 7.0
    img.set_sform(moved, code=2)
    out = header.header_metrics(img)
    assert out["qform_sform_shift_mm"] == pytest.approx(7.0)


# ---- registration ------------------------------------------------------------------------------
def test_coverage_dice_jacobian_correlation():
    tmask = np.zeros((20, 20, 20), bool)
    tmask[5:15, 5:15, 5:15] = True
    fov = np.zeros((20, 20, 20), np.float32)
    fov[:, :, :10] = 1
    assert coverage.fov_coverage(fov, tmask) == pytest.approx(0.5)
    other = np.zeros_like(tmask)
    other[5:15, 5:15, 10:20] = True
    assert coverage.dice(other, tmask) == pytest.approx(0.5)
    jac = np.ones((20, 20, 20), np.float32)
    jac[5, 5:15, 5:15] = -0.2  # 100 of 1000 mask voxels folded
    stats = coverage.jacobian_stats(jac, tmask)
    assert stats["jac_folded_fraction"] == pytest.approx(0.1)
    assert stats["logjac_range"] == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    tpl = rng.normal(size=(20, 20, 20)).astype(np.float32)
    assert coverage.template_correlation(2 * tpl + 3, tpl, tmask) == pytest.approx(1.0)
    assert coverage.template_correlation(-tpl, tpl, tmask) == pytest.approx(-1.0)


# ---- segmentation ------------------------------------------------------------------------------
def test_tissue_metrics_known_volumes():
    img, maps, _ = synthetic_head()
    out = segmentation.tissue_metrics(maps)
    vox_ml = 27 / 1000
    assert out["gm_ml"] == pytest.approx(float(maps["GM"].get_fdata().sum()) * vox_ml)
    assert out["tiv_ml"] == pytest.approx(out["gm_ml"] + out["wm_ml"] + out["csf_ml"])
    assert out["icvs_gm"] + out["icvs_wm"] + out["icvs_csf"] == pytest.approx(1.0)


def test_contrast_order_t1_and_inverted():
    from ketabids.demo.faults import invert_contrast

    img, maps, mask = synthetic_head()
    t1 = segmentation.contrast_metrics(img, maps, mask)
    assert t1["t1_contrast_order"] and t1["contrast_wm_gm"] == pytest.approx(850 / 600, rel=0.02)
    t2 = segmentation.contrast_metrics(invert_contrast(img), maps, mask)
    assert not t2["t1_contrast_order"] and t2["contrast_wm_gm"] < 1


def test_mask_rim_bright_sees_a_mask_that_leaked_into_the_scalp():
    """Brain (WM 800 / cortex 600), 3 mm CSF, 4 mm dark skull, 4 mm bright scalp (1 mm voxels):
    a mask ending in the CSF has no bright rim, one grown through the skull is all scalp at its
    rim; the rim is 2 mm whatever the voxel size."""
    shape = (72, 72, 72)
    r = np.sqrt(((np.indices(shape) - 35.5) ** 2).sum(0))
    t1 = np.select([r < 15, r < 22, r < 25, r < 29, r < 33],
                   [800.0, 600.0, 250.0, 40.0, 950.0], 0.0)
    img = nib.Nifti1Image(t1.astype(np.float32), np.eye(4))
    good = segmentation.mask_rim_bright(img, r < 25, 800.0)
    leaked = segmentation.mask_rim_bright(img, r < 33, 800.0)
    assert good == 0.0 and leaked == pytest.approx(1.0)
    # half the rim in the scalp (a local leak): its share of the rim's voxels
    local = (r < 25) | ((r < 33) & (np.indices(shape)[0] > 35.5))
    share = segmentation.mask_rim_bright(img, local, 800.0)
    assert 0.3 < share < 0.7
    # the rim is 2 mm: a mask ending 2 voxels into the scalp has an all-bright rim at 1 mm
    # voxels; at 0.5 mm voxels those 2 voxels are 1 mm and the rim reaches back into the skull
    assert segmentation.mask_rim_bright(img, r < 31, 800.0) == pytest.approx(1.0)
    fine = nib.Nifti1Image(t1.astype(np.float32), np.diag([0.5, 0.5, 0.5, 1.0]))
    assert 0.45 < segmentation.mask_rim_bright(fine, r < 31, 800.0) < 0.75  # measured 0.62
    assert math.isnan(segmentation.mask_rim_bright(img, np.zeros(shape, bool), 800.0))
    assert math.isnan(segmentation.mask_rim_bright(img, r < 25, float("nan")))


def test_masks_equal_their_direct_formulas():
    """The in-place mask builders give the masks of their one-line definitions."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for shape in [(41, 37, 29), (170, 160, 150)]:  # small, and above SUBSAMPLE_ABOVE
        small = rng.random(tuple(-(-s // 2) for s in shape)) > 0.7
        expected = small.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: shape[0], : shape[1], : shape[2]]
        assert np.array_equal(iqms._upsample(small, (2, 2, 2), shape), expected)
        data = rng.normal(size=shape).astype(np.float32)
        head = ndimage.binary_dilation(rng.random(shape) > 0.999, iterations=4)
        frame = iqms.frame_mask(data, head.astype(np.uint8))
        assert np.array_equal(frame, (data <= 0) & ~head)
        for margin in (0, 3):
            air = iqms.air_mask(head, frame, margin=margin)
            if margin == 0:
                near = head
            elif head.size > iqms.SUBSAMPLE_ABOVE:
                near = ndimage.maximum_filter(head[::2, ::2, ::2].view(np.uint8), size=3) > 0
                near = near.repeat(2, 0).repeat(2, 1).repeat(2, 2)[
                    : shape[0], : shape[1], : shape[2]] | head
            else:
                near = ndimage.maximum_filter(head.view(np.uint8), size=7) > 0
            assert np.array_equal(air, ~near & ~frame)
            assert head.any() and air.any()
